"""Hostile inputs: every bad file or config gets one clear error naming where and what, or a
counted skip; nothing valid is lost. Loaders also get a property test over random bytes and JSON."""

from __future__ import annotations

import gzip
import json
import math
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefstudy.config import ConfigError, TrainConfig, check, load_config
from prefstudy.data import DataError, PairSet, SkippedPairsWarning, load_pairs
from prefstudy.encode import encode_pairs
from prefstudy.errors import PrefstudyError
from prefstudy.models import ModelError, load_model

GOOD = {"prompt": "How are you?", "chosen": "Fine, thank you!", "rejected": "Whatever."}
OTHER = {"prompt": "Hi", "chosen": "Hello there!", "rejected": "What."}


def lines(*records) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


# --------------------------------------------------------------------------- data files


def test_deeply_nested_json_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_bytes(lines(GOOD) + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(DataError, match=r"deep\.jsonl:2: JSON nested too deeply"):
        load_pairs(path)


def test_a_lone_surrogate_is_a_counted_skip_and_the_valid_record_stays(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    bad = json.dumps({**OTHER, "chosen": "x"}).replace('"x"', '"\\ud800 x"')
    path.write_bytes(lines(GOOD) + bad.encode() + b"\n")
    with pytest.warns(SkippedPairsWarning, match="lone surrogate"):
        pairs = load_pairs(path)
    assert [p.chosen for p in pairs] == [GOOD["chosen"]]
    assert pairs.skipped[0].line == 2 and "chosen" in pairs.skipped[0].reason


def test_a_folder_named_like_a_file_is_passed_over_in_a_folder_and_named_alone(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(lines(GOOD))
    (tmp_path / "x.jsonl").mkdir()
    assert len(load_pairs(tmp_path)) == 1
    with pytest.raises(DataError, match="folder holds no"):
        load_pairs(tmp_path / "x.jsonl")


def test_hh_record_without_an_assistant_turn_is_skipped_not_fatal(tmp_path):
    head = "\n\nHuman: What is 2+2?\n\nAssistant:"
    good = {"chosen": head + " 4.", "rejected": head + " 5."}
    no_assistant = {"chosen": "\n\nHuman: hello?", "rejected": "\n\nHuman: hello!"}
    path = tmp_path / "hh.jsonl"
    path.write_bytes(lines(good, no_assistant, {**good, "chosen": head + " four."}))
    with pytest.warns(SkippedPairsWarning, match="no '.*Assistant:' turn"):
        pairs = load_pairs(path)
    assert [p.chosen for p in pairs] == ["4.", "four."]
    assert [s.line for s in pairs.skipped] == [2]


def test_an_empty_file_says_so(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_pairs(path)
    path.write_bytes(b"\n  \n")
    with pytest.raises(DataError, match="empty"):
        load_pairs(path)


def test_an_empty_file_in_a_folder_is_counted(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(lines(GOOD))
    (tmp_path / "b.jsonl").write_bytes(b"")
    with pytest.warns(SkippedPairsWarning):
        pairs = load_pairs(tmp_path)
    assert len(pairs) == 1 and pairs.skipped[0].reason == "empty file: no records"


def test_gzip_files_are_read_alone_and_in_folders(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(gzip.compress(lines(GOOD, OTHER)))
    assert [p.chosen for p in load_pairs(path)] == [GOOD["chosen"], OTHER["chosen"]]
    assert len(load_pairs(tmp_path)) == 2
    (tmp_path / "pairs.jsonl.gz").write_bytes(gzip.compress(lines(GOOD))[:-6])  # truncated
    with pytest.raises(DataError, match="damaged gzip"):
        load_pairs(path)


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines(GOOD, OTHER))
    assert len(load_pairs(path)) == 2


def test_identical_after_truncation_is_dropped_and_counted(tokenizer):
    from prefstudy.data import PreferencePair

    same_start = PreferencePair("Q?", "The same long start " * 20 + "then yes.",
                                "The same long start " * 20 + "then no.")
    short = PreferencePair("Q?", "Yes.", "No.")
    encoded = encode_pairs([same_start, short], tokenizer, max_length=32, max_prompt_length=16)
    assert [e.pair_id for e in encoded.items] == [short.pair_id]
    assert encoded.dropped[0][0] == same_start.pair_id and "identical" in encoded.dropped[0][1]
    full = encode_pairs([same_start, short], tokenizer, max_length=600, max_prompt_length=200)
    assert len(full) == 2 and full.n_truncated == 0


# --------------------------------------------------------------------------- property: loaders


def _outcome(path):
    """A valid PairSet, or a clear DataError: anything else fails the property."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedPairsWarning)
        try:
            pairs = load_pairs(path)
        except DataError as e:
            assert str(e).startswith(str(path)), str(e)
            assert "\n" not in str(e)
            return None
    assert isinstance(pairs, PairSet)
    for p in pairs:
        assert p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected
        json.dumps([p.prompt, p.chosen, p.rejected], ensure_ascii=False).encode("utf-8")
    return pairs


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12)
RECORD = st.fixed_dictionaries({}, optional={
    "prompt": JSON | st.text(), "chosen": JSON | st.text(), "rejected": JSON | st.text(),
    "meta": JSON})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_random_bytes_give_an_error_or_pairs(tmp_path, data):
    path = tmp_path / "random.jsonl"
    path.write_bytes(data)
    _outcome(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(RECORD | JSON, min_size=1, max_size=4))
def test_random_json_gives_an_error_a_skip_or_pairs(tmp_path, records):
    path = tmp_path / "random.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    _outcome(path)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("field, value, message", [
    ("lr", math.nan, "'lr' = nan: must be finite"),
    ("lr", math.inf, "'lr' = inf: must be finite"),
    ("lr", 0.0, "'lr' = 0.0: must be > 0"),
    ("steps", 6.5, "'steps' = 6.5: must be a whole number"),
    ("batch_size", 4.0, "'batch_size' = 4.0: must be a whole number"),
    ("batch_size", True, "'batch_size' = True: must be a whole number"),
    ("params", [1, 2], "'params' = \\[1, 2\\]: must be a table"),
    ("device", "gpu", "'device' = 'gpu'; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'"),
    ("device", "cuda:x", "'device' = 'cuda:x'"),
    ("max_pairs", 0, "'max_pairs' = 0: must be > 0"),
    ("seed", -1, "'seed' = -1: must be >= 0"),
    ("grad_stats", "yes", "'grad_stats' = 'yes': must be true or false"),
    ("data", None, "'data' = None: a value is required"),
    ("run_id", "../escape", "'run_id' = '../escape': must be a plain folder name"),
    ("model", " ", "'model' = ' ': name a preset"),
])
def test_every_field_is_checked_before_anything_loads(field, value, message):
    with pytest.raises(ConfigError, match=message):
        check(TrainConfig(**{field: value}))


def test_good_devices_pass():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        check(TrainConfig(device=device))


def test_a_toml_with_a_float_batch_size_fails_naming_the_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('objective = "sft"\nbatch_size = 2.5\n')
    with pytest.raises(ConfigError, match="'batch_size' = 2.5"):
        load_config(path).resolved()


def test_an_unknown_model_names_the_presets(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"not a preset \(tiny, smollm2-135m-instruct\) and not "
                                          r"a Hugging Face id / local path"):
        load_model("no-such-owner/no-such-model")


def test_every_prefstudy_error_shares_one_base():
    from prefstudy.columns import SchemaError

    for kind in (DataError, ConfigError, SchemaError, ModelError):
        assert issubclass(kind, PrefstudyError) and issubclass(kind, ValueError)


def test_held_out_samples_are_balanced_over_language_and_kind():
    import pandas as pd

    from prefstudy.inputs import round_robin

    probes = pd.DataFrame({"lang": ["en"] * 6 + ["zh"] * 6,
                           "kind": (["harmful"] * 3 + ["benign"] * 3) * 2, "prompt": range(12)})
    four = round_robin(probes, 4)
    assert sorted(zip(four.lang, four.kind)) == [("en", "benign"), ("en", "harmful"),
                                                 ("zh", "benign"), ("zh", "harmful")]
    assert list(round_robin(probes.drop(columns=["lang", "kind"]), 3).prompt) == [0, 1, 2]
