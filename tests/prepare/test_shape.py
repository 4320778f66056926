"""Choosing the shape from a sample, and making a dataset all strings or all messages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aot_cli.data.normalize import unify
from aot_cli.prepare.shape import resolve_shape, source_sample
from aot_cli.data.sources import RawPart, Source
from aot_cli.errors import UserError


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


def test_sample_counts_rows_across_the_files_of_a_directory():
    parts = [RawPart("a", [{"prompt": "p"}]), RawPart("b", [{"prompt": "q"}, {"chosen": "c"}])]
    source = Source("files", {"train": parts}, {}, [])
    assert source_sample(source, rows=2) == {"prompt": "p"}
    assert source_sample(source, rows=3) == {"prompt": "p", "chosen": "c"}


def test_score_field_check_looks_at_every_completion():
    """A first completion without the score (UltraFeedback has such) is no typo in --score, and
    annotations of another type do not crash the check."""
    rows = [{"instruction": "p", "completions": [{"response": "a", "annotations": ["odd"]},
                                                 {"response": "b", "overall_score": 3,
                                                  "annotations": {"honesty": {"Rating": "4"}}}]}]
    source = Source("files", {"train": [RawPart("f", rows)]}, {}, [], columns={"instruction", "completions"})
    config = SimpleNamespace(source="f", format="auto", label_field=None, binarize=None, prefer="better",
                             unpair=False, score=None, min_margin=0.0, label_threshold=None)
    assert resolve_shape(config, source)[0] == "ultrafeedback"
    assert resolve_shape(SimpleNamespace(**{**vars(config), "score": "honesty"}), source)[0] == "ultrafeedback"
    with pytest.raises(UserError, match="honsty not found \\(available: honesty, overall_score\\)"):
        resolve_shape(SimpleNamespace(**{**vars(config), "score": "honsty"}), source)
