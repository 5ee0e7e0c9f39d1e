"""The report of a learning-rate sweep: claims at matched progress, from records, regenerable."""

import re

import pytest

from prefstudy import findings
from prefstudy.report import build_report
from prefstudy.study import load_study, run_study
from prefstudy.tables import load_tables

SWEEP = """
name = "sweep"
model = "tiny"
max_pairs = 12
n_heldout = 8
n_neutral = 4
n_probes = 4
gen_max_new_tokens = 6
max_length = 64
max_prompt_length = 32
batch_size = 4
grad_stats = true
steps = 4
eval_every = 2

[[runs]]
label = "naive-sum"
objective = "naive"
params = { norm = "sum" }

[[runs]]
label = "dpo"
objective = "dpo"

[[runs]]
label = "dpop"
objective = "dpop"

[profiles.cpu]
seeds = [0]
lrs = [1e-4, 3e-3]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "study.toml").write_text(SWEEP)
    study = load_study(root / "study.toml", profile="cpu", output=root / "runs")
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
    paths = findings.paths(tables)
    assert set(paths.lr) == {1e-4, 3e-3} and paths.step.min() == 2
    calm = findings.displacement(tables, paths, max_neutral=10.0)  # every evaluation counts
    assert (calm.n == 8).all()
    for row in calm.itertuples():  # k of n with an interval that contains k/n, inside [0, 1]
        assert 0 <= row.share_lo <= row.k / row.n <= row.share_hi <= 1
        assert row.share_hi - row.share_lo > 0  # never zero-width from 8 pairs
    page = build_report(sweep / "runs", sweep / "c").read_text()
    assert re.search(r"\d+ of 8", page)


def test_comparison_levels_are_those_most_labels_reached():
    import pandas as pd

    paths = pd.DataFrame({"label": ["a", "a", "b", "c"], "margin_gain": [0.06, 0.3, 0.12, 0.01]})
    assert findings.comparison_levels(paths, ladder=(0.05, 0.1, 0.2, 0.5)) == [0.05, 0.1]
    assert findings.comparison_levels(paths, ladder=(0.05, 0.2), min_reached=0.3) == [0.05, 0.2]
    assert findings.comparison_levels(paths.iloc[:0]) == []


def test_the_readme_findings_are_the_committed_reports_what_held(tmp_path):
    from pathlib import Path

    from prefstudy.report import FINDINGS, held_block, update_readme

    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    block = readme.split(FINDINGS[0] + "\n", 1)[1].split(FINDINGS[1], 1)[0]
    assert block == held_block((repo / "reports" / "README.md").read_text()), (
        "regenerate: prefstudy report --readme README.md")
    copy = tmp_path / "README.md"  # the regeneration itself: only the block changes
    copy.write_text(readme.replace(block, "- stale\n"))
    assert update_readme(copy, repo / "reports" / "README.md")
    assert copy.read_text() == readme
    (tmp_path / "plain.md").write_text("# no block\n")
    with pytest.raises(ValueError, match="plain.md: no <!-- findings:start -->"):
        update_readme(tmp_path / "plain.md", repo / "reports" / "README.md")


def test_a_report_leaves_the_callers_colours_as_they_were(sweep):
    from prefstudy import plots

    plots.set_style(["a", "b"])
    pinned = dict(plots._study_palette)
    build_report(sweep / "runs", sweep / "d")
    assert plots._study_palette == pinned
