"""The shared vocabulary: one local-path rule, and the lists the CLI offers match the code's."""

from __future__ import annotations

from aot_cli.data.formats import SHAPES
from aot_cli.losses import LOSSES, SORTS, SURROGATES
from aot_cli.vocab import SHAPES as SHAPE_NAMES
from aot_cli.vocab import has_weights, is_local_path


def test_local_path_or_hub_id(tmp_path):
    for hub in ("gpt2", "org/name", "Qwen/Qwen2.5-0.5B-Instruct", "HuggingFaceH4/ultrafeedback_binarized"):
        assert not is_local_path(hub), hub
    for local in ("./model", "/abs/model", "~/model", "a/b/c", "../x", "data.jsonl", "dir/data.json", "a b"):
        assert is_local_path(local), local
    (tmp_path / "gpt2").mkdir()
    assert is_local_path(tmp_path / "gpt2")   # an existing path is local whatever it looks like


def test_weight_files(tmp_path):
    assert not has_weights(tmp_path)
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert has_weights(tmp_path)


def test_the_code_and_the_cli_share_their_lists():
    assert tuple(SHAPES) == SHAPE_NAMES
    assert LOSSES and SORTS and SURROGATES   # losses.py takes them from aot_cli.vocab
