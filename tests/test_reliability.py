"""A run's status and records can be trusted: failures are recorded, resumes are checked, one
writer per run folder, damaged run folders are named, finite explosions are flagged."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from prefstudy.columns import SchemaError
from prefstudy.config import ConfigError, load_config
from prefstudy.paths import REPO
from prefstudy.records import (
    RunError,
    RunsLeftOutWarning,
    RunWriter,
    load_run,
    load_runs,
    load_table,
    read_config,
    read_meta,
    runs_summary,
)
from prefstudy.train import train

TINY = REPO / "configs" / "tiny.toml"
QUICK = dict(steps=3, n_heldout=2, n_neutral=2, n_probes=1, eval_every=0, checkpoint_every=1)


def tiny_config(tmp_path, **overrides):
    """configs/tiny.toml made quick (QUICK), run "r" in tmp_path, with `overrides`."""
    return load_config(TINY, output=str(tmp_path), **{"run_id": "r", **QUICK, **overrides})


# --------------------------------------------------------------------------- failures


def test_an_exception_in_a_step_leaves_the_run_failed_with_step_type_and_message(
        tmp_path, monkeypatch):
    import prefstudy.train as tr

    real = tr.train_step

    def breaks_at_step_2(*args):
        if args[6] == 2:  # (model, batch, cfg, ref, opt, accelerator, step, grads)
            raise RuntimeError("the objective broke")
        return real(*args)

    monkeypatch.setattr(tr, "train_step", breaks_at_step_2)
    with pytest.raises(RuntimeError, match="the objective broke"):
        train(tiny_config(tmp_path), progress=False)
    meta = read_meta(tmp_path / "r")
    assert meta["status"] == "failed"
    assert (meta["failed_step"], meta["error_type"]) == (2, "RuntimeError")
    assert meta["error"] == "the objective broke"
    assert load_table(tmp_path / "r").step.max() == 1  # what was written stays
    summary = runs_summary(tmp_path)
    assert summary.status.tolist() == ["failed"]
    assert summary.error[0] == "RuntimeError at step 2: the objective broke"


def test_a_write_failure_leaves_the_run_failed(tmp_path, monkeypatch):
    real = RunWriter.append

    def disk_full_at_step_2(self, table, rows, *, step):
        if table == "records" and step == 2:
            raise OSError(28, "No space left on device")
        return real(self, table, rows, step=step)

    monkeypatch.setattr(RunWriter, "append", disk_full_at_step_2)
    with pytest.raises(OSError, match="No space left"):
        train(tiny_config(tmp_path), progress=False)
    meta = read_meta(tmp_path / "r")
    assert (meta["status"], meta["failed_step"], meta["error_type"]) == ("failed", 2, "OSError")


def test_a_failing_final_evaluation_leaves_the_run_failed(tmp_path, monkeypatch):
    import prefstudy.train as tr

    real = tr.evaluate

    def breaks_at_the_end(writer, model, tokenizer, inputs, cfg, ref_held, device, step, **kw):
        if step == cfg.steps:
            raise RuntimeError("evaluation broke")
        return real(writer, model, tokenizer, inputs, cfg, ref_held, device, step, **kw)

    monkeypatch.setattr(tr, "evaluate", breaks_at_the_end)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train(tiny_config(tmp_path), progress=False)
    meta = read_meta(tmp_path / "r")
    assert meta["status"] == "failed" and meta["error"] == "final evaluation: evaluation broke"


# --------------------------------------------------------------------------- resume


def test_resuming_a_completed_run_is_a_no_op_that_says_so(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    train(cfg, progress=False)
    before = load_run(tmp_path / "r")
    evals = load_table(tmp_path / "r", "evals")
    train(cfg, resume=True, progress=True)
    assert "already completed; nothing to resume" in capsys.readouterr().err
    pd.testing.assert_frame_equal(load_run(tmp_path / "r"), before)
    pd.testing.assert_frame_equal(load_table(tmp_path / "r", "evals"), evals)
    assert not before.duplicated(["step", "pair_id"]).any()


def test_resuming_with_a_config_that_changes_results_is_refused_naming_the_fields(tmp_path):
    train(tiny_config(tmp_path), progress=False)
    with pytest.raises(ConfigError, match=r"objective: 'naive' → 'dpo'.*"):
        train(tiny_config(tmp_path, objective="dpo"), resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"batch_size: 4 → 2; .*trainable_blocks: None → 1"):
        train(tiny_config(tmp_path, trainable_blocks=1, batch_size=2), resume=True, progress=False)
    # where it is written and what figures call it do not change results
    train(tiny_config(tmp_path, label="another name"), resume=True, progress=False)


def test_prefstudy_study_retrains_a_failed_run(tmp_path):
    from prefstudy.study import load_study, pending

    study = load_study(REPO / "configs" / "study.toml", profile="tiny", seeds=[0],
                       output=tmp_path)
    cfg = study.configs()[0].resolved()
    folder = tmp_path / cfg.run_id
    RunWriter(folder).start(cfg.to_dict())
    RunWriter(folder).finish("failed", failed_step=1, error_type="OSError", error="disk")
    assert cfg.run_id in [c.resolved().run_id for c in pending(study)]


# --------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_while_another_process_holds_the_run(tmp_path):
    lock = tmp_path / ".r.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; "
         f"l = FileLock({str(lock)!r}); l.acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match="another process is training into this run folder"):
            train(tiny_config(tmp_path), progress=False)
        assert not (tmp_path / "r").exists()  # the refused writer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    train(tiny_config(tmp_path), progress=False)  # the lock is free again: the run trains
    assert read_meta(tmp_path / "r")["status"] == "completed"


def test_two_training_processes_on_one_run_folder_one_is_refused(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "prefstudy.cli", "train", "--config", str(TINY), "--steps",
            "30", "--quiet", "--run-id", "r", "--output", str(tmp_path)]
    first = subprocess.Popen(args, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "r" / "records").glob("*.parquet")):
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run(args + ["--resume"], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2
        assert "another process is training into this run folder" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    finally:
        first.kill()
        first.wait()


# --------------------------------------------------------------------------- finite explosions


def test_a_run_past_the_uniform_loss_is_flagged_not_failed(tmp_path):
    run = train(tiny_config(tmp_path, lr=1.0, steps=4), progress=False)
    meta = read_meta(run)
    assert meta["status"] == "completed"
    assert meta["above_uniform_step"] >= 1
    assert meta["above_uniform_max_loss"] > meta["uniform_loss"] + 1
    assert runs_summary(tmp_path).above_uniform_step[0] == meta["above_uniform_step"]
    calm = train(tiny_config(tmp_path, run_id="calm", lr=1e-4), progress=False)
    assert "above_uniform_step" not in read_meta(calm)


# --------------------------------------------------------------------------- counting


def test_skipped_dropped_and_truncated_pairs_are_stored_with_the_run(tmp_path):
    good = [{"prompt": f"Question {i}?", "chosen": f"A careful answer number {i}. " * (8 + i % 3),
             "rejected": f"No {i}."} for i in range(6)]
    lines = [json.dumps(r) for r in good] + [json.dumps(good[0]),  # a duplicate: skipped
                                             json.dumps({**good[1], "rejected": good[1]["chosen"]})]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="skipped 2"):
        run = train(tiny_config(tmp_path / "runs", data=str(data), heldout=None, max_pairs=None,
                         max_length=60, max_prompt_length=40, batch_size=2), progress=False)
    cfg = read_config(run)
    assert cfg["records_skipped"] == 2
    assert cfg["pairs_truncated"] >= 1 and cfg["pairs_dropped_by_truncation"] == 0
    assert runs_summary(tmp_path / "runs").records_skipped[0] == 2


# --------------------------------------------------------------------------- damaged run folders


@pytest.fixture(scope="module")
def a_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return train(load_config(TINY, output=str(out), run_id="r", **QUICK), progress=False)


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "copy" / run.name))


@pytest.mark.parametrize("name", ["meta.json", "config.json"])
def test_a_damaged_json_file_names_the_file_and_the_run(a_run, tmp_path, name):
    run = _copy(a_run, tmp_path)
    (run / name).write_text('{"status": "compl')
    with pytest.raises(RunError, match=rf"{name}: damaged {name} of run r"):
        load_runs(run.parent)


def test_a_damaged_shard_names_the_shard_and_the_run(a_run, tmp_path):
    run = _copy(a_run, tmp_path)
    shard = next((run / "records").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) // 2])
    with pytest.raises(RunError, match=rf"{shard.name}: damaged parquet shard of run r"):
        load_run(run)


def test_a_shard_without_a_required_column_is_a_schema_error_naming_it(a_run, tmp_path):
    run = _copy(a_run, tmp_path)
    shard = next((run / "records").glob("*.parquet"))
    df = pd.read_parquet(shard).drop(columns=["loss_p"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    metadata = pq.read_schema(shard).metadata
    pq.write_table(table.replace_schema_metadata(metadata), shard)
    with pytest.raises(SchemaError, match=rf"{shard.name}: a records shard without the required "
                                          r"column\(s\) \['loss_p'\]"):
        load_run(run)


def test_a_folder_that_looks_like_a_run_but_has_no_meta_is_named_when_left_out(a_run, tmp_path):
    run = _copy(a_run, tmp_path)
    half = _copy(a_run, tmp_path / "other")
    half.rename(run.parent / "half")
    (run.parent / "half" / "meta.json").unlink()
    (run.parent / "report").mkdir()  # a study's report folder is not a run: no warning for it
    with pytest.warns(RunsLeftOutWarning, match=r"left out 1 folder\(s\) without meta.json.*half"):
        records = load_runs(run.parent)
    assert set(records.run_id) == {"r"}


# --------------------------------------------------------------------------- the report


def test_the_report_reads_plain_train_runs_on_a_users_hh_data(tmp_path):
    from prefstudy.report import build_report

    def hh(i):
        head = f"\n\nHuman: Tell me about topic {i}?\n\nAssistant:"
        return {"chosen": head + " Here is a careful answer." * (1 + i % 3),
                "rejected": head + f" No {i}."}

    data, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(hh(i)) + "\n" for i in range(12)))
    held.write_text("".join(json.dumps(hh(100 + i)) + "\n" for i in range(4)))
    for objective in ("naive", "dpo"):  # no study.json, no label: as `prefstudy train` leaves them
        train(load_config(TINY, output=str(tmp_path / "runs"), objective=objective, steps=3,
                          data=str(data), heldout=str(held)), progress=False)
    page = build_report(tmp_path / "runs", tmp_path / "report").read_text()
    assert "12 training pairs from" in page and str(data) in page
    assert "| dpo | 0.001 | 0 |" in page and "| naive-sum | 0.001 | 0 |" in page  # a row a run
    assert "Left out or cut (per run): 0 records skipped" in page
    assert "by more than a nat: no run (of 2)" in page
    assert "## C4" in page  # displacement reads the held-out pairs the runs name


# --------------------------------------------------------------------------- caches


def test_two_processes_filling_one_cold_cache_never_collide(tmp_path):
    script = ("import sys, pandas as pd; from prefstudy.cache import cached; "
              "from pathlib import Path; "
              "df = pd.DataFrame({'x': range(2000), 'who': sys.argv[1]}); "
              "[cached(Path(sys.argv[2]) / f'c{i % 5}.parquet', lambda: df, "
              "save=lambda v, p: v.to_parquet(p), load=pd.read_parquet) for i in range(40)]")
    procs = [subprocess.Popen([sys.executable, "-c", script, who, str(tmp_path)],
                              stderr=subprocess.PIPE, text=True) for who in "ab"]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    assert all(len(pd.read_parquet(tmp_path / f"c{i}.parquet")) == 2000 for i in range(5))


# --------------------------------------------------------------------------- saved files read back


class _RunsCode:
    """Pickled, it calls Path.touch(marker) when unpickled: what a saved file must never do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "older format", "another key",
                                    "a pair missing", "code"])
def test_a_damaged_or_foreign_reference_entry_is_computed_again_naming_it(
        tmp_path, monkeypatch, tokenizer, damage):
    import torch

    import prefstudy.step as step
    from prefstudy.cache import CacheWarning, save_torch, save_torch_entry
    from prefstudy.config import TrainConfig
    from prefstudy.data import PreferencePair
    from prefstudy.encode import encode_pairs
    from prefstudy.models import tiny_model

    monkeypatch.setattr(step, "cache_dir", lambda: tmp_path / "cache")
    model = tiny_model(len(tokenizer), seed=5)
    encoded = encode_pairs([PreferencePair(f"Q{i}?", f"Yes {i}.", f"No {i}, sorry.")
                            for i in range(2)], tokenizer, max_length=48, max_prompt_length=16)

    def reference():
        return step.reference_logps(model, encoded, TrainConfig(), tokenizer.pad_token_id, "cpu")

    first = reference()
    (entry,) = (tmp_path / "cache").rglob("*.pt")
    good, key = entry.read_bytes(), step._reference_key(model, encoded, "cpu")
    marker = tmp_path / "code-ran"
    one = dict(list(first.items())[:1])
    {"garbage": lambda: entry.write_bytes(b"not a torch file"),
     "truncated": lambda: entry.write_bytes(good[: len(good) // 2]),
     "older format": lambda: save_torch(first, entry),  # no key inside
     "another key": lambda: save_torch_entry(first, entry, "another key"),
     "a pair missing": lambda: save_torch_entry(one, entry, key),
     "code": lambda: save_torch({"prefstudy_cache_key": key, "value": _RunsCode(marker)}, entry),
     }[damage]()
    with pytest.warns(CacheWarning, match="computing it again") as seen:
        again = reference()
    assert str(entry) in str(seen[0].message)
    assert not marker.exists()  # nothing saved is unpickled beyond tensors
    assert all(torch.equal(first[p][0], again[p][0]) for p in first)
    assert entry.read_bytes() == good  # rewritten as it was
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reference()  # and read back silently


def test_a_damaged_or_foreign_step0_entry_is_computed_again_naming_it(tmp_path, monkeypatch,
                                                                      tokenizer):
    import prefstudy.evaluate as ev
    from prefstudy.cache import CacheWarning
    from prefstudy.models import tiny_model

    monkeypatch.setattr(ev, "cache_dir", lambda: tmp_path / "cache")
    model, calls = tiny_model(len(tokenizer), seed=5), []

    def compute():
        calls.append(1)
        return pd.DataFrame({"step": [0], "text_id": [0], "nll_sum": [1.5]})

    def at_start():
        return ev.at_start("perplexity", model, tokenizer, "cpu", {"texts": ["a"]}, compute)

    first = at_start()
    (entry,) = (tmp_path / "cache").rglob("*.parquet")
    for damage in (lambda: entry.write_bytes(b"PAR1 not parquet"),
                   lambda: first.assign(nll_sum=9.0).to_parquet(entry)):  # not made for this key
        damage()
        with pytest.warns(CacheWarning, match="computing it again") as seen:
            pd.testing.assert_frame_equal(at_start(), first)
        assert str(entry) in str(seen[0].message)
    assert len(calls) == 3
    pd.testing.assert_frame_equal(at_start(), first)
    assert len(calls) == 3


def test_a_damaged_or_foreign_checkpoint_stops_the_resume_in_one_line_naming_it(
        tmp_path, monkeypatch):
    import torch

    import prefstudy.train as tr
    from prefstudy.cache import save_torch
    from prefstudy.checkpoint import CheckpointError

    real = tr.train_step

    def breaks_at_step_3(*args):
        if args[6] == 3:
            raise RuntimeError("stopped")
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(tr, "train_step", breaks_at_step_3)
        with pytest.raises(RuntimeError, match="stopped"):
            train(tiny_config(tmp_path), progress=False)
    state = tmp_path / "r" / "checkpoint" / "state.pt"
    good = state.read_bytes()
    saved = torch.load(state, weights_only=True)
    marker = tmp_path / "code-ran"
    narrower = {k: v[..., :1] for k, v in saved["model"].items()}
    cases = {
        "not a readable checkpoint": b"garbage",
        "not a readable checkpoint ": _RunsCode(marker),
        "not a prefstudy checkpoint": {"weights": torch.zeros(2)},
        "belongs to another run": {**saved, "owner": "another run's identity"},
        "does not fit the model": {**saved, "model": narrower},
    }
    for why, content in cases.items():
        if isinstance(content, bytes):
            state.write_bytes(content)
        else:
            save_torch(content, state)
        with pytest.raises(CheckpointError) as refused:
            train(tiny_config(tmp_path), resume=True, progress=False)
        message = str(refused.value)
        assert message.startswith(f"{state}: ") and why.strip() in message, message
        assert "\n" not in message and "delete it" in message
        meta = read_meta(tmp_path / "r")
        assert meta["status"] == "failed" and str(state) in meta["error"]
    assert not marker.exists()
    state.write_bytes(good)
    run = train(tiny_config(tmp_path), resume=True, progress=False)
    assert read_meta(run)["status"] == "completed" and load_table(run).step.max() == 3


# --------------------------------------------------------------------------- writes that fail


def _full_disk(*args, **kwargs):
    """What torch.save raises when the disk fills: a RuntimeError from its archive writer, the
    OSError only as its context."""
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs "
                           "598")  # noqa: B904 - as torch raises it


@pytest.mark.parametrize("where", ["checkpoint", "step-0 cache", "reference cache"])
def test_a_checkpoint_or_cache_that_cannot_be_written_fails_the_run_naming_it(
        tmp_path, monkeypatch, where):
    import prefstudy.checkpoint as checkpoint
    import prefstudy.evaluate as ev
    import prefstudy.step as step
    from prefstudy.cache import WriteError

    for module in (ev, step):  # empty caches: every entry is written
        monkeypatch.setattr(module, "cache_dir", lambda: tmp_path / "cache")
    module, writer, file = {
        "checkpoint": (checkpoint, "save_torch", tmp_path / "r" / "checkpoint" / "state.pt"),
        "step-0 cache": (ev, "save_frame_entry", tmp_path / "cache" / "start" / "greedy-"),
        "reference cache": (step, "save_torch_entry", tmp_path / "cache" / "reference"),
    }[where]
    monkeypatch.setattr(module, writer, _full_disk)
    with pytest.raises(WriteError, match="could not be written: No space left on device") as e:
        train(tiny_config(tmp_path, objective="dpo", params={}), progress=False)
    message = str(e.value)
    assert message.startswith(str(file)) and "\n" not in message
    if where == "reference cache":  # before the run starts: no run folder to mark
        assert not (tmp_path / "r" / "meta.json").exists()
    else:
        meta = read_meta(tmp_path / "r")
        assert (meta["status"], meta["error_type"]) == ("failed", "WriteError")
        assert str(file) in meta["error"]
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind


def test_a_file_size_limit_fails_the_run_in_one_line_naming_the_file(tmp_path):
    """`ulimit -f`: the checkpoint (12 MB) passes the limit, the records (KB) do not."""
    import resource
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))

    args = [sys.executable, "-m", "prefstudy.cli", "train", "--config", str(TINY), "--steps",
            "2", "--quiet", "--run-id", "r", "--output", str(tmp_path)]
    out = subprocess.run(args, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True, timeout=300,
                         preexec_fn=limit_file_size)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    state = tmp_path / "r" / "checkpoint" / "state.pt"
    assert lines[0] == f"prefstudy train: {state}: could not be written: File too large"
    meta = read_meta(tmp_path / "r")
    assert (meta["status"], meta["failed_step"], meta["error_type"]) == ("failed", 2,
                                                                          "WriteError")


# --------------------------------------------------------------------------- the command line


def _prefstudy(*args, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "prefstudy.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["data", "config", "schema", "unwritable", "missing runs"])
def test_every_error_is_one_line_on_stderr_and_exit_2(tmp_path, case):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"\n')
    config = tmp_path / "c.toml"
    config.write_text('objective = "naive"\nlr = nan\n')
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "meta.json").write_text('{"schema_version": 7}')
    (run / "config.json").write_text("{}")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = {"data": ["train", "--config", str(TINY), "--quiet", "--output", str(tmp_path)],
            "config": ["train", "--config", str(config)],
            "schema": ["runs", str(tmp_path / "runs")],
            "unwritable": ["train", "--config", str(TINY), "--quiet", "--output",
                           str(blocker / "sub")],
            "missing runs": ["report", "--runs", str(tmp_path / "nowhere"), "--out",
                             str(tmp_path / "out")]}[case]
    if case == "data":
        (tmp_path / "tiny.toml").write_text(f'data = "{bad}"\n' + TINY.read_text())
        args[2] = str(tmp_path / "tiny.toml")
    out = _prefstudy(*args)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"prefstudy {args[0]}: "), out.stderr
    assert "Traceback" not in out.stderr
    expected = {"data": "bad.jsonl:1: invalid JSON", "config": "'lr' = nan: must be finite",
                "schema": "schema version 7", "unwritable": "a-file",
                "missing runs": "nowhere"}[case]
    assert expected in lines[0]


def test_debug_shows_the_traceback():
    out = _prefstudy("--debug", "runs", "/no/such/runs/folder")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_sigterm_leaves_the_run_interrupted_and_resumable(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "prefstudy.cli", "train", "--config", str(TINY), "--steps",
            "40", "--quiet", "--run-id", "r", "--output", str(tmp_path)]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list((tmp_path / "r" / "records").glob("*.parquet"))) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.terminate()
    assert proc.wait(timeout=60) == 130
    assert "interrupted" in proc.stderr.read()
    assert read_meta(tmp_path / "r")["status"] == "interrupted"
    run = train(load_config(TINY, output=str(tmp_path), run_id="r", steps=40), resume=True,
                progress=False)
    records = load_run(run)
    assert read_meta(run)["status"] == "completed" and len(records) == 40 * 4
    assert not records.duplicated(["step", "pair_id"]).any()


def test_a_run_saved_before_a_field_existed_still_resumes(tmp_path):
    from prefstudy.train import resume_changes

    cfg = tiny_config(tmp_path).resolved()
    saved = cfg.to_dict()
    del saved["use_weighting"]  # a field added after the run was saved
    saved["params"] = {}  # the objective's parameters at their defaults, as older runs saved them
    assert resume_changes(saved, cfg) == []
    assert resume_changes({**saved, "lr": 0.5}, cfg) == [f"lr: 0.5 → {cfg.lr!r}"]
    # whether pairs.parquet keeps the texts changes what is written, not what is trained
    assert resume_changes({**saved, "keep_text": True}, cfg) == []


def test_a_new_field_at_its_default_keeps_the_run_id():
    from prefstudy.config import TrainConfig

    plain = TrainConfig(objective="dpo").resolved().run_id
    assert TrainConfig(objective="dpo", use_weighting=False).resolved().run_id == plain
    assert TrainConfig(objective="dpo", params={"beta": 0.1}).resolved().run_id == plain
    assert TrainConfig(objective="dpo", lr=3e-5).resolved().run_id != plain
