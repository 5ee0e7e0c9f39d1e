"""Numbers and tables as text: what the report, the data card and the figure titles print.

One name per meaning:

    number(v, digits)      fixed digits ("0.88", "3891.40"), scientific notation with 3
                           significant digits from 1e5 on ("1.23e+05"), "–" when missing
    whole(v)               no decimals, never scientific ("27")
    percent(v, digits)     a share 0–1 as a percentage ("36.0%")
    interval_label(...)    "value [lo, hi]", the interval left out where it is unknown
    markdown_table(df)     a GitHub Markdown table
    catalogue_table(rows)  the objective registry (`objectives.catalogue()`) as that table
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import pandas as pd

MISSING = "–"  # what a missing number prints as
HUGE = 1e5  # from here on, `number` writes scientific notation


def is_missing(value) -> bool:
    """None, NaN or pandas' NA (a number that is not there); inf is a value."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, numbers.Real) and math.isnan(value)


def number(value, digits: int = 2) -> str:
    """`value` with `digits` decimals, or in scientific notation (3 significant digits) when
    |value| ≥ 1e5; "–" when it is missing."""
    if is_missing(value):
        return MISSING
    return f"{value:.2e}" if abs(value) >= HUGE else f"{value:.{digits}f}"


def whole(value) -> str:
    """`value` rounded to no decimals, never in scientific notation."""
    return f"{value:.0f}"


def percent(value, digits: int = 1) -> str:
    """A share (0–1) as a percentage with `digits` decimals; "–" when it is missing."""
    if is_missing(value):
        return MISSING
    return f"{100 * value:.{digits}f}%"


def interval_label(value, lo=None, hi=None, *, digits: int = 2, share: bool = False) -> str:
    """"value [lo, hi]" with `number`'s digits; the interval is left out where either bound is
    missing (one seed: no interval across seeds), and the whole label is "–" without a value.

    share=True: `value` is a share (0–1), written as a percentage, and its interval is clipped
    to [0, 1] (a t-interval of a share can leave it; a share cannot).
    """
    if is_missing(value):
        return MISSING
    scale, unit = (100, "%") if share else (1, "")
    text = f"{number(scale * value, digits)}{unit}"
    if not (is_missing(lo) or is_missing(hi)):
        if share:
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        text += f" [{number(scale * lo, digits)}, {number(scale * hi, digits)}]"
    return text


def interval_column(df: pd.DataFrame, metric: str, digits: int = 2,
                    share: bool = False) -> pd.Series:
    """`interval_label` of every row of `df`, from its `metric`, `<metric>_lo` and
    `<metric>_hi` columns (a missing bound column: no interval)."""
    def cell(row):
        return interval_label(row.get(metric), row.get(f"{metric}_lo"), row.get(f"{metric}_hi"),
                              digits=digits, share=share)

    return df.apply(cell, axis=1)


def _cell(value) -> str:
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def markdown_table(df: pd.DataFrame, formats: dict[str, Callable] | None = None) -> str:
    """A GitHub Markdown table of `df` (index dropped); `formats` maps column → value → str.
    Numeric columns are right-aligned; floats print with 2 decimals unless formatted."""
    formats = formats or {}
    header = [str(c) for c in df.columns]
    body = [[formats.get(c, _cell)(v) for c, v in zip(df.columns, row)]
            for row in df.itertuples(index=False)]
    right = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def catalogue_table(rows: list[dict]) -> str:
    """The objective catalogue as a Markdown table: what `prefstudy objectives --markdown`
    prints and the README lists between its `objectives` markers."""
    def params(value: dict) -> str:
        return "; ".join(f"`{k}` = {v}" for k, v in value.items()) or "none"

    frame = pd.DataFrame([{
        "objective": f"`{r['name']}`", "what it minimises": r["summary"],
        "source": r["source"], "parameters (default, allowed)": params(r["params"]),
        "reference": "yes" if r["needs_reference"] else "no",
        "TRL": r["trl"].replace('"', "'") + (" (batch-level)" if r["batch_level"] else ""),
    } for r in rows])
    return markdown_table(frame)


__all__ = ["MISSING", "catalogue_table", "interval_column", "interval_label", "is_missing", "markdown_table",
           "number", "percent", "whole"]
