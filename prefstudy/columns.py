"""Column checks, on the lowest floor: the one check every module uses to name what a table
lacks, and the one rule that makes free-form columns storable as parquet; importing only pandas,
so nothing imports the record store (or torch) to check a column."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from .errors import PrefstudyError


class SchemaError(PrefstudyError):
    """A record set of another schema version, or one missing required columns."""


def require_columns(df: pd.DataFrame, columns: Iterable[str | None], where: str, *,
                    nonempty: bool = False) -> None:
    """Raise SchemaError naming the columns of `columns` that `df` lacks (None entries are
    unused options and ignored); TypeError if `df` is not a DataFrame; with `nonempty`,
    ValueError for a frame without rows. The one column check every module uses."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    wanted = [c for c in dict.fromkeys(columns) if c is not None]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing}; it needs {wanted} "
                          f"(columns present: {list(df.columns)})")
    if nonempty and not len(df):
        raise ValueError(f"{where}: the frame is empty")


def parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with object columns of mixed or non-text values (free-form meta: numbers beside
    text, lists, objects) as JSON text, so parquet can store them; text and None stay as
    they are."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            kinds = {type(v) for v in out[column].dropna()}
            if len(kinds) > 1 or kinds - {str}:
                out[column] = out[column].map(lambda v: v if v is None or isinstance(v, str)
                                              else json.dumps(v, default=str, ensure_ascii=False))
    return out
