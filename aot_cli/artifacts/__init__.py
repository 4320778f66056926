"""The artifact layer: the contract between the steps (docs/architecture.md).

- :mod:`aot_cli.artifacts.store`: writing outputs atomically (directories, files, manifests, locks)
  and fingerprinting inputs; nothing heavy.
- :mod:`aot_cli.artifacts.kinds`: the typed readers ``DatasetArtifact``, ``RunArtifact``,
  ``ModelArtifact`` and ``EvalArtifact``; nothing heavy.
- :mod:`aot_cli.artifacts.models`: rebuilding a run's policy and reference (torch, transformers, peft).
"""
