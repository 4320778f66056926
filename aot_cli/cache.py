"""Where caches live (tokenized datasets, reference log-probs): keyed by fingerprints, never paths.

``$AOT_CACHE_DIR`` wins; otherwise ``$XDG_CACHE_HOME/aot`` or ``~/.cache/aot``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The directory for one kind of cache (e.g. "tokenized", "reference"), created on demand."""
    root = os.environ.get("AOT_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aot"
    path = base / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
