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


def test_types_come_from_the_annotations_lists_literals_and_unions_included():
    from typing import Any, Literal

    from prefstudy.config import FIELDS, HINTS, _matches, _wanted

    assert set(HINTS) == set(FIELDS)  # every field's type as an object, none parsed by hand
    for hint in HINTS.values():
        assert _wanted(hint)  # each said in words
    assert _matches([1, 2], list[int]) and not _matches([1, True], list[int])
    assert not _matches([1, "a"], list[int]) and not _matches((1,), list[int])
    assert _wanted(list[int]) == "a list of whole numbers"
    assert _matches("sum", Literal["sum", "mean"]) and not _matches("max", Literal["sum", "mean"])
    assert not _matches(True, Literal[1])  # true is not 1
    assert _matches(None, int | None) and _matches(3, int | None) and not _matches(3.0, int | None)
    assert _matches(3, float) and not _matches(True, float) and not _matches(True, int)
    assert _matches({"a": 1.5}, dict[str, float]) and not _matches({"a": "x"}, dict[str, float])
    assert _matches(object(), Any)


def test_a_params_table_holding_a_table_is_refused_by_its_type():
    with pytest.raises(ConfigError, match="'params' = {'beta': {'x': 1}}: must be a table of "
                                          "objective parameters"):
        check(TrainConfig(objective="dpo", params={"beta": {"x": 1}}))


# --------------------------------------------------------------------------- TRL's loss names


def test_trl_loss_types_train_what_trl_would():
    from prefstudy.config import resolve_objective

    assert resolve_objective("sigmoid") == resolve_objective("dpo")
    assert resolve_objective("sigmoid_norm") == (
        "book_dpo", {"beta": 0.1, "w_chosen": 1.0, "w_rejected": 1.0,
                     "f_divergence": "reverse_kl", "f_alpha": 0.5})
    assert resolve_objective("trl:ipo")[1]["norm"] == "mean"  # TRL averages over tokens
    assert resolve_objective("trl:ipo", {"beta": 0.5})[1]["tau"] == 0.5  # TRL's beta is τ
    assert resolve_objective("trl:robust")[1]["label_smoothing"] == 0.0  # TRL's default
    assert resolve_objective("trl:discopop")[1]["tau"] == 0.05  # discopop_tau's default
    # prefstudy's own names keep prefstudy's meaning
    assert resolve_objective("ipo")[1]["norm"] == "sum"
    assert resolve_objective("robust")[1]["label_smoothing"] == 0.1


@pytest.mark.parametrize("name, params, message", [
    ("sigmoid_norm", {"w_chosen": 0.8}, "fixes w_chosen = 1.0, w_rejected = 1.0; use the "
                                        "registry's 'book_dpo'"),
    ("trl:ipo", {"norm": "sum"}, "fixes norm = 'mean'"),
    ("trl:sft", {}, "TRL's sft is one token-mean NLL over a whole batch"),
    ("trl:ipo", {"beta": 0.5, "tau": 0.5}, "set the same parameter twice"),
    ("sigmod", {}, "unknown objective 'sigmod' \\(did you mean 'sigmoid'\\?\\).*trl:<loss_type>"),
])
def test_a_trl_name_that_cannot_mean_what_trl_means_is_refused(name, params, message):
    with pytest.raises(ConfigError, match=message):
        check(TrainConfig(objective=name, params=params))


def test_a_run_keeps_the_name_given_and_the_objective_it_resolved_to(tmp_path):
    cfg = TrainConfig(objective="trl:ipo", lr=1e-3).resolved()
    assert (cfg.objective, cfg.objective_given, cfg.params["norm"]) == ("ipo", "trl:ipo", "mean")
    assert cfg.resolved() == cfg  # resolving twice changes nothing
    plain = TrainConfig(objective="ipo").resolved()
    assert plain.objective_given is None and plain.params["norm"] == "sum"
    path = tmp_path / "c.toml"
    path.write_text('objective = "sigmoid"\n[params]\nbeta = 0.3\n')
    cfg = load_config(path).resolved()
    assert (cfg.objective, cfg.objective_given, cfg.params["beta"]) == ("dpo", "sigmoid", 0.3)
    from prefstudy.train import resume_changes  # a run started as sigmoid resumes as dpo

    sigmoid = TrainConfig(objective="sigmoid").resolved()
    assert resume_changes(sigmoid.to_dict(), TrainConfig(objective="dpo").resolved()) == []


def test_trl_defaults_are_dpoconfigs_own():
    import dataclasses

    from prefstudy.config import TRL_DEFAULTS
    from prefstudy.integrations import TRL_OBJECTIVES

    read = {f for m in TRL_OBJECTIVES.values() for f in m.options.values()}
    assert read == set(TRL_DEFAULTS)  # every DPOConfig option a loss type reads, no other
    trl = pytest.importorskip("trl")
    fields = {f.name: f.default for f in dataclasses.fields(trl.DPOConfig)}
    assert {k: fields[k] for k in TRL_DEFAULTS} == dict(TRL_DEFAULTS)


def test_a_study_file_names_objectives_as_trl_does(tmp_path):
    from prefstudy.study import load_study

    path = tmp_path / "s.toml"
    path.write_text('[[runs]]\nobjective = "sigmoid"\n[[runs]]\nobjective = "trl:ipo"\n')
    configs = load_study(path, profile="any").configs()
    assert [(c.label, c.objective, c.objective_given) for c in configs] == [
        ("sigmoid", "dpo", "sigmoid"), ("trl-ipo", "ipo", "trl:ipo")]


# --------------------------------------------------------------------------- run ids


def test_a_default_run_id_says_objective_lr_and_seed():
    cfg = TrainConfig(params={"norm": "sum"}, lr=1e-3, seed=2).resolved()
    assert cfg.run_id == "naive-sum-lr0.001-s2"
    assert TrainConfig(objective="dpo").resolved().run_id == "dpo-lr1e-05-s0"
    # where it runs, what it is called or how often it saves leave the id alone
    same = TrainConfig(objective="dpo", device="cpu", label="x", checkpoint_every=3,
                       output="elsewhere").resolved()
    assert same.run_id == "dpo-lr1e-05-s0"
    # another setting adds a short hash of the settings that differ from the defaults
    steps = TrainConfig(objective="dpo", steps=7).resolved().run_id
    beta = TrainConfig(objective="dpo", params={"beta": 0.2}).resolved().run_id
    assert steps.startswith("dpo-lr1e-05-") and steps.endswith("-s0") and len(steps) == 21
    assert len({steps, beta, same.run_id}) == 3
    # TRL's spelling of the same objective is the same run
    assert TrainConfig(objective="sigmoid").resolved().run_id == "dpo-lr1e-05-s0"


# --------------------------------------------------------------------------- unreadable files


def _hostile_files(tmp_path):
    """name → a path to something no configuration can be read from."""
    import os

    files = {
        "binary junk": bytes(range(256)) * 20,
        "huge": b"a = 1\n" + b"#" * (1 << 20),
        "table for a value": b"steps = { a = 1 }\n",
        "table header for a value": b'objective = "dpo"\n[steps]\na = 1\n',
        "nested arrays": b"steps = " + b"[" * 50_000 + b"]" * 50_000,
        "nested tables": b"steps = " + b"{a=" * 5000 + b"1" + b"}" * 5000,
        "dotted keys": b"params." + b".".join([b"a"] * 20_000) + b" = 1\n",
        "deep table headers": b"".join(b"[k%d.%s]\n" % (i, b".".join([b"a"] * 9))
                                       for i in range(1000)),
        "many table headers": b"".join(b"[k%d.%s]\n" % (i, b".".join([b"a"] * 8))
                                       for i in range(2500)),  # parsed: 8 deep at most
        "not UTF-8": 'objective = "dpo"\nlabel = "caf\u00e9"\n'.encode("latin-1"),
        "bad TOML": b"objective = = dpo\n",
        "many unknown keys": b"".join(b"k%d = 1\n" % i for i in range(5000)),
        "a long key": b'"' + b"k" * 50_000 + b'" = 1\n',
        "a long value": b'objective = "' + b"k" * 50_000 + b'"\n',
        "a long list": b"steps = [" + b"1, " * 20_000 + b"]\n",
        "runs not tables": b"runs = 3\n",
        "a run not a table": b"runs = [3]\n",
        "profiles a list": b'profiles = [1]\n[[runs]]\nobjective = "dpo"\n',
        "a profile not a table": b'[profiles]\nany = 3\n[[runs]]\nobjective = "dpo"\n',
        "seeds a number": b'seeds = 3\n[[runs]]\nobjective = "dpo"\n',
        "params a number": b'[[runs]]\nobjective = "dpo"\nparams = 3\n',
        "a label a table": b'[[runs]]\nobjective = "dpo"\nlabel = {}\n',
        "lrs a long list": b"lrs = [" + b"-1, " * 15_000 + b"]\n",
    }
    paths = {}
    for i, (name, data) in enumerate(files.items()):
        paths[name] = tmp_path / f"c{i}.toml"
        paths[name].write_bytes(data)
    paths["a folder"] = tmp_path / "folder.toml"
    paths["a folder"].mkdir()
    paths["a pipe"] = tmp_path / "pipe.toml"
    os.mkfifo(paths["a pipe"])  # opening it would wait forever
    paths["missing"] = tmp_path / "missing.toml"
    return paths


@pytest.mark.parametrize("kind", ["config", "study"])
def test_every_unreadable_configuration_is_one_short_line_naming_the_file(tmp_path, kind):
    from prefstudy.study import load_study

    load = load_config if kind == "config" else lambda p: load_study(p, profile="any")
    for name, path in _hostile_files(tmp_path).items():
        with pytest.raises(ConfigError) as caught:
            load(path)
        line = str(caught.value)
        assert line.startswith(f"{path}: "), (name, line[:200])
        assert "\n" not in line and len(line) < 800, (name, len(line), line[:200])


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
