"""`aot inspect` on small prepared datasets and the tiny model (with template variants that set traps)."""

from __future__ import annotations

import re

import pytest

from aot_cli.inspect.run import BOUNDARY
from aot_cli.tiny_model import chat_template

PAIRED = {
    "prompt": ["hi", "What is the capital of France?"],
    "chosen": ["yes", "Paris."],
    "rejected": ["no", "The quick brown fox jumps over the lazy dog."],
}


def save_prepared(path, train: dict, *, paired: bool, empty_test: bool = False):
    """A dataset artifact as `aot prepare` writes it (DatasetDict + manifest)."""
    import datasets

    from aot_cli.artifacts.store import write_manifest

    splits = {"train": datasets.Dataset.from_dict(train)}
    splits["test"] = splits["train"].select(range(0 if empty_test else 1))
    # An empty split needs one (empty) shard to load back (what `aot prepare` does too).
    datasets.DatasetDict(splits).save_to_disk(str(path), num_shards={k: 1 for k, v in splits.items() if not len(v)})
    write_manifest(path, kind="dataset", config={},
                   summary={"paired": paired, "format": "test", "counts": {k: len(v) for k, v in splits.items()}})
    return path


@pytest.fixture(scope="module")
def paired_dir(tmp_path_factory):
    return save_prepared(tmp_path_factory.mktemp("inspect") / "paired", PAIRED, paired=True)


def table_row(stdout: str, name: str) -> list[int]:
    """The numbers of one row of a rich table."""
    line = next(line for line in stdout.splitlines() if re.match(rf"^│ {name}\s+│", line))
    return [int(n) for n in re.findall(r"\d+", line)]


def test_inspect_tokens_boundary_table_and_truncation(aot, paired_dir, tiny_model_dir):
    result = aot("inspect", paired_dir, "--model", tiny_model_dir, "-n", 2, "--max-length", 14)
    assert result.exit_code == 0, result
    out = result.stdout
    assert out.count(BOUNDARY) == 4  # 2 examples x (chosen, rejected)
    assert f"<|im_start|>assistant\n{BOUNDARY}yes<|im_end|>\n" in out  # nothing after the final EOS
    assert f"<|im_start|>assistant\n{BOUNDARY}no<|im_end|>\n" in out
    assert out.count("<s>") == 4  # one BOS per sequence
    assert "chosen: 10 prompt + 2 completion tokens\n" in out
    # Row 2: the 16-token prompt is cut from the left to 13 (BOS kept), the answer to 1 token.
    assert "chosen: 13 prompt + 1 completion tokens (truncated: prompt, completion)" in out
    assert f"<s>What is the capital of France?<|im_end|>\n<|im_start|>assistant\n{BOUNDARY}Par\n" in out
    assert table_row(out, "prompt") == [10, 16, 16]
    assert table_row(out, "chosen") == [2, 4, 4]
    assert table_row(out, "rejected") == [2, 11, 11]
    assert table_row(out, "total") == [12, 27, 27]
    assert "--max-length 14 --max-prompt-length 512 would truncate 1 of 2 rows (50.0%)" in out
    err = " ".join(result.stderr.split())
    assert "1 of 2 rows have a prompt that leaves no room" in err
    assert "writes BOS (<s>) and the tokenizer adds one too; aot keeps one" in err
    assert "warning: " not in err.replace("warning: 1 of 2 rows have a prompt", "")
    assert err.endswith(f"next: aot train --model {tiny_model_dir} --data {paired_dir} -o RUN_DIR --max-length 14 "
                        "--max-prompt-length 512")


def test_inspect_warns_double_bos(aot, paired_dir, tiny_model_dir, tmp_path):
    template = tmp_path / "double_bos.jinja"
    template.write_text("{{ bos_token }}" + chat_template())
    result = aot("inspect", paired_dir, "--model", tiny_model_dir, "-n", 1, "--chat-template", template)
    assert result.exit_code == 0, result
    assert f"<s><s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n{BOUNDARY}yes" in result.stdout
    assert "warning: 2 of 2 rows start with BOS twice (<s>)" in " ".join(result.stderr.split())
    # without limits on the command line, inspect shows what `aot train` would do by default
    assert "--max-length 1024 --max-prompt-length 512 would truncate 0 of 2 rows (0.0%)" in result.stdout


def test_inspect_warns_prefix_and_eos_problems(aot, paired_dir, tiny_model_dir, tmp_path):
    template = tmp_path / "mistral_like.jinja"
    template.write_text(  # the system prompt joins the last user turn only; no EOS after answers
        "{% for m in messages %}{% if m.role == 'user' %}[INST] "
        "{% if loop.last %}Be brief.\n\n{% endif %}{{ m.content }} [/INST]"
        "{% elif m.role == 'assistant' %}{{ m.content }}{% endif %}{% endfor %}")
    result = aot("inspect", paired_dir, "--model", tiny_model_dir, "-n", 1, "--chat-template", template)
    assert result.exit_code == 0, result
    # trained on the whole conversation as rendered: the system text is only in a last user turn
    assert f"<s>[INST] hi [/INST]{BOUNDARY}yes<|im_end|>" in result.stdout
    assert "the prompt trained on differs from the generation prompt" in result.stdout
    assert "generation sees:  'Be brief.\\n\\nhi [/INST]'" in result.stdout
    err = " ".join(result.stderr.split())
    assert "2 of 2 rows train on a prompt that is not the generation prompt" in err
    assert "does not end the answer with EOS (<|im_end|>) in 2 of 2 rows; aot appends it once" in err


def test_inspect_warns_missing_eos(aot, paired_dir, tiny_model_dir, tmp_path):
    from aot_cli.data.tokenize import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path / "no-eos")
    result = aot("inspect", paired_dir, "--model", tmp_path / "no-eos", "-n", 0)
    assert result.exit_code == 0, result
    assert BOUNDARY not in result.stdout
    assert "2 of 2 rows have a completion that does not end with EOS" in " ".join(result.stderr.split())


def test_inspect_raw_rows_without_model(aot, tmp_path):
    data = save_prepared(tmp_path / "unpaired", {
        "prompt": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "hello there"}]],
        "completion": [[{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no!"}]],
        "label": [True, False],
    }, paired=False)
    result = aot("inspect", data, "-n", 1)
    assert result.exit_code == 0, result
    assert "[user] hi" in result.stdout and "[assistant] yes" in result.stdout and "label: True" in result.stdout
    assert "hello there" not in result.stdout  # -n 1
    assert table_row(result.stdout, "prompt") == [2, 11, 11]
    assert table_row(result.stdout, "completion") == [3, 3, 3]
    assert "give --model" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"next: aot train --model MODEL --data {data} --loss aot_unpaired -o RUN_DIR"


def test_inspect_unpaired_tokens(aot, tmp_path, tiny_model_dir):
    data = save_prepared(tmp_path / "unpaired", {"prompt": ["hi", "hi"], "completion": ["yes", "no"],
                                                 "label": [True, False]}, paired=False)
    result = aot("inspect", data, "--model", tiny_model_dir, "-n", 2, "--split", "test")
    assert result.exit_code == 0, result
    assert "test row 1, label True" in result.stdout and "test row 2" not in result.stdout
    assert table_row(result.stdout, "completion") == [2, 2, 2]  # "yes" + EOS


@pytest.mark.parametrize("args, message", [
    (["--chat-template", "t.jinja"], "--chat-template needs --model"),
    (["-n", "-1"], "--num-examples must be a finite number >= 0, got -1"),
    (["--model", "{model}", "--max-length", "1"], "--max-length must be a finite number >= 2, got 1"),
    (["--model", "{model}/nowhere"], "nowhere: no such directory"),
])
def test_inspect_bad_flags(aot, paired_dir, tiny_model_dir, args, message):
    result = aot("inspect", paired_dir, *[a.format(model=tiny_model_dir) for a in args])
    assert result.exit_code == 2 and message in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_inspect_bad_data(aot, tmp_path, tiny_model_dir):
    result = aot("inspect", tmp_path / "missing")
    assert result.exit_code == 2 and "no such directory" in result.stderr
    empty = save_prepared(tmp_path / "empty", PAIRED, paired=True, empty_test=True)
    result = aot("inspect", empty, "--split", "test")
    assert result.exit_code == 2 and "split 'test' has no rows" in result.stderr


def test_inspect_tokenizer_without_chat_template(aot, paired_dir, tiny_model_dir, tmp_path):
    from aot_cli.data.tokenize import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "bare")
    result = aot("inspect", paired_dir, "--model", tmp_path / "bare")
    assert result.exit_code == 2 and "no chat template; give one with --chat-template" in result.stderr
    template = tmp_path / "chatml.jinja"
    template.write_text(chat_template())
    assert aot("inspect", paired_dir, "--model", tmp_path / "bare", "--chat-template", template).exit_code == 0
