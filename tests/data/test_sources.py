"""Reading sources: file types, directories, hub ids (with the hub stubbed), and broken files."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from aot_cli.data.sources import load_source, read_file
from aot_cli.errors import UserError

ROW = {"prompt": "p", "chosen": "a", "rejected": "b"}


def test_csv_parquet_json_columns_and_jsonl_named_json(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,chosen,rejected\np,a,b\n\"multi\nline\",c,d\n")
    assert read_file(tmp_path / "a.csv").rows == [ROW, {"prompt": "multi\nline", "chosen": "c", "rejected": "d"}]
    pq.write_table(pa.Table.from_pylist([ROW, ROW]), tmp_path / "a.parquet")
    assert read_file(tmp_path / "a.parquet").rows == [ROW, ROW]
    (tmp_path / "cols.json").write_text(json.dumps({k: [v, v] for k, v in ROW.items()}))
    assert read_file(tmp_path / "cols.json").rows == [ROW, ROW]
    (tmp_path / "lines.json").write_text(json.dumps(ROW) + "\n\n" + json.dumps(ROW) + "\n")
    part = read_file(tmp_path / "lines.json")
    assert part.rows == [ROW, ROW] and part.where(1) == f"{tmp_path / 'lines.json'}:3"
    (tmp_path / "arr.json").write_text(json.dumps([ROW, 3]))
    with pytest.raises(UserError, match="arr.json: row 2: expected a JSON object, got int"):
        read_file(tmp_path / "arr.json")
    (tmp_path / "a.parquet.bad").write_text("x")
    with pytest.raises(UserError, match="unsupported file type '.bad'"):
        read_file(tmp_path / "a.parquet.bad")
    (tmp_path / "b.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="b.parquet: not a readable parquet file"):
        read_file(tmp_path / "b.parquet")


def test_utf8_byte_order_mark_is_skipped(tmp_path):
    # Windows tools write one; it must not break line 1 of JSONL or the first CSV column name.
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n")
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\np,a,b\n")
    assert read_file(tmp_path / "a.jsonl").rows == [ROW] and read_file(tmp_path / "a.csv").rows == [ROW]
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n\xe9")
    with pytest.raises(UserError, match="b.jsonl:2: not UTF-8 text \\(byte 0xe9 at offset 51\\)"):
        read_file(tmp_path / "b.jsonl")


def test_directory_splits_by_file_name(tmp_path):
    for name in ("train-00.jsonl", "train-01.jsonl", "my_test.jsonl"):
        (tmp_path / name).write_text(json.dumps(ROW) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    source = load_source(str(tmp_path), limit=1)
    assert {k: sum(len(p.rows) for p in v) for k, v in source.splits.items()} == {"train": 1, "test": 1}
    assert [i["path"] for i in source.inputs] == [str(tmp_path / n) for n in
                                                  ("my_test.jsonl", "train-00.jsonl", "train-01.jsonl")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no .json/.jsonl/.parquet/.csv files"):
        load_source(str(empty))


def test_save_to_disk_directory_is_read_as_a_dataset(tmp_path):
    # Not its dataset_dict.json / state.json metadata as rows: the splits, as for a hub dataset.
    rows = Dataset.from_list([ROW] * 3)
    DatasetDict(train_prefs=rows, test_prefs=rows.select([0]), train_sft=rows).save_to_disk(str(tmp_path / "dd"))
    source = load_source(str(tmp_path / "dd"), limit=2)
    assert source.record == {"type": "saved", "path": str(tmp_path / "dd"),
                             "splits": {"train": "train_prefs", "test": "test_prefs"}}
    assert source.columns == set(ROW) and list(source.splits["train"][0]) == [ROW, ROW]
    assert source.splits["test"][0].where(0) == f"{tmp_path / 'dd'}[test_prefs]: row 1"
    assert load_source(str(tmp_path / "dd"), split="train_sft").record["splits"] == {"train": "train_sft",
                                                                                     "test": "test_prefs"}
    rows.save_to_disk(str(tmp_path / "ds"))  # a single Dataset: all train
    assert list(load_source(str(tmp_path / "ds")).splits) == ["train"]


def test_hub_source_picks_train_and_its_test_split(monkeypatch):
    import huggingface_hub

    from aot_cli.data import sources

    calls = []
    monkeypatch.setattr(sources, "get_dataset_split_names",
                        lambda name, subset, revision=None: ["train_prefs", "test_prefs", "train_sft"])

    def fake_load(name, subset, split, revision):
        calls.append((name, subset, split, revision))
        return Dataset.from_list([ROW] * (3 if split.startswith("train") else 1))

    monkeypatch.setattr(sources, "load_dataset", fake_load)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info",
                        lambda self, name, revision=None: SimpleNamespace(sha=f"sha-of-{revision}"))
    source = load_source("org/uf", subset="default", split="train_prefs", revision="abc", limit=2)
    assert source.record["commit"] == "sha-of-abc" and source.inputs[0]["commit"] == "sha-of-abc"
    assert calls == [("org/uf", "default", "train_prefs", "abc"), ("org/uf", "default", "test_prefs", "abc")]
    assert source.record["splits"] == {"train": "train_prefs", "test": "test_prefs"}
    assert len(source.splits["train"][0].rows) == 2 and list(source.splits["test"][0]) == [ROW]
    assert source.splits["train"][0].where(1) == "org/uf[train_prefs]: row 2"
    with pytest.raises(UserError, match="no split 'dev' \\(available: train_prefs, test_prefs, train_sft\\)"):
        load_source("org/uf", split="dev")


def test_unreachable_hub_id_is_a_user_error():
    with pytest.raises(UserError, match="not a local path, and not readable as a hub dataset"):
        load_source("nobody/no-such-dataset-here")


def test_line_separators_inside_strings_do_not_split_rows(tmp_path):
    """U+2028, U+2029 and U+0085 are valid raw inside JSON strings (json.dumps(ensure_ascii=False)
    writes them); str.splitlines cut the line there and called valid JSON broken. CRLF files work."""
    rows = [{"prompt": f"a{sep}b", "chosen": "c", "rejected": "d"} for sep in ("\u2028", "\u2029", "\u0085")]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n\r\n"
    for name in ("rows.jsonl", "rows.json"):  # JSON Lines under a .json name too
        (tmp_path / name).write_text(text, encoding="utf-8", newline="")
        part = read_file(tmp_path / name)
        assert part.rows == rows and [part.where(i) for i in range(3)] == [f"{tmp_path / name}:{n}" for n in (1, 2, 3)]


def test_values_arrow_cannot_hold_are_errors_naming_the_row(tmp_path):
    """A lone surrogate escape ("\\ud800") is no Unicode character: saving the dataset crashed in
    Arrow. An integer past Python's 4300-digit limit made json.loads raise a plain ValueError."""
    (tmp_path / "a.jsonl").write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "chosen": [{"content": "x\ud800"}]})
                                      + "\n")
    with pytest.raises(UserError, match="a.jsonl:2: field 'chosen\\[0\\].content' holds an unpaired surrogate"):
        read_file(tmp_path / "a.jsonl")
    (tmp_path / "b.json").write_text(json.dumps([ROW, {**ROW, "meta": {"k\udfff": 1}}]))
    with pytest.raises(UserError, match="b.json: row 2: field 'meta.k\\\\udfff' holds an unpaired surrogate"):
        read_file(tmp_path / "b.json")
    (tmp_path / "c.jsonl").write_text(json.dumps({**ROW, "chosen": "\ud83d\ude00"}) + "\n")  # a pair: one emoji
    assert read_file(tmp_path / "c.jsonl").rows == [{**ROW, "chosen": "\U0001f600"}]
    (tmp_path / "d.jsonl").write_text(json.dumps(ROW) + "\n" + '{"id": ' + "9" * 5000 + "}\n")
    with pytest.raises(UserError, match="d.jsonl:2: not readable JSON \\(Exceeds the limit \\(4300 digits\\)"):
        read_file(tmp_path / "d.jsonl")
    (tmp_path / "e.json").write_text('[{"id": ' + "9" * 5000 + "}]")
    with pytest.raises(UserError, match="e.json: not readable JSON"):
        read_file(tmp_path / "e.json")
