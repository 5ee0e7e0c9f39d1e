"""The committed audit of a real judge (reports/audits/alpaca_eval): derived numbers only, and
its page and figures drawn again from its tables with no model and no data, byte for byte."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from prefstudy import audit, data
from prefstudy.paths import REPO, TEXT_COLUMNS

REPORTS = REPO / "reports"
REAL = REPORTS / "audits" / "alpaca_eval"


def _unreachable(*args, **kwargs):
    raise AssertionError("the page read the data")


def test_the_real_audit_holds_ids_and_numbers_only():
    pairs = pd.read_parquet(REAL / "pairs.parquet")
    assert not set(TEXT_COLUMNS) & set(pairs.columns)
    assert pairs.pair_id.is_unique and len(pairs) > 2000
    assert {"chosen_model", "rejected_model", "judge"} <= set(pairs.columns)
    settings = json.loads((REAL / "audit.json").read_text())["settings"]
    assert settings["layout"] == "alpaca_eval" and settings["text_kept"] is False
    assert settings["reference"] == "../../runs/audit"
    assert settings["max_length"] is None  # nothing was cut


@pytest.mark.slow
def test_the_real_audit_page_redraws_from_a_moved_copy_without_the_data(tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "reports"
    shutil.copytree(REAL, moved / "audits" / "alpaca_eval")
    shutil.copytree(REPORTS / "runs" / "audit", moved / "runs" / "audit")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFSTUDY_DATA", str(tmp_path / "no-data"))
    for name in ("load_any", "load_pairs", "pairs_from_frame"):
        monkeypatch.setattr(data, name, _unreachable)
    page = audit.rewrite_page(moved / "audits" / "alpaca_eval")
    assert page.read_text() == (REAL / "README.md").read_text()
    figures = sorted(p.name for p in (REAL / "figures").glob("*.png"))
    assert "judge_length.png" in figures
    for name in figures:
        assert (page.parent / "figures" / name).read_bytes() == \
            (REAL / "figures" / name).read_bytes(), name
