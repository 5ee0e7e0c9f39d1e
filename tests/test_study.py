import json
import re

import pytest

from prefstudy.config import ConfigError
from prefstudy.paths import REPO
from prefstudy.records import load_runs, read_meta
from prefstudy.report import build_report
from prefstudy.study import describe, load_study, pending, run_study, shard_of
from prefstudy.tables import load_tables, study_dir, study_labels
from prefstudy.verdicts import MIN_HELDOUT_PAIRS

LABELS = ["naive-sum", "sft", "dpo"]  # in the study file's order


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_profile):
    """Three runs of the default study's tiny profile (lr 1e-3), two seeds, trained."""
    root = tmp_path_factory.mktemp("study")
    study = tiny_profile(root / "runs", labels=LABELS, seeds=[0, 1])
    run_study(study, progress=False)
    return study, root


def test_study_trains_every_label_and_seed(tiny_study):
    study, root = tiny_study
    assert [c.run_id for c in study.configs()] == [
        "naive-sum-s0", "sft-s0", "dpo-s0", "naive-sum-s1", "sft-s1", "dpo-s1"]
    records = load_runs(root / "runs")
    assert records.groupby("label").run_id.nunique().to_dict() == {
        "naive-sum": 2, "dpo": 2, "sft": 2}
    assert pending(study) == []  # nothing left: re-running trains nothing
    assert (root / "runs" / "audit" / "audit.json").exists()  # C1, C2 on its training pairs
    assert json.loads((root / "runs" / "study.json").read_text())["labels"] == LABELS


def test_load_tables_reads_every_table_the_study_names(tiny_study):
    _, root = tiny_study
    tables = load_tables(root / "runs")
    assert len(tables.folders) == 6 and tables.labels == LABELS
    for name in ("records", "evals", "perplexity", "generations", "steps"):
        assert len(getattr(tables, name)), name
    assert tables.audit is not None and len(tables.audit.dose) and len(tables.audit.gradients)
    assert set(tables.audit.pairs.pair_id) == set(tables.records.pair_id)  # the pairs it trains on
    assert list(tables.runs.run_id) == sorted(f.name for f in tables.folders)
    assert set(tables.runs.family) == {"likelihood", "reference-based"}
    # the pairs the runs' configs name, train and held-out, cover every pair they recorded
    assert set(tables.pairs.split) == {"train", "heldout"}
    assert set(tables.records.pair_id) | set(tables.evals.pair_id) <= set(tables.pairs.pair_id)
    # a list of run folders, or one run folder, reads the study.json beside them
    some = load_tables([root / "runs" / "sft-s0", root / "runs" / "dpo-s1"])
    assert some.labels == ["sft", "dpo"] and some.audit is not None
    assert load_tables(root / "runs" / "sft-s1").labels == ["sft"]
    # labels the study does not list come last, in the order they first appear
    records = tables.records.assign(label=tables.records.label.replace({"dpo": "dpo-2"}))
    assert study_labels(records, root / "runs") == ["naive-sum", "sft", "dpo-2"]
    assert study_dir(root / "runs") == root / "runs"
    with pytest.raises(FileNotFoundError, match="no runs|no such folder of runs"):
        load_tables(root / "empty")


def test_report_is_regenerated_identically(tiny_study):
    _, root = tiny_study
    first = build_report(root / "runs", root / "a").read_text()
    second = build_report(root / "runs", root / "b").read_text()
    assert first == second
    for name in ("gap_vs_length", "frontier", "normalisation_grid", "gradient_agreement",
                 "dose", "gradient_norm"):
        a, b = root / "a" / "figures" / f"{name}.png", root / "b" / "figures" / f"{name}.png"
        assert a.read_bytes() == b.read_bytes(), name
    for heading in ("## Provenance", "## What held", "## C1", "## C2", "## C3", "## C4",
                    "## Generations"):
        assert heading in first
    assert "seeds [0, 1]" in first and "data-order replicates" in first
    assert "Dose-response" in first


def test_report_numbers_come_from_the_records(tiny_study):
    _, root = tiny_study
    page = build_report(root / "runs", root / "c").read_text()
    evals = load_runs(root / "runs", "evals").query("split == 'heldout'")  # not trained pairs
    start, end = evals[evals.step == 0], evals[evals.step == evals.step.max()]
    run = end[end.run_id == "sft-s1"].set_index("pair_id")
    d_chosen = (run.loss_p - start[start.run_id == "sft-s1"].set_index("pair_id").loss_p).mean()
    row = next(line for line in page.splitlines() if line.startswith("| sft | 0.001 | 1 |"))
    assert f"{d_chosen:.2f}" in row  # Δ chosen loss at the end of one of sft's runs


def test_study_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "tiny"\n[[runs]]\nobjective = "dpo"\nparams = { betta = 1 }\n')
    with pytest.raises(ConfigError, match="runs.*'dpo'.*no parameter 'betta'"):
        load_study(bad, profile="cpu")
    bad.write_text('model = "tiny"\nobjective = "dpo"\n[[runs]]\nobjective = "dpo"\n')
    with pytest.raises(ConfigError, match="'objective' is set per run"):
        load_study(bad, profile="cpu")
    bad.write_text('[[runs]]\nobjective = "dpo"\n[profiles.gpu]\nsteps = 1\n')
    with pytest.raises(ConfigError, match="no profile 'cpu'"):
        load_study(bad, profile="cpu")


def test_a_run_may_have_its_own_seeds_learning_rates_and_fields(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('model = "tiny"\n[[runs]]\nlabel = "a"\nobjective = "dpo"\nseeds = [0, 1, 2]\n'
                    '[[runs]]\nlabel = "b"\nobjective = "dpo"\nparams = { beta = 0.5 }\n'
                    'lrs = [3e-4]\ntrainable_blocks = 1\n'
                    '[[runs]]\nlabel = "c"\nobjective = "sft"\n'
                    '[profiles.cpu]\nseeds = [0]\nlrs = [1e-4, 3e-4]\n')
    study = load_study(path, profile="cpu", output=tmp_path / "runs")
    ids = [c.run_id for c in study.configs()]
    assert ids == ["a-lr0.0001-s0", "c-lr0.0001-s0", "a-lr0.0003-s0", "b-lr0.0003-s0",
                   "c-lr0.0003-s0", "a-lr0.0001-s1", "a-lr0.0003-s1", "a-lr0.0001-s2",
                   "a-lr0.0003-s2"]
    b = next(c for c in study.configs() if c.label == "b")
    assert b.trainable_blocks == 1 and b.params["beta"] == 0.5
    assert {c.trainable_blocks for c in study.configs() if c.label != "b"} == {None}
    assert "9 runs" in describe(study)
    only = load_study(path, profile="cpu", output=tmp_path / "runs", labels=["b"])
    assert [c.run_id for c in only.configs()] == ["b-lr0.0003-s0"]
    assert only.listed == ["a", "b", "c"]  # study.json keeps the study's order
    first = load_study(path, profile="cpu", output=tmp_path / "runs", seeds=[0])
    assert [c.run_id for c in first.configs()] == ids[:5]  # seeds given override a run's own
    with pytest.raises(ConfigError, match="labels.*'zz'"):
        load_study(path, profile="cpu", labels=["zz"])
    path.write_text('model = "tiny"\n[[runs]]\nobjective = "dpo"\nseed = 3\n')
    with pytest.raises(ConfigError, match="unknown.*seed"):
        load_study(path, profile="cpu")


def test_shards_partition_the_grid_and_skip_a_run_another_process_holds(tmp_path, tiny_profile):
    from filelock import FileLock

    from prefstudy.locks import lock_file
    from prefstudy.study import parse_shard, plan, shard_of

    study = tiny_profile(tmp_path / "runs", labels=["naive-sum", "dpo"], seeds=[0, 1, 2],
                         lrs=[1e-4, 1e-3])
    ids = [c.run_id for c in study.configs()]
    shares = [set(plan(study, (i, 3)).run_id) for i in (1, 2, 3)]
    assert sorted(r for share in shares for r in share) == sorted(ids)  # disjoint, complete
    assert all(shares) and {shard_of(r, 3) for r in shares[1]} == {2}
    assert shard_of("dpo-lr0.001-s0", 4) == shard_of("dpo-lr0.001-s0", 4)  # stable
    assert set(plan(study).state) == {"pending"}
    done = study.output / ids[0]
    done.mkdir(parents=True)
    (done / "meta.json").write_text(json.dumps({"schema_version": 2, "run_id": ids[0],
                                              "status": "completed"}))
    held = FileLock(lock_file(study.output / ids[1]))
    held.acquire()
    try:  # a lock another process holds: "training" (this process's own lock counts alike)
        states = plan(study).set_index("run_id").state
        assert states[ids[0]] == "completed" and states[ids[1]] == "training"
    finally:
        held.release()
    assert plan(study).set_index("run_id").state[ids[1]] == "pending"
    for bad in ("0/2", "3/2", "1-2", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_two_shards_train_the_whole_study_and_the_second_audits_it(tmp_path, tiny_profile):
    study = tiny_profile(tmp_path / "runs", labels=["sft", "dpo"], lrs=[1e-4, 1e-3], steps=2,
                         eval_every=2)
    first = {c.run_id for c in study.configs() if shard_of(c.run_id, 2) == 1}
    run_study(study, progress=False, shard=(1, 2))
    trained = {p.name for p in study.output.glob("*/meta.json") for p in [p.parent]}
    assert trained == first and not (study.output / "audit").exists()  # the grid is not done
    run_study(study, progress=False, shard=(2, 2))
    assert {p.parent.name for p in study.output.glob("*/meta.json")} == {
        c.run_id for c in study.configs()}
    assert (study.output / "audit" / "audit.json").exists() and not pending(study)


def test_default_study_defines_every_required_objective_and_profile():
    cpu = load_study(REPO / "configs" / "study.toml", profile="cpu")
    full = load_study(REPO / "configs" / "study.toml", profile="cpu-full")
    gpu = load_study(REPO / "configs" / "study.toml", profile="gpu")
    required = {"naive", "negative_only", "sft", "dpo", "book_dpo", "simpo", "ipo", "dpop",
                "rpo", "unlikelihood"}
    for study in (full, gpu):
        assert required <= {s.objective for s in study.runs}
        assert {s.params.get("norm") for s in study.runs if s.objective == "naive"} == {
            "sum", "mean"}
    # `make study`'s sweep keeps one objective of each kind the claims compare
    assert {"naive", "dpo", "dpop"} <= {s.objective for s in cpu.runs}
    for study in (cpu, full, gpu):  # matched progress needs a sweep and several evaluations
        assert len(study.lrs) >= 3 and max(study.lrs) / min(study.lrs) >= 10
        cfg = study.configs()[0]
        assert cfg.eval_every and cfg.steps // cfg.eval_every >= 3
        # at least what a share's verdict needs (`verdicts.MIN_HELDOUT_PAIRS`); the committed and
        # GPU studies more (`make study` stays small and says "too little data" where it must)
        assert cfg.n_heldout >= (MIN_HELDOUT_PAIRS if study is cpu else 40)
        assert cfg.warmup_steps > 0  # no evaluation after a cold start decides collapse
    focused = load_study(REPO / "configs" / "study.toml", profile="cpu-focused")
    assert [s.label for s in focused.runs] == ["naive-sum", "naive-mean", "negative_only", "dpo",
                                              "dpop", "rpo"]
    arm = focused.configs()[0]  # the bundled arm of the re-run: every neutral passage
    assert arm.n_neutral >= 200 and arm.warmup_steps == arm.eval_every and len(focused.lrs) >= 3
    assert len(gpu.seeds) >= 3 and gpu.shared["model"] == "smollm2-135m-instruct"
    assert cpu.shared["trainable_blocks"] == 4 and gpu.shared.get("trainable_blocks") is None


def test_a_sweep_runs_every_label_at_every_learning_rate(tiny_profile):
    study = tiny_profile(labels=["sft", "dpo"], lrs=[1e-4, 1e-3], data="data/heldout",
                         model=None)
    assert [c.run_id for c in study.configs()][:4] == [
        "sft-lr0.0001-s0", "dpo-lr0.0001-s0", "sft-lr0.001-s0", "dpo-lr0.001-s0"]
    assert {c.lr for c in study.configs()} == {1e-4, 1e-3}
    assert {c.data for c in study.configs()} == {"data/heldout"} and study.shared["model"] == "tiny"
    for bad, match in (({"lrs": []}, "lrs"), ({"lrs": [1e-3, 1e-3]}, "distinct"),
                       ({"lrs": [0.0]}, "> 0"), ({"labels": ["nope"]}, "labels")):
        with pytest.raises(ConfigError, match=match):
            tiny_profile(**{"labels": ["dpo"], **bad})


def test_committed_report_regenerates_from_committed_runs(tmp_path):
    from prefstudy.report import committed_arms

    arms = committed_arms()
    if not arms:
        pytest.skip("no committed runs yet")
    for i, (runs, out, _) in enumerate(arms):  # every arm: reports/, reports/real/
        committed = out / "README.md"
        page = build_report(runs, tmp_path / str(i)).read_text()
        numbers = re.compile(r"-?\d+\.\d+")
        assert numbers.findall(page) == numbers.findall(committed.read_text())
        assert page == committed.read_text()
        for meta in runs.glob("*/meta.json"):
            assert read_meta(meta.parent)["status"] in ("completed", "diverged")


def test_the_catalogue_study_runs_every_registered_objective():
    from prefstudy.objectives import OBJECTIVES

    for profile in ("cpu", "gpu", "tiny"):
        catalogue = load_study(REPO / "configs" / "catalogue.toml", profile=profile)
        assert {c.objective for c in catalogue.configs()} == set(OBJECTIVES), profile
        default = load_study(REPO / "configs" / "study.toml", profile=profile)
        assert catalogue.shared == default.shared, profile  # the same model, data, optimiser


def test_the_command_lists_the_planned_runs_and_refuses_a_bad_shard(tmp_path, capsys):
    from prefstudy.cli import main

    path = tmp_path / "s.toml"
    path.write_text('model = "tiny"\n[[runs]]\nlabel = "a"\nobjective = "dpo"\n'
                    '[profiles.cpu]\nseeds = [0, 1]\nlrs = [1e-4, 1e-3]\n')
    base = ["study", "--config", str(path), "--profile", "cpu", "--output", str(tmp_path / "r")]
    assert main([*base, "--list"]) == 0
    out = capsys.readouterr().out
    assert "a-lr0.0001-s1" in out and out.strip().endswith("4 pending")
    assert main([*base, "--list", "--shard", "1/2"]) == 0
    listed = capsys.readouterr().out
    assert " shard " in listed.splitlines()[1] and not (tmp_path / "r").exists()
    assert main([*base, "--shard", "3/2"]) == 2
    assert "--shard 3/2: i must be between 1 and n" in capsys.readouterr().err
