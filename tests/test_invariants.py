"""The record invariants, checked where runs are planned, where records are written and where they
are read: run ids unique, one row per (step, pair), no step missing, pair ids unique, training and
held-out pairs disjoint (or a warning). Each failure is one line naming what and where."""

import json
import shutil
import warnings

import pandas as pd
import pyarrow as pa
import pytest

from prefstudy import records
from prefstudy.config import ConfigError
from prefstudy.data import PairSet, PreferencePair
from prefstudy.inputs import batch_indices
from prefstudy.paths import in_repo
from prefstudy.records import (
    PairsOverlapWarning,
    RunError,
    RunWriter,
    check_disjoint,
    load_runs,
    load_table,
    pair_records,
)
from prefstudy.study import load_study, pending, run_study
from prefstudy.tables import load_tables


def _rows(step, ids=("a", "b"), batch=None, run_id="run"):
    return pair_records(list(ids), logp_p=[-1.0] * len(ids), logp_n=[-2.0] * len(ids),
                        len_p=[2] * len(ids), len_n=[3] * len(ids), run_id=run_id,
                        objective="dpo", seed=0, step=step, batch=batch or f"s{step}-r0")


def _run(folder, steps=3, *, run_id=None, pairs=None):
    """A small completed run written by RunWriter: records at steps 1..steps, evals at 0."""
    writer, run_id = RunWriter(folder), run_id or folder.name
    writer.start({"run_id": run_id, "objective": "dpo", "seed": 0, "lr": 1e-3})
    for step in range(1, steps + 1):
        writer.append("records", _rows(step, run_id=run_id), step=step)
    writer.append("evals", _rows(0, ("h1", "h2"), batch="e0-0", run_id=run_id), step=0)
    if pairs is not None:
        writer.pairs(pairs)
    writer.finish("completed")
    return folder


# --------------------------------------------------------------------------- planning


def test_two_configurations_of_one_run_id_are_refused_when_planned(tiny_profile):
    with pytest.raises(ConfigError, match=r"runs\[label='dpo'\] at lr 0.001, seed 0 and "
                                          r"runs\[label='dpo'\] at lr 0.001, seed 0 map to one "
                                          r"run id 'dpo-s0'"):
        tiny_profile(labels=["dpo"], seeds=[0, 0])


def test_run_ids_that_differ_only_in_case_are_refused(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text('model = "tiny"\n[[runs]]\nobjective = "dpo"\nlabel = "DPO"\n'
                     '[[runs]]\nobjective = "sft"\nlabel = "dpo"\n[profiles.cpu]\nseeds = [0]\n')
    with pytest.raises(ConfigError, match=r"study.toml: .*'DPO-s0' / 'dpo-s0' \(one folder "
                                          r"where case does not count\)"):
        load_study(study, profile="cpu")


def test_a_run_made_with_other_settings_in_the_output_is_refused(tiny_profile, tmp_path):
    study = tiny_profile(tmp_path / "runs", labels=["sft", "dpo"])
    cfg = study.configs()[0]
    folder = study.output / cfg.run_id
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"schema_version": 2, "status": "completed"}))
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "steps": cfg.steps + 5}))
    with pytest.raises(ConfigError, match=rf"{cfg.run_id}: the study's output already holds run "
                                          rf"'{cfg.run_id}', made with other settings \(steps: "
                                          rf"{cfg.steps + 5} → {cfg.steps}\)"):
        pending(study)
    # the same settings: kept as done (its label, where it is written may differ)
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "output": "elsewhere"}))
    assert [c.run_id for c in pending(study)] == [study.configs()[1].run_id]


def test_the_study_shows_its_runs_done_and_to_do(tiny_profile, tmp_path, capsys, monkeypatch):
    import prefstudy.study

    study = tiny_profile(tmp_path / "runs", labels=["sft", "dpo"])
    for cfg in study.configs():  # every run ended: nothing left to train
        folder = study.output / cfg.run_id
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"schema_version": 2,
                                                      "status": "completed"}))
        (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    monkeypatch.setattr(prefstudy.study, "audit_study", lambda study, progress=True: None)
    run_study(study, progress=True)
    err = capsys.readouterr().err
    assert f"study {study.name}" in err and "2/2" in err
    run_study(study, progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- writing


def test_the_writer_refuses_a_repeated_pair_a_foreign_step_and_a_skipped_step(tmp_path):
    writer = RunWriter(tmp_path / "run")
    writer.start({"run_id": "run"})
    with pytest.raises(RunError, match=r"records of step 1: 1 row\(s\) repeat a \(step, "
                                       r"pair_id, batch\) already there, e.g. pair a at step 1"):
        writer.append("records", _rows(1, ("a", "b", "a")), step=1)
    with pytest.raises(RunError, match=r"records of step 1: rows of step\(s\) \[2\]"):
        writer.append("records", pd.concat([_rows(1), _rows(2, ("c",))]), step=1)
    assert not (tmp_path / "run" / "records").exists()  # nothing was written
    writer.append("records", _rows(1), step=1)
    with pytest.raises(RunError, match=r"step\(s\) 2–3 of this process \(rank 0\) were never "
                                       "written"):
        writer.append("records", _rows(4), step=4)
    writer.append("records", _rows(2), step=2)
    # a resumed writer (a new process) finds where its records end
    again = RunWriter(tmp_path / "run")
    with pytest.raises(RunError, match=r"step\(s\) 3–4"):
        again.append("records", _rows(5), step=5)
    again.append("records", _rows(3), step=3)
    again.truncate(after_step=1)
    again.append("records", _rows(2), step=2)
    # TRL: micro-batches of one optimiser step may repeat a pair, each under its own batch
    trl = pd.concat([_rows(3, batch="s3-r0-m0"), _rows(3, batch="s3-r0-m1")])
    again.append("records", trl, step=3)
    assert len(load_table(tmp_path / "run")) == 2 + 2 + 4


def test_a_batch_that_spans_two_epochs_never_holds_a_pair_twice():
    for n_pairs, batch_size in ((5, 4), (7, 4), (10, 4), (9, 8), (30, 16)):
        seen = []
        for step in range(1, 40):
            batch = batch_indices(n_pairs, batch_size, seed=1, step=step)
            assert len(set(batch)) == batch_size, (n_pairs, batch_size, step, batch)
            seen += batch
        for epoch in range(len(seen) // n_pairs):  # still every pair once per epoch
            assert sorted(seen[epoch * n_pairs:(epoch + 1) * n_pairs]) == list(range(n_pairs))


# --------------------------------------------------------------------------- reading


def test_a_shard_written_twice_is_refused_when_read(tmp_path):
    run = _run(tmp_path / "runs" / "a")
    shard = sorted((run / "records").glob("*.parquet"))[0]
    shutil.copy(shard, run / "records" / "r01-s0000001.parquet")  # a copied shard
    with pytest.raises(RunError, match=r"a/records: 2 row\(s\) repeat a \(step, pair_id, "
                                       r"batch\) already there, e.g. pair a at step 1"):
        load_table(run)
    with pytest.raises(RunError, match="repeat"):
        load_tables(tmp_path / "runs")


def test_a_step_missing_between_the_first_and_the_last_is_refused_when_read(tmp_path):
    run = _run(tmp_path / "runs" / "a", steps=5)
    for shard in (run / "records").glob("*.parquet"):
        if records._first_step(shard) in (2, 4):
            shard.unlink()
    with pytest.raises(RunError, match=r"a/records: no rows at step\(s\) 2, 4 of 1–5 "
                                       r"\(2 missing\)"):
        load_table(run)


def test_evaluations_repeating_a_pair_are_refused_when_read(tmp_path):
    run = _run(tmp_path / "runs" / "a")
    frame = pd.concat([_rows(0, ("h1", "h2"), batch="e0-0"), _rows(0, ("h1",), batch="e0-0")])
    records._write_parquet(run / "evals" / "r00-s0000000.parquet",  # not through the writer
                           pa.Table.from_pandas(frame, preserve_index=False))
    with pytest.raises(RunError, match=r"a/evals: 1 row\(s\) repeat"):
        load_table(run, "evals")


def test_run_ids_repeated_across_the_folders_given_are_refused(tmp_path):
    a = _run(tmp_path / "one" / "a")
    b = _run(tmp_path / "two" / "a")
    with pytest.raises(RunError, match=r"two run folders named 'a' among the runs given: "):
        load_tables([a, b])
    with pytest.raises(RunError, match=r"run folder .*one/a given twice"):
        load_runs([a, a])
    copy = tmp_path / "one" / "b"
    shutil.copytree(a, copy)  # a copied run folder: its config and records still say "a"
    with pytest.raises(RunError, match=r"run id 'a' twice among the runs given: .*one/a and "
                                       r".*one/b \(a copied run folder\?\)"):
        load_tables(tmp_path / "one")
    with pytest.raises(RunError, match=r"run id 'a' in two run folders"):
        load_runs(tmp_path / "one")


# --------------------------------------------------------------------------- data


def _pair(i):
    return PreferencePair(f"prompt {i}", f"chosen {i}", f"rejected {i}")


def test_training_and_heldout_pairs_that_overlap_are_named_in_a_warning():
    train, held = [_pair(i).pair_id for i in range(6)], [_pair(i).pair_id for i in (4, 5, 9)]
    with pytest.warns(PairsOverlapWarning, match=r"2 of the 3 held-out pairs \(held.jsonl\) are "
                                                 r"also training pairs \(train.jsonl\), e.g. "):
        assert check_disjoint(train, held, train="train.jsonl", heldout="held.jsonl") == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_disjoint(train, [_pair(9).pair_id], train="t", heldout="h") == 0


def test_a_run_whose_heldout_pairs_are_its_training_pairs_warns(tmp_path):
    from prefstudy.config import load_config
    from prefstudy.inputs import prepare_inputs
    from prefstudy.models import load_tokenizer

    cfg = load_config(in_repo("configs", "tiny.toml"), output=str(tmp_path), max_pairs=8,
                      heldout="data/pairs", n_heldout=460, n_probes=0, n_neutral=0)
    with pytest.warns(PairsOverlapWarning, match=r"8 of the 460 held-out pairs \(.*pairs\) are "
                                                 r"also training pairs \(.*pairs\)"):
        inputs = prepare_inputs(cfg, load_tokenizer())
    facts = inputs.pairs
    run = _run(tmp_path / "runs" / "a", pairs=facts)
    with pytest.warns(PairsOverlapWarning, match=r"held-out pairs \(.*a/pairs.parquet\) are also "
                                                 r"training pairs \(a's training pairs\)"):
        load_tables(run.parent)


def test_repeated_pairs_are_audited_once_with_a_warning():
    from prefstudy.audit import AuditWarning, _unique_pairs

    pairs = PairSet((_pair(1), _pair(2), _pair(1)))
    with pytest.warns(AuditWarning, match=r"1 of the 3 pairs repeat an earlier pair"):
        unique = _unique_pairs(pairs)
    assert [p.pair_id for p in unique] == [_pair(1).pair_id, _pair(2).pair_id]
