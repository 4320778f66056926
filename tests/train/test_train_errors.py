"""Bad input to `aot train`: exit code 2, a one-line error that names the fix, and no output left behind."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest


def _check_error(result, out, *needles):
    assert result.exit_code == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))


def _train(aot, model, data, out, *extra):
    return aot("train", "--model", model, "--data", data, "-o", out, "--max-steps", 1, "--batch-size", 2,
               "--grad-accum", 2, *extra)


def test_dataset_without_manifest(aot, tiny_model_dir, tmp_path):
    (tmp_path / "raw").mkdir()
    out = tmp_path / "run"
    _check_error(_train(aot, tiny_model_dir, tmp_path / "raw", out), out, "no manifest.json")


def test_artifact_of_another_kind(aot, tiny_model_dir, tmp_path):
    from aot_cli.artifacts.store import write_manifest

    (tmp_path / "model-artifact").mkdir()
    write_manifest(tmp_path / "model-artifact", kind="model", config={})
    out = tmp_path / "run"
    _check_error(_train(aot, tiny_model_dir, tmp_path / "model-artifact", out), out,
                 "is a 'model' artifact, expected a 'dataset' one")


def test_unpaired_data_with_paired_loss(aot, tiny_model_dir, unpaired_data, tmp_path):
    out = tmp_path / "run"
    _check_error(_train(aot, tiny_model_dir, unpaired_data, out), out,
                 "unpaired data", "--loss aot", "use --loss aot_unpaired", "--loss kto")


@pytest.mark.parametrize("extra, needles", [
    (("--loss", "dpo", "--dominance", "second"), ("--dominance second applies to the aot losses only", "--loss dpo")),
    (("--loss", "kto", "--dominance", "second"), ("--dominance second applies to the aot losses only", "--loss kto")),
    (("--loss", "kto", "--surrogate", "squared_hinge"), ("--surrogate squared_hinge applies to the aot losses",)),
    (("--loss", "kto", "--label-smoothing", "0.1"), ("--label-smoothing is not defined for --loss kto",)),
    (("--desirable-weight", "2"), ("--desirable-weight 2 applies to --loss kto only, not --loss aot",)),
    (("--loss", "dpo", "--undesirable-weight", "0.5"), ("--undesirable-weight 0.5 applies to --loss kto only",)),
    (("--loss", "kto", "--desirable-weight", "0"), ("--desirable-weight must be a finite number > 0, got 0",)),
    (("--positive-fraction", "0.3"), ("--positive-fraction applies to unpaired data", "is paired")),
    (("--positive-fraction", "1"), ("--positive-fraction must be a finite number > 0, < 1, got 1",)),
    (("--loss", "kto", "--batch-size", "1", "--grad-accum", "1"),
     ("global batch 1", "--loss kto on paired data needs at least 2 pairs per step")),
])
def test_objective_options_that_do_not_apply(aot, tiny_model_dir, paired_data, tmp_path, extra, needles):
    out = tmp_path / "run"
    _check_error(_train(aot, tiny_model_dir, paired_data, out, *extra), out, *needles)


def test_beta_defaults_per_loss_and_an_explicit_value_is_kept():
    from aot_cli.train.config import Config as TrainConfig
    from aot_cli.vocab import LOSSES

    defaults = {loss: TrainConfig(model="m", data="d", output="o", loss=loss).beta for loss in LOSSES}
    assert defaults == {"aot": 0.01, "aot_unpaired": 0.01, "dpo": 0.1, "ipo": 0.1, "kto": 0.1}
    assert TrainConfig(model="m", data="d", output="o", loss="kto", beta=0.01).beta == 0.01
    assert TrainConfig(model="m", data="d", output="o", loss="aot", beta=0.1).beta == 0.1


def test_tokenizer_without_chat_template(aot, tiny_model_dir, paired_data, tmp_path):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    _check_error(_train(aot, model, paired_data, out), out, "no chat template", "--chat-template")


def test_max_length_shorter_than_every_prompt(aot, tiny_model_dir, paired_data, tmp_path):
    out = tmp_path / "run"
    _check_error(_train(aot, tiny_model_dir, paired_data, out, "--max-length", 4), out,
                 "--max-length 4 is shorter than every prompt", "all 64 training rows")


@pytest.mark.parametrize("flags", [["--load-in-4bit"], ["--optim", "paged_adamw_8bit"]])
def test_4bit_and_8bit_optimizer_without_bitsandbytes(aot, tiny_model_dir, paired_data, tmp_path, monkeypatch, flags):
    """Both run wherever bitsandbytes does (CPU included); without the package, one line names the extra."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    out = tmp_path / "run"
    _check_error(_train(aot, tiny_model_dir, paired_data, out, *flags), out,
                 f"{' '.join(flags)} needs bitsandbytes: pip install 'aot-cli[qlora]'")


def test_existing_output_is_left_alone(aot, tiny_model_dir, paired_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _train(aot, tiny_model_dir, paired_data, out)
    assert result.exit_code == 2 and "already exists" in result.stderr and "--resume auto" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_model_directory_without_weights(aot, tiny_model_dir, paired_data, tmp_path):
    model = tmp_path / "empty-model"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, model / name)
    out = tmp_path / "run"
    _check_error(_train(aot, model, paired_data, out), out, "no weights found")


def test_init_adapter_that_is_not_an_adapter(aot, tiny_model_dir, paired_data, tmp_path):
    out = tmp_path / "run"
    not_adapter = tmp_path / "not-an-adapter"
    not_adapter.mkdir()
    _check_error(_train(aot, tiny_model_dir, paired_data, out, "--init-adapter", not_adapter), out,
                 "no adapter_config.json")


def test_bad_loss_settings_and_too_large_batch(aot, tiny_model_dir, paired_data, tmp_path):
    out = tmp_path / "run"
    _check_error(_train(aot, tiny_model_dir, paired_data, out, "--loss", "dpo", "--surrogate", "squared_hinge"),
                 out, "surrogate")
    _check_error(aot("train", "--model", tiny_model_dir, "--data", paired_data, "-o", out, "--batch-size", 40,
                     "--grad-accum", 2), out, "global batch 80", "64 pairs")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_missing_tracker_package(aot, tiny_model_dir, paired_data, tmp_path):
    out = tmp_path / "run"
    _check_error(_train(aot, tiny_model_dir, paired_data, out, "--report-to", "wandb"), out, "aot-cli[wandb]")


def test_full_finetuning_in_fp16_is_refused():
    """fp16 weights under AdamW turn to -inf on the first update (eps = 1e-8 is 0 in fp16), so the
    run would checkpoint broken weights before the NaN check fires: refuse it up front."""
    from aot_cli.errors import UserError
    from aot_cli.train.config import Config as TrainConfig
    with pytest.raises(UserError, match="--full with --dtype fp16"):
        TrainConfig(model="m", data="d", output="o", lora=False, dtype="fp16").check_options()
    TrainConfig(model="m", data="d", output="o", lora=True, dtype="fp16").check_options()  # LoRA adapters stay fp32
    TrainConfig(model="m", data="d", output="o", lora=False, dtype="bf16").check_options()


def test_negative_chunk_size_is_refused():
    from aot_cli.errors import UserError
    from aot_cli.train.config import Config as TrainConfig
    with pytest.raises(UserError, match="--logps-chunk-size must be a finite number >= 0, got -1"):
        TrainConfig(model="m", data="d", output="o", logps_chunk_size=-1)


def test_truncation_report_counts_rows_and_only_the_main_process_prints(capsys):
    from aot_cli.train.config import Config as TrainConfig
    from aot_cli.train.run import check_lengths

    tokenized = {"chosen_prompt_len": [10, 3, 4], "truncated_prompt": [True, False, False],
                 "truncated_completion": [True, False, True]}
    config = TrainConfig(model="m", data="d", output="o", max_length=11)
    check_lengths(tokenized, config, True, main=False)  # another rank of a multi-process run
    assert capsys.readouterr().err == ""
    check_lengths(tokenized, config, True)
    err = " ".join(capsys.readouterr().err.split())
    assert "1 of 3 training rows: the prompt fills --max-length 11" in err
    assert "truncated 2 of 3 training rows (prompt: 1, completion: 2)" in err
