"""A study folder is read once, by `load_tables`, and holds everything its report needs."""

import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefstudy import audit, data, records  # audit first: it binds data's loaders at import
from prefstudy.columns import SchemaError
from prefstudy.paths import in_repo
from prefstudy.records import PAIRS_FILE, load_table
from prefstudy.report import build_report
from prefstudy.tables import load_tables

COMMITTED = in_repo("reports")


def _unreachable(*args, **kwargs):
    raise AssertionError("the report read the training data")


@pytest.mark.slow
def test_the_committed_report_regenerates_from_a_moved_copy_without_the_data(
        tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "runs"
    shutil.copytree(COMMITTED / "runs", moved)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFSTUDY_DATA", str(tmp_path / "no-data"))
    assert audit.read_audit  # imported before the loaders are patched, so it keeps the real ones
    for name in ("load_any", "load_pairs", "pairs_from_frame", "load_texts"):
        monkeypatch.setattr(data, name, _unreachable)
    page = build_report(moved, tmp_path / "report")
    assert page.read_text() == (COMMITTED / "README.md").read_text()
    figures = sorted(p.name for p in (COMMITTED / "figures").glob("*.png"))
    assert figures == sorted(p.name for p in (tmp_path / "report" / "figures").glob("*.png"))
    for name in figures:
        assert (tmp_path / "report" / "figures" / name).read_bytes() == \
            (COMMITTED / "figures" / name).read_bytes(), name


def test_tables_carry_the_pairs_facts_and_each_runs_settings():
    tables = load_tables()
    assert set(tables.pairs.split) == {"train", "heldout"}
    assert {"lang", "category", "edit_distance", "len_ratio"} <= set(tables.pairs.columns)
    held = tables.pairs[tables.pairs.split == "heldout"]
    assert set(held.pair_id) == set(tables.evals.pair_id)
    # every table carries its run's configured lr; the applied one is step_lr
    assert tables.records.groupby("run_id").lr.nunique().eq(1).all()
    assert "step_lr" in tables.records.columns and "step_lr" not in tables.evals.columns
    assert tables.configs.keys() == tables.metas.keys() == set(tables.runs.run_id)
    assert tables.order[0] == "naive-sum" and tables.families["dpo"] == "reference-based"


def _version_1_run(folder, *, lr=3e-4):
    """A run folder as schema version 1 wrote it: the applied learning rate as `lr` in records
    and steps, an empty `lr` in evals, no pairs file."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run_id": folder.name, "objective": "dpo",
                                                    "seed": 0, "lr": lr}))
    (folder / "meta.json").write_text(json.dumps({"schema_version": 1, "status": "completed"}))
    row = {"run_id": folder.name, "objective": "dpo", "seed": 0, "step": 1, "pair_id": "p",
           "len_p": 2, "len_n": 3, "loss_p": 1.0, "loss_n": 2.0, "gap": 1.0}
    for table, extra in (("records", {"lr": lr / 10}), ("evals", {"lr": float("nan")}),
                         ("steps", {"lr": lr / 10})):
        (folder / table).mkdir()
        frame = pa.Table.from_pandas(pd.DataFrame([{**row, **extra}]))
        frame = frame.replace_schema_metadata({b"prefstudy_schema": b"1"})
        pq.write_table(frame, folder / table / "r00-s0000001.parquet")


def test_a_version_1_run_is_read_in_todays_columns(tmp_path):
    _version_1_run(tmp_path / "runs" / "old")
    assert records.SCHEMA_VERSION == 2
    rec = load_table(tmp_path / "runs" / "old", "records")
    assert "lr" not in rec.columns and rec.step_lr.iloc[0] == pytest.approx(3e-5)
    assert "lr" not in load_table(tmp_path / "runs" / "old", "evals").columns
    tables = load_tables(tmp_path / "runs")
    assert tables.records.lr.iloc[0] == pytest.approx(3e-4)  # the configured one
    assert tables.steps.step_lr.iloc[0] == pytest.approx(3e-5)
    assert tables.pairs.empty and list(tables.labels) == ["dpo"]


def test_a_run_of_another_schema_version_is_refused(tmp_path):
    _version_1_run(tmp_path / "runs" / "old")
    meta = tmp_path / "runs" / "old" / "meta.json"
    meta.write_text(json.dumps({"schema_version": 3, "status": "completed"}))
    with pytest.raises(SchemaError, match="schema version 3"):
        load_tables(tmp_path / "runs")


def test_a_run_writes_the_facts_of_its_pairs(tmp_path):
    from prefstudy.config import load_config
    from prefstudy.inputs import training_pairs
    from prefstudy.train import train

    cfg = load_config(in_repo("configs", "tiny.toml"), output=str(tmp_path), steps=2,
                      max_pairs=8, n_probes=0, n_neutral=0)
    run = train(cfg, progress=False)
    facts = pd.read_parquet(run / PAIRS_FILE)
    trained = set(facts.pair_id[facts.split == "train"])
    assert set(load_table(run).pair_id) <= trained <= {p.pair_id for p in training_pairs(cfg)}
    assert set(facts.pair_id[facts.split == "heldout"]) == set(load_table(run, "evals").pair_id)
    assert facts.edit_distance.between(0, 1).all() and (facts.len_ratio >= 1).all()


def test_pairs_with_free_form_meta_are_stored(tmp_path):
    facts = pd.DataFrame({"pair_id": ["a", "b"], "split": "train",
                          "score": [1, "high"], "tags": [["x"], None]})
    path = records.RunWriter(tmp_path / "run").pairs(facts)
    back = pd.read_parquet(path)
    assert list(back.score) == ["1", "high"] and back.tags.iloc[0] == '["x"]'
