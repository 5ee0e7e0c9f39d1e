"""The report of a learning-rate sweep: claims at matched progress, from records, regenerable."""

import re

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
    paths = findings.run_paths(tables)
    assert set(paths.lr) == {1e-4, 3e-3} and paths.step.min() == 2
    shift = findings.displacement(tables, paths, max_neutral=10.0)  # every evaluation counts
    assert (shift.n == 8).all()
    for row in shift.itertuples():  # k of n with an interval that contains k/n, inside [0, 1]
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
    from prefstudy.report import FINDINGS, update_readme

    readme = (REPO / "README.md").read_text()
    block = readme.split(FINDINGS[0] + "\n", 1)[1].split(FINDINGS[1], 1)[0]
    page = (REPO / "reports" / "README.md").read_text()  # the committed report's What held
    held = page.split("## What held\n\n", 1)[1].split("\n## ", 1)[0].strip() + "\n"
    assert block == held, "regenerate: prefstudy report --readme README.md"
    copy = tmp_path / "README.md"  # the regeneration itself: only the block changes
    copy.write_text(readme.replace(block, "- stale\n"))
    assert update_readme(copy, held)
    assert copy.read_text() == readme
    (tmp_path / "plain.md").write_text("# no block\n")
    with pytest.raises(ValueError, match="plain.md: no <!-- findings:start -->"):
        update_readme(tmp_path / "plain.md", held)


def test_a_report_leaves_the_callers_colours_as_they_were(sweep):
    from prefstudy import theme

    theme.set_style(["a", "b"])
    pinned = dict(theme._study_palette)
    build_report(sweep / "runs", sweep / "d")
    assert theme._study_palette == pinned
