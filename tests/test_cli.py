"""The `prefstudy` command as a new user meets it: help for every option, `train` without a config
says what it trains, `runs` lists where `train` writes, TRL's loss names, and every failure one
bounded line. Training and the study are stood in for: their own tests train."""

from __future__ import annotations

import argparse
import shutil

import pytest

from prefstudy.cli import MAX_LINE, _one_line, build_parser, main
from prefstudy.paths import REPO

COMMITTED = REPO / "reports" / "runs"


def _options(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command, option, action) of every option of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{prefix} {name}".strip())
        elif not isinstance(action, argparse._HelpAction):
            yield prefix, "/".join(action.option_strings) or action.dest, action


def test_every_option_says_what_it_does():
    # `report` has its own owner and test (tests/test_report.py)
    missing = [f"{command} {option}" for command, option, action in _options(build_parser())
               if not command.startswith("report") and not action.help]
    assert missing == []


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _fake_train(monkeypatch, folder):
    """`prefstudy.train.train` stood in for: records the config, returns `folder`."""
    import prefstudy.train

    seen = []
    monkeypatch.setattr(prefstudy.train, "train",
                        lambda cfg, **kw: seen.append(cfg.resolved()) or folder)
    return seen


@pytest.fixture
def a_run(tmp_path):
    """A copy of one committed run (dpo at lr 0.001)."""
    return shutil.copytree(COMMITTED / "dpo-lr0.001-s0", tmp_path / "copied" / "dpo-lr0.001-s0")


def test_train_without_a_config_says_what_it_trains(monkeypatch, capsys, tmp_path, a_run):
    seen = _fake_train(monkeypatch, a_run)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--objective", "sigmoid", "--lr", "1e-3", "--heldout", "none",
                 "--set", "trainable_blocks=2", "--param", "beta=0.3"]) == 0
    cfg = seen[0]
    assert (cfg.objective, cfg.objective_given, cfg.params["beta"]) == ("dpo", "sigmoid", 0.3)
    assert (cfg.model, cfg.heldout, cfg.trainable_blocks, cfg.lr) == ("tiny", None, 2, 1e-3)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("training dpo (beta=0.3") and "given as 'sigmoid'" in first
    assert "tiny (random weights" in first and "no held-out pairs" in first
    assert "20 steps of 4 pairs at lr 0.001, seed 0" in first
    assert first.endswith(f"→ runs/{cfg.run_id}") and cfg.run_id.startswith("dpo-lr0.001-")


def test_train_flags_override_a_config(monkeypatch, capsys, tmp_path, a_run):
    seen = _fake_train(monkeypatch, a_run)
    assert main(["train", "--config", str(REPO / "configs" / "tiny.toml"), "--objective",
                 "trl:ipo", "--model", "smollm2-135m-instruct", "--data", "data/heldout",
                 "--steps", "3", "--output", str(tmp_path)]) == 0
    cfg = seen[0]
    assert (cfg.objective, cfg.params["norm"], cfg.model, cfg.data, cfg.steps, cfg.lr) == (
        "ipo", "mean", "smollm2-135m-instruct", "data/heldout", 3, 1e-3)  # lr: the config's
    assert "(random weights" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["train", "--objective", "sigmod"], "did you mean 'sigmoid'?"),
    (["train", "--objective", "trl:sft"], "TRL's sft is one token-mean NLL"),
    (["train", "--set", "learning_rate=1"], "unknown field(s) ['learning_rate']"),
    (["train", "--set", "trainable_blocks"], "--set 'trainable_blocks': expected NAME=VALUE"),
    (["train", "--steps", "0"], "the command's flags (no --config): config field 'steps' = 0"),
])
def test_a_bad_train_command_is_one_line_before_anything_loads(monkeypatch, capsys, argv,
                                                                 expected):
    _fake_train(monkeypatch, None)
    import prefstudy.train

    monkeypatch.setattr(prefstudy.train, "train", lambda *a, **k: pytest.fail("trained"))
    assert main(argv) == 2
    assert expected in _one_error_line(capsys)


def test_an_unreadable_config_is_one_line_naming_it(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(bytes(range(256)) * 100)
    assert main(["train", "--config", str(bad)]) == 2
    assert _one_error_line(capsys) == (f"prefstudy train: {bad}: not UTF-8 text (byte 128); a "
                                       "config file is TOML text")
    assert main(["study", "--config", str(tmp_path), "--profile", "tiny"]) == 2
    assert f"{tmp_path}: not a regular file" in _one_error_line(capsys)


def test_an_error_line_is_bounded():
    assert len(_one_line(ValueError("x" * 100_000))) == MAX_LINE
    assert _one_line(OSError("disk\nfull")) == "OSError: disk full"


def test_runs_lists_where_train_writes_with_the_learning_rate(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["runs"]) == 0
    assert capsys.readouterr().out.startswith("no runs in runs/ (where `prefstudy train` "
                                              "writes; the committed study: prefstudy runs "
                                              "reports/runs): no such folder")
    for name in ("dpo-lr0.001-s0", "dpo-lr0.0001-s0"):
        shutil.copytree(COMMITTED / name, tmp_path / "runs" / name)
    shutil.copytree(COMMITTED / "sft-lr0.001-s0", tmp_path / "runs" / "my-study" / "sft")
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("2 run(s) in runs/ (where `prefstudy train` writes; the committed "
                        "study: prefstudy runs reports/runs):")
    assert lines[1].split()[:4] == ["run_id", "objective", "lr", "seed"]
    assert lines[2].split()[:3] == ["dpo-lr0.0001-s0", "dpo", "0.0001"]
    assert lines[3].split()[:3] == ["dpo-lr0.001-s0", "dpo", "0.001"]
    assert lines[-1] == ("studies' runs, in their own folders (prefstudy runs FOLDER): "
                         "runs/my-study/ (1 runs)")
    assert main(["runs", str(COMMITTED)]) == 0
    n = len(list(COMMITTED.glob("*/meta.json")))
    assert capsys.readouterr().out.startswith(f"{n} run(s) in {COMMITTED}/:")
    assert main(["runs", str(tmp_path / "nowhere")]) == 2  # a folder named must exist
    assert "nowhere: no such folder of runs" in _one_error_line(capsys)


def test_study_prints_a_line_per_run(monkeypatch, capsys, tmp_path, a_run):
    import prefstudy.report
    import prefstudy.study

    def fake_run_study(study, *, progress, on_run, shard=None):
        for i, _ in enumerate(study.configs(), 1):
            on_run(i, len(study.configs()), a_run)

    monkeypatch.setattr(prefstudy.study, "run_study", fake_run_study)
    monkeypatch.setattr(prefstudy.report, "build_report", lambda runs, out, **kwargs: out / "README.md")
    assert main(["study", "--profile", "tiny", "--output", str(tmp_path / "s"), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    n = len(prefstudy.study.load_study(REPO / "configs" / "study.toml", profile="tiny").configs())
    assert out[1] == f"0 of {n} runs done already, {n} to train"
    assert out[2].startswith(f"[1/{n}] dpo-lr0.001-s0: completed (") and "elapsed)" in out[2]
    assert out[-1].startswith("done in ") and out[-1].endswith(f"report: {tmp_path}/s/report/"
                                                               "README.md")
