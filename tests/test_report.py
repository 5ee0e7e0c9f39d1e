"""The report of a learning-rate sweep: claims at matched progress, from records, regenerable."""

import re
from pathlib import Path

import pytest

from prefstudy import findings
from prefstudy.paths import REPO
from prefstudy.report import build_report
from prefstudy.study import run_study
from prefstudy.tables import load_tables


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_profile):
    """Three runs of the default study's tiny profile, each at two learning rates, 8 held-out
    pairs: the smallest study with matched progress and C3/C4 to report."""
    root = tmp_path_factory.mktemp("sweep")
    study = tiny_profile(root / "runs", labels=["naive-sum", "dpo", "dpop"], lrs=[1e-4, 3e-3],
                         n_heldout=8)
    run_study(study, progress=False)
    return root


def test_a_sweep_study_is_audited_and_its_report_regenerates(sweep):
    assert (sweep / "runs" / "audit" / "audit.json").exists()
    assert (sweep / "runs" / "audit" / "heldout" / "gradients.parquet").exists()
    first = build_report(sweep / "runs", sweep / "a").read_text()
    second = build_report(sweep / "runs", sweep / "b").read_text()
    assert first == second
    for heading in ("## Provenance", "## What held", "## C1", "## C2", "## C3", "## C4"):
        assert heading in first
    assert "2 learning rate(s) (0.0001, 0.003)" in first
    assert "data-order replicates" in first
    for name in ("frontier", "normalisation_grid", "gap_vs_length", "gradient_norm"):
        assert (sweep / "a" / "figures" / f"{name}.png").exists(), name
    assert "[100, 100]" not in first and "[100%, 100%]" not in first


def test_shares_are_counted_with_exact_intervals(sweep):
    tables = load_tables(sweep / "runs")
    found = findings.summarise(tables, n_boot=100)
    assert set(found.paths.lr) == {1e-4, 3e-3} and found.paths.step.min() == 2
    curve = found.curve[found.curve.split == "heldout"]
    assert (curve.n == 8).all() and set(curve.step) == {0, 2, 4, 6}
    for row in curve.itertuples():  # k of n with an interval that contains k/n, inside [0, 1]
        assert 0 <= row.share_lo <= row.k / row.n <= row.share_hi <= 1
        assert row.share_hi - row.share_lo > 0  # never zero-width from 8 pairs
    page = build_report(sweep / "runs", sweep / "c").read_text()
    assert re.search(r"\d+ of 8", page)


def test_the_readme_findings_are_the_committed_reports_what_held(tmp_path):
    from prefstudy.report import committed_arms, markers, update_readme

    readme = (REPO / "README.md").read_text()
    arms = committed_arms()
    assert arms, "no committed runs"
    for _, out, name in arms:  # each arm's block is its committed report's What held
        start, end = markers(name)
        block = readme.split(start + "\n", 1)[1].split(end, 1)[0]
        page = (out / "README.md").read_text()
        held = page.split("## What held\n\n", 1)[1].split("\n## ", 1)[0].strip() + "\n"
        assert block == held, "regenerate: prefstudy report --readme README.md"
        copy = tmp_path / "README.md"  # the regeneration itself: only the block changes
        copy.write_text(readme.replace(block, "- stale\n"))
        assert update_readme(copy, held, name)
        assert copy.read_text() == readme
    (tmp_path / "plain.md").write_text("# no block\n")
    with pytest.raises(ValueError, match="plain.md: no <!-- findings:start -->"):
        update_readme(tmp_path / "plain.md", held)


def test_a_report_neither_depends_on_nor_changes_the_callers_look(sweep):
    import matplotlib as mpl

    from prefstudy import theme

    with mpl.rc_context():  # a caller (a notebook) that set its own look
        theme.set_style(["a", "b"])
        pinned, rc = dict(theme._study_palette), dict(mpl.rcParams)
        build_report(sweep / "runs", sweep / "styled")
        assert theme._study_palette == pinned and dict(mpl.rcParams) == rc
    build_report(sweep / "runs", sweep / "plain")
    figures = sorted((sweep / "plain" / "figures").glob("*.png"))
    assert figures and all(f.read_bytes() == (sweep / "styled" / "figures" / f.name).read_bytes()
                           for f in figures)


def _snapshot(folder):
    """Every file under `folder` with its bytes, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(sweep, tmp_path_factory):
    """A folder of one run, the sweep's naive-sum at lr 0.003, copied (no audit): its report
    takes 2 s where the sweep's takes 10 (the audit's figures, 7 more, take 7 s)."""
    import shutil

    root = tmp_path_factory.mktemp("small") / "runs"
    shutil.copytree(sweep / "runs" / "naive-sum-lr0.003-s0", root / "naive-sum-lr0.003-s0")
    return root


def test_a_report_of_runs_goes_to_their_folder_with_progress(small, capsys):
    import json

    from prefstudy.cli import main

    assert main(["report", "--runs", str(small)]) == 0
    out = small / "report"
    said = capsys.readouterr()
    assert said.out.strip() == str(out / "README.md")
    for step in ("read 1 runs; computing the findings", "C3 — collapse", "C4 —", "done"):
        assert step in said.err  # one line per step as it begins, on stderr
    assert (out / "figures" / "frontier.png").exists()
    assert json.loads((out / "report.json").read_text()) == {
        "runs": "..", "run_ids": ["naive-sum-lr0.003-s0"]}
    assert not list(small.glob(".report.building-*"))
    assert main(["report", "--runs", str(small), "--quiet"]) == 0  # its own report: replaced
    assert capsys.readouterr().err == ""


def test_a_verdict_says_when_the_data_is_too_little(sweep):
    """The tiny sweep: 8 held-out pairs, 4 neutral passages, 3 evaluations after step 0, 16
    training pairs; a verdict below its minimum says so and names what would be enough."""
    from prefstudy import verdicts

    tables = load_tables(sweep / "runs")
    held = verdicts.what_held(tables, findings.summarise(tables, n_boot=100))
    lines = {line.split(":**")[0].removeprefix("- **"): line for line in held.splitlines()
             if line.startswith("- **")}
    assert lines["C1, the gap follows length"].startswith(
        "- **C1, the gap follows length:** too little data to say (16 training pairs, at least "
        "20 needed). On the 16 training pairs")
    assert lines["C2, a noisy direction"].startswith(
        "- **C2, a noisy direction:** too little data to say (16 training pairs, at least 20 "
        "needed).")
    assert ("too little data to say (8 held-out pairs, at least 20 needed; 4 neutral passages, "
            "at least 30 needed)") in lines["C3, both losses grow (collapse)"]
    c4 = next(v for k, v in lines.items() if k.startswith("C4, displacement"))
    assert "too little data to say (no accuracy level above chance with 8 held-out pairs" in c4
    assert "did not hold" not in held and "held (" not in held
    assert verdicts.short((2, 3, "evaluations"), (1, 2, "learning rate(s)"),
                          (40, 20, "held-out pairs")) == (
        "2 evaluations, at least 3 needed; 1 learning rate(s), at least 2 needed")


def test_a_report_of_other_runs_is_refused_and_force_replaces_it(small, tmp_path, capsys):
    import shutil

    from prefstudy.cli import main
    from prefstudy.report import ReportFolderError

    out = tmp_path / "report"
    build_report(small, out)
    other = shutil.copytree(small / "naive-sum-lr0.003-s0",  # the same run, elsewhere
                            tmp_path / "other" / "naive-sum-lr0.003-s0")
    kept = _snapshot(out)
    with pytest.raises(ReportFolderError, match=r"report: holds the report of 1 other "
                       r"run\(s\) \(the runs in .*small.*runs\), not of the runs in .*other; "
                       r"--force replaces it, or choose another --out"):
        build_report(other.parent, out)
    assert main(["report", "--runs", str(other.parent), "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line
    assert _snapshot(out) == kept
    (tmp_path / "mine").mkdir()  # a README.md that no report wrote is never replaced silently
    (tmp_path / "mine" / "README.md").write_text("# my notes\n")
    with pytest.raises(ReportFolderError, match="mine: holds a README.md that is not a report"):
        build_report(other.parent, tmp_path / "mine")
    build_report(other.parent, out, force=True)
    assert '"runs": "../other"' in (out / "report.json").read_text()
    assert not list(out.glob(".replaced-*")) and not list(tmp_path.glob(".*building*"))


def test_a_failed_report_leaves_the_previous_one_whole(small, tmp_path, monkeypatch):
    from prefstudy import report

    reports = tmp_path / "reports"  # as reports/: the runs beside the report
    (reports / "runs").mkdir(parents=True)
    (reports / "runs" / "keep.txt").write_text("not the report's\n")
    build_report(small, reports)
    (reports / "figures" / "frontier.png").write_bytes(b"an older report's figure")
    before = _snapshot(reports)

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(report, "displacement_section", broken)  # after C3 drew its figures
    with pytest.raises(RuntimeError, match="drawing failed"):
        build_report(small, reports)
    assert _snapshot(reports) == before
    assert not list(tmp_path.glob(".*building*"))
    monkeypatch.undo()
    build_report(small, reports)
    after = _snapshot(reports)
    assert after["runs/keep.txt"] == b"not the report's\n"
    assert after["figures/frontier.png"] != b"an older report's figure"
    assert set(after) == set(before) and not list(reports.glob(".replaced-*"))


def _collapse_found(n_pairs, n_passages, n_settled, verdict):
    """What `verdicts.collapse_claim` reads, constructed: a naive-sum and a dpo run at one
    learning rate, the naive-sum run's verdict `verdict`."""
    from types import SimpleNamespace

    import pandas as pd

    collapse = pd.DataFrame({
        "run_id": ["n", "d"], "label": ["naive-sum", "dpo"], "lr": [1e-3, 1e-3],
        "verdict": [verdict, "neither"], "n_settled": n_settled, "warmup_steps": [6, 6],
        "excess": [2.0, -0.1], "excess_lo": [1.5, -0.2], "excess_hi": [2.5, 0.0],
        "d_chosen": [3.0, 0.1], "d_neutral": [1.0, 0.2]})
    return SimpleNamespace(collapse=collapse, n_pairs=n_pairs, n_passages=n_passages,
                           primary=float("nan"), comparisons=pd.DataFrame(),
                           matched=pd.DataFrame({"kl": [float("nan")]}),
                           paths=pd.DataFrame({"kl": [float("nan")]}))


def test_a_collapse_verdict_needs_pairs_passages_and_settled_evaluations():
    """Constructed: C3's verdict holds where its data suffices and a naive run collapsed, does
    not where none did, and says what is missing where the data is too little."""
    from prefstudy.verdicts import collapse_claim

    enough = collapse_claim(_collapse_found(150, 200, 3, "collapse"))
    assert enough[0].startswith("- **C3, both losses grow (collapse):** held (naive-sum lr "
                                "0.001). ")
    assert "after a 6-step warm-up" in enough[0]
    assert ("The naive objective's largest: naive-sum lr 0.001, Δchosen − Δneutral 2.00 [1.50, "
            "2.50] nats/token at the end") in enough[0]
    assert enough[1].startswith("  At matched held-out accuracy: too little data to compare")
    assert "KL from the starting model: not recorded" in enough[1]
    degraded = collapse_claim(_collapse_found(150, 200, 3, "degradation"))
    assert degraded[0].startswith("- **C3, both losses grow (collapse):** did not hold. ")
    assert "degradation, everything rising, in 1 (each run in the C3 section)" in degraded[0]
    few = collapse_claim(_collapse_found(4, 16, 1, "collapse"))
    assert few[0].startswith(
        "- **C3, both losses grow (collapse):** too little data to say (4 held-out pairs, at "
        "least 20 needed; 16 neutral passages, at least 30 needed; 1 settled evaluations per "
        "run, at least 2 needed). ")


def test_every_report_option_says_what_it_does():
    import argparse

    from prefstudy.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    report = sub.choices["report"]
    assert [a.dest for a in report._actions if not a.help] == []
    assert "default: <runs>/report" in report.format_help()


def test_the_report_command_regenerates_every_committed_arm_and_its_readme_block(
        small, tmp_path, monkeypatch, capsys):
    """`prefstudy report` without --runs: each arm of the committed study (its runs, its report
    folder, its README block), here two arms of one small run each."""
    import shutil

    from prefstudy import report
    from prefstudy.cli import main

    arms = []
    for name, block in (("a", "findings"), ("b", "findings-real")):
        runs = tmp_path / name / "runs"
        shutil.copytree(small, runs)
        arms.append((str(runs), str(tmp_path / name), block))
    monkeypatch.setattr(report, "ARMS", tuple(arms))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- findings:start -->\nold\n<!-- findings:end -->\n"
                      "<!-- findings-real:start -->\nold\n<!-- findings-real:end -->\n")
    assert main(["report", "--quiet", "--readme", str(readme)]) == 0
    text = readme.read_text()
    for _, out, block in arms:
        page = (Path(out) / "README.md").read_text()
        held = page.split("## What held\n\n", 1)[1].split("\n## ", 1)[0].strip()
        start, end = report.markers(block)
        assert text.split(start + "\n", 1)[1].split(end, 1)[0].strip() == held
    assert "old" not in text and "findings regenerated" in capsys.readouterr().out
