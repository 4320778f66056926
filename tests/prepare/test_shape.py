"""Choosing the shape from a sample, and making a dataset all strings or all messages."""

from __future__ import annotations

from aot_cli.data.normalize import unify
from aot_cli.prepare.shape import source_sample
from aot_cli.data.sources import RawPart, Source


def test_sample_takes_the_first_non_null_value_of_each_column():
    rows = [{"prompt": "p", "chosen": None, "rejected": None},
            {"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "r"}]
    source = Source("files", {"train": [RawPart("f", rows)]}, {}, [])
    assert source_sample(source) == {"prompt": "p", "chosen": [{"role": "user", "content": "q"}], "rejected": "r"}
    assert source_sample(source, rows=1) == {"prompt": "p", "chosen": None, "rejected": None}


def test_unify_turns_strings_into_turns_only_when_messages_are_present():
    strings = {"train": [{"prompt": "p", "completion": "c", "label": True}]}
    assert unify(strings, paired=False) is False and strings["train"][0]["prompt"] == "p"
    mixed = {"train": [{"prompt": "p", "chosen": "a", "rejected": "b"}],
             "test": [{"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}]}
    assert unify(mixed, paired=True) is True
    assert mixed["train"][0] == {"prompt": [{"role": "user", "content": "p"}],
                                 "chosen": [{"role": "assistant", "content": "a"}],
                                 "rejected": [{"role": "assistant", "content": "b"}]}
    assert mixed["test"][0]["chosen"] == [{"role": "assistant", "content": "a"}]
