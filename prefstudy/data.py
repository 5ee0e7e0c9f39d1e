"""Preference pairs: the `PreferencePair` type and the loaders that build it.

Sources (`load_any`): a file, a folder of them, an http(s) URL (fetched once into the cache), a
pandas DataFrame, a Hugging Face `datasets` object or `save_to_disk` folder, or a hub id. Files
are JSON Lines, JSON arrays, parquet or CSV, plain or gzip-compressed (`prefstudy.sources`
says how each is recognised and numbered).

Layouts (`prefstudy.layouts`, one registry): the record layouts people publish preference data
in — TRL's standard and conversational formats (explicit or implicit prompt), Anthropic-HH
transcripts, the Chatbot Arena export and its conversations, Stanford SHP, AlpacaEval
annotations, UltraFeedback-style scored completions, and TRL's unpaired format (refused: it has
one answer). The layout is recognised from the first record of each file (or table, or
dataset) and used for all of its records; `layout=` names it instead, and `columns=` maps the
file's column names onto a layout's (`"prompt=question,chosen=good,rejected=bad"`). Two answers
and a label become chosen and rejected by the label; a tie, a missing or fractional label is
skipped and counted, never guessed, and the order of the two answers in the file never decides
which is chosen. What the file carries beside the texts (which model wrote each answer, the
judge, scores, ids) is kept in the pair's meta.

A record that is malformed (invalid JSON, a missing or mistyped field, a label that is not one,
bytes that are not UTF-8) raises `DataError` naming the file, the line (item, row) and the
field; so does a path that holds no records at all. A record that parses but cannot serve (a
tie or no label, an empty response, a conversation whose sides do not share a prompt, text
with a lone surrogate escape that no encoder can write, chosen identical to rejected, a
duplicate) and an empty file in a folder are skipped, listed in `PairSet.skipped` with their
line and the kind of reason (`PairSet.skip_counts()` counts them by kind), and announced in one
`SkippedPairsWarning` (with the folder entries not read); `strict=True` raises instead (a
folder's other entries are still only listed). `PairSet.layouts` says which layouts were read.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from . import layouts, sources
from .layouts import DataError, Message, Prompt, UnusableRecord  # noqa: F401 (re-exported)
from .paths import bundled
from .sources import EMPTY, FOLDER_ENTRY, Skipped

__all__ = ["DataError", "Message", "PairSet", "PreferencePair", "Prompt", "Skipped",
           "SkippedPairsWarning", "UnusableRecord"]


class SkippedPairsWarning(UserWarning):
    """Some records parsed but could not serve as pairs, or some entries of a folder were not
    read; `PairSet.skipped` lists them (a folder entry with line None)."""


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair.

    prompt:   the user turn as a string, or the whole conversation before the response as a tuple
              of {"role", "content"} messages (multi-turn and HH data).
    chosen:   the preferred response text.
    rejected: the dispreferred response text.
    meta:     free-form labels, e.g. {"lang": "zh", "category": "empathy"}, and what the file
              carried (chosen_model, rejected_model, judge, scores, ids).
    pair_id:  stable id derived from prompt, chosen and rejected (not from meta).
    """

    prompt: Prompt
    chosen: str
    rejected: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def pair_id(self) -> str:
        prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
        blob = json.dumps([prompt, self.chosen, self.rejected], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (the last user turn for conversations)."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else self.prompt[-1]["content"]

    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [dict(m) for m in self.prompt]


@dataclass(frozen=True)
class PairSet(Sequence[PreferencePair]):
    """The pairs a loader produced, the records it skipped (with their lines and the kind of
    reason) and the layouts it read ((name, pairs read in it), in the order first met)."""

    pairs: tuple[PreferencePair, ...]
    skipped: tuple[Skipped, ...] = ()
    layouts: tuple[tuple[str, int], ...] = ()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        if isinstance(i, slice):  # a sample of the pairs; what the load skipped stays listed
            return PairSet(self.pairs[i], self.skipped, self.layouts)
        return self.pairs[i]

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self.pairs)

    @property
    def layout(self) -> str:
        """The layout(s) read, e.g. "alpaca_eval" ("" for pairs not read from a source)."""
        return " + ".join(name for name, _ in self.layouts)

    def skip_counts(self) -> pd.Series:
        """How many records were skipped, by kind of reason (most frequent first)."""
        counts = Counter(s.category for s in self.skipped)
        return pd.Series(dict(counts.most_common()), name="skipped", dtype="int64")

    def to_frame(self) -> pd.DataFrame:
        """One row per pair: pair_id, prompt (text), chosen, rejected, then one column per meta key."""
        rows = [
            {"pair_id": p.pair_id, "prompt": p.prompt_text, "chosen": p.chosen,
             "rejected": p.rejected, **p.meta}
            for p in self.pairs
        ]
        return pd.DataFrame(rows)

    def filter(self, **meta) -> PairSet:
        """Pairs whose meta matches every given key, e.g. `pairs.filter(lang="zh")`."""
        keep = [p for p in self.pairs if all(p.meta.get(k) == v for k, v in meta.items())]
        return PairSet(tuple(keep), self.skipped, self.layouts)


# --------------------------------------------------------------------------- records


def _check_encodable(prompt: Prompt, chosen: str, rejected: str, meta: Mapping) -> None:
    """UnusableRecord for text that no UTF-8 writer accepts (a lone surrogate from a "\\ud800"
    escape): JSON allows it, but tokenizers, parquet and the report cannot store it."""
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected),
                        ("meta", meta)):
        try:
            json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError as e:
            bad = e.object[e.start:e.end].encode("utf-8", "backslashreplace").decode()
            raise UnusableRecord(f"field {name!r} holds {bad}, a lone surrogate that is not "
                                 "valid Unicode text", "lone surrogate") from None


def _pair(record: Any, where: str, layout: str, seed: int) -> tuple[PreferencePair, str]:
    """One record → (pair, the layout it was read in). DataError (malformed) or
    UnusableRecord (skippable)."""
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    prompt, chosen, rejected, meta, name = layouts.parse(record, where, layout, seed=seed)
    if not chosen.strip() or not rejected.strip():
        raise UnusableRecord(f"empty {'chosen' if not chosen.strip() else 'rejected'} response",
                             "empty response")
    if isinstance(prompt, str) and not prompt.strip():
        raise UnusableRecord("empty prompt", "empty prompt")
    if chosen == rejected:
        raise UnusableRecord("chosen is identical to rejected", "identical answers")
    _check_encodable(prompt, chosen, rejected, meta)
    return PreferencePair(prompt, chosen, rejected, dict(meta)), name


def parse_record(record: Any, where: str, layout: str = "auto", *, seed: int = 0
                 ) -> PreferencePair:
    """One record (a JSON object, a table row) → a pair, in `layout` ("auto": recognised from
    its fields). Raises DataError (malformed) or UnusableRecord (skippable)."""
    return _pair(record, where, layout, seed)[0]


@dataclass(frozen=True)
class _Reading:
    """How `_collect` reads records: the layout ("auto": recognised per record from its
    fields), the column map, the seed of the layouts that draw (UltraFeedback's rejected
    answer) and strictness."""

    layout: str = "auto"
    columns: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    strict: bool = False

    @classmethod
    def given(cls, layout: str, columns: str | Mapping[str, str] | None, seed: int,
              strict: bool) -> _Reading:
        """The reading a loader's arguments ask for: ValueError for an unknown layout or a
        malformed column map, before anything is read."""
        if layout != "auto" and layout not in layouts.LAYOUTS:
            raise ValueError(f"layout={layout!r}; allowed: 'auto', "
                             f"{', '.join(map(repr, layouts.LAYOUTS))}")
        return cls(layout, layouts.column_map(columns), seed, strict)

    def pair(self, record: Any, where: str) -> tuple[PreferencePair, str]:
        if self.columns and isinstance(record, Mapping):
            record = layouts.renamed(record, self.columns, where)
        return _pair(record, where, self.layout, self.seed)


def _collect(items: Iterable[tuple[str, Any, Any]], reading: _Reading) -> PairSet:
    """The pairs of (source, line, record) items; a `Skipped` item (a file a folder listing did
    not read) is listed as it is, whatever `strict`."""
    pairs, skipped, seen, read = [], [], {}, Counter()
    for source, line, record in items:
        if isinstance(record, Skipped):
            skipped.append(record)
            continue
        where = f"{source}:{line}" if line is not None else source
        try:
            if record is EMPTY:
                raise UnusableRecord("empty file: no records", "empty file")
            pair, name = reading.pair(record, where)
            if pair.pair_id in seen:
                raise UnusableRecord(f"duplicate of {seen[pair.pair_id]}", "duplicate")
        except UnusableRecord as e:
            if reading.strict:
                raise DataError(f"{where}: {e}") from None
            skipped.append(Skipped(source, line, str(e), e.kind))
            continue
        seen[pair.pair_id] = where
        pairs.append(pair)
        read[name] += 1
    return PairSet(tuple(pairs), tuple(skipped), tuple(read.items()))


def _announce(pairs: PairSet) -> PairSet:
    """One SkippedPairsWarning listing what a load skipped: counts by kind, then the first ten."""
    skipped = pairs.skipped
    if skipped:
        records = sum(s.line is not None for s in skipped)  # the others: a folder's entries
        entries = len(skipped) - records
        counts = ([f"{records} of {records + len(pairs)} records"] if records else []) + (
            [f"{entries} folder entr{'ies' if entries > 1 else 'y'}"] if entries else [])
        kinds = ", ".join(f"{kind}: {n}" for kind, n in pairs.skip_counts().items()
                          if kind != FOLDER_ENTRY)
        shown = "; ".join(str(s) for s in skipped[:10])
        more = f" (and {len(skipped) - 10} more)" if len(skipped) > 10 else ""
        warnings.warn(f"skipped {' and '.join(counts)}{f' ({kinds})' if kinds else ''}: "
                      f"{shown}{more}",
                      SkippedPairsWarning, stacklevel=3)
    return pairs


# --------------------------------------------------------------------------- files


def load_pairs(path: str | os.PathLike, *, layout: str = "auto",
               columns: str | Mapping[str, str] | None = None, strict: bool = False,
               seed: int = 0) -> PairSet:
    """Load preference pairs from a file or a folder of them.

    path: a JSON Lines or JSON array file, a .parquet / .pq or .csv table, any of them
    gzip-compressed, or a folder: every such file in it, in name order (`prefstudy.sources`).
    Every other entry of the folder (hidden files, subfolders, other files, FIFOs, devices,
    sockets, broken links) is not opened and is listed in `PairSet.skipped` with the reason, as
    an empty file is. A path that is not a regular file or folder is refused before it is opened.
    layout: "auto" (recognised per file from its first record) or a name in `layouts.LAYOUTS`.
    columns: the file's column for each field a layout reads (`layouts.column_map`).
    strict: raise on records that parse but cannot serve, instead of skipping them.
    seed: the draws a layout makes (UltraFeedback's rejected answer).
    Returns a PairSet of PreferencePair(prompt, chosen, rejected, meta) in file and line order.
    """
    reading = _Reading.given(layout, columns, seed, strict)
    path = Path(path)
    sources.check_path(path, folder_ok=True)
    files, not_read = sources.folder_files(path) if path.is_dir() else ([path], [])
    if not files:
        names = ", ".join(Path(s.source).name for s in not_read[:10]) or "nothing"
        raise DataError(f"{path}: folder holds no pairs file ({', '.join(sources.PAIR_SUFFIXES)}"
                        f"); it holds {names}")
    items = itertools.chain(((s.source, None, s) for s in not_read),
                            (item for f in files for item in sources.file_items(f)))
    pairs = _collect(items, reading)
    if not pairs and all(s.line is None for s in pairs.skipped):  # no record anywhere
        raise DataError(f"{path}: empty: no records")
    return _announce(pairs)


def pairs_from_frame(df: pd.DataFrame, *, strict: bool = False, source: str = "DataFrame",
                     layout: str = "auto", columns: str | Mapping[str, str] | None = None,
                     seed: int = 0) -> PairSet:
    """Pairs from a DataFrame, one record per row in any layout `load_pairs` reads.

    Responses may be strings or lists of {"role", "content"} messages, as parquet and
    `datasets` store them (arrays become lists). A `meta` column of mappings (or of JSON objects
    as text) and every column the layout does not read become meta; missing values (None, NaN)
    are left out. Rows are reported by their index label.
    """
    reading = _Reading.given(layout, columns, seed, strict)
    if not len(df):
        raise DataError(f"{source}: empty: no rows")
    return _announce(_collect(sources.table_rows(df, source), reading))


# --------------------------------------------------------------------------- any source

# what only save_to_disk writes (a Dataset's state.json, a DatasetDict's dataset_dict.json);
# dataset_info.json alone is also a hub snapshot's or a user's metadata
SAVED_DATASET = ("state.json", "dataset_dict.json")


def _datasets():
    """The `datasets` package, or an ImportError that names the extra to install."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("reading a Hugging Face dataset needs the `datasets` package: "
                          "pip install 'prefstudy[audit]'") from e
    return datasets


def _is_dataset(obj: Any) -> bool:
    """Whether `obj` is a `datasets` Dataset or DatasetDict (checked without importing it)."""
    return type(obj).__module__.split(".")[0] == "datasets" and hasattr(obj, "column_names")


def _one_split(obj: Any, split: str | None, source: str):
    """A Dataset from a Dataset or DatasetDict: `split`, or the only split there is."""
    if not isinstance(obj.column_names, dict):  # a Dataset: one split already
        return obj
    splits = list(obj.column_names)
    if split is None and len(splits) == 1:
        split = splits[0]
    if split not in splits:
        wanted = "pass split=" if split is None else f"no split {split!r}"
        raise DataError(f"{source}: splits {splits}; {wanted}")
    return obj[split]


STREAM_MAX_ROWS = 100_000  # the most rows read from an IterableDataset unless max_rows says


def pairs_from_dataset(dataset, *, split: str | None = None, strict: bool = False,
                       source: str = "Dataset", max_rows: int | None = None,
                       layout: str = "auto", columns: str | Mapping[str, str] | None = None,
                       seed: int = 0) -> PairSet:
    """Pairs from a Hugging Face `datasets` Dataset or IterableDataset (or one `split` of a
    DatasetDict or IterableDatasetDict): its rows as `pairs_from_frame` reads a DataFrame's,
    reported by their row number. max_rows: read at most this many rows (default: all).

    An IterableDataset (a stream, possibly endless) is read up to a bound: its first `max_rows`
    rows where given; otherwise all of it if it has at most STREAM_MAX_ROWS rows, else DataError
    (pass max_rows, or a Dataset). A stream that fails while it is read is one DataError line.
    """
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int)
                                 or max_rows < 1):
        raise ValueError(f"max_rows={max_rows!r} must be a whole number of at least 1")
    reading = _Reading.given(layout, columns, seed, strict)
    dataset = _one_split(dataset, split, source)
    if isinstance(dataset, _datasets().IterableDataset):
        rows = _stream(dataset, source, max_rows)
    else:
        rows = list(enumerate(itertools.islice(dataset, max_rows)))
        if not rows:
            raise DataError(f"{source}: empty: the Dataset holds no rows")
    items = ((f"{source} row", i, sources.row_record(row)) for i, row in rows)
    return _announce(_collect(items, reading))


def _stream(dataset, source: str, max_rows: int | None) -> list:
    """The (row number, row) of an IterableDataset up to the bound `pairs_from_dataset` states."""
    bound = max_rows or STREAM_MAX_ROWS
    try:
        rows = list(enumerate(itertools.islice(dataset, bound + (max_rows is None))))
    except Exception as e:  # a stream that fails (offline, a broken generator): one line
        raise DataError(f"{source}: the IterableDataset failed while it was read "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if len(rows) > bound:
        raise DataError(f"{source}: an IterableDataset with more than {bound} rows (it may be "
                        f"endless); pass max_rows=N to read its first N rows, or a Dataset")
    if not rows:
        raise DataError(f"{source}: empty: the IterableDataset holds no rows")
    return rows


def _load_path(path: Path, split: str | None, max_rows: int | None, **reading) -> PairSet:
    sources.check_path(path, folder_ok=True)
    if path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET):
        datasets = _datasets()
        try:
            saved = datasets.load_from_disk(str(path))
        except Exception as e:  # a damaged or foreign save_to_disk folder: one line
            raise DataError(f"{path}: a saved dataset (save_to_disk) that cannot be read "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        return pairs_from_dataset(saved, split=split, source=str(path), max_rows=max_rows,
                                  **reading)
    return load_pairs(path, **reading)


def _load_hub(name: str, split: str | None, max_rows: int | None, **reading) -> PairSet:
    datasets = _datasets()
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown id, no such split: one line that says which
        raise DataError(f"{name}: no such file or folder, and the Hugging Face hub dataset "
                        f"could not be loaded ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None
    return pairs_from_dataset(loaded, split=split, source=name, max_rows=max_rows, **reading)


def _unique(pairs: Sequence[PreferencePair]) -> PairSet:
    """The pairs, a repeat of an earlier pair (same pair_id) skipped as a load skips it."""
    kept, skipped, seen = [], [], {}
    for i, pair in enumerate(pairs):
        if pair.pair_id in seen:
            skipped.append(Skipped("pairs", i, f"duplicate of pairs:{seen[pair.pair_id]}",
                                   "duplicate"))
            continue
        seen[pair.pair_id] = i
        kept.append(pair)
    return PairSet(tuple(kept), tuple(skipped))


HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # "name" or "owner/name"


ACCEPTED = ("a path, an http(s) URL, a PairSet, a list of PreferencePair, a pandas DataFrame, "
            "or a `datasets` Dataset, DatasetDict, IterableDataset or IterableDatasetDict")


def load_any(source, *, split: str | None = None, layout: str = "auto",
             columns: str | Mapping[str, str] | None = None, strict: bool = False,
             max_rows: int | None = None, seed: int = 0) -> PairSet:
    """Preference pairs from whatever holds them; one entry point for every source and layout.

    source: a PairSet (returned as it is) or list of PreferencePair (repeats skipped, as a load
    skips them); a pandas DataFrame (`pairs_from_frame`); a `datasets` Dataset, DatasetDict,
    IterableDataset or IterableDatasetDict (`pairs_from_dataset`: a stream is read up to a
    bound); an http(s) URL (`sources.fetch`: downloaded once into the cache, then read as a
    file); or a path (`load_pairs`): a JSON Lines or JSON array, parquet or CSV file (plain or
    gzip), a folder of them (every other entry listed as skipped), or a folder written by
    `Dataset.save_to_disk` / `DatasetDict.save_to_disk`. A string that is no path here but looks
    like "owner/name" is loaded from the Hugging Face hub (`datasets.load_dataset`, which needs a
    network or a cached copy). Anything else is a TypeError; a path that is not a regular file
    or folder (a FIFO, a device, a socket, a loop of symbolic links) a DataError, before it is
    opened.
    split: the split of a DatasetDict or hub dataset (default: the only one there is).
    layout, columns, strict, seed: as for `load_pairs`. max_rows: as for `pairs_from_dataset`.
    Reading a dataset needs the optional `datasets` package (`pip install 'prefstudy[audit]'`).
    """
    reading = {"layout": layout, "columns": columns, "strict": strict, "seed": seed}
    if isinstance(source, PairSet):
        return source
    if isinstance(source, list | tuple) and all(isinstance(p, PreferencePair) for p in source):
        return _announce(_unique(source))
    if isinstance(source, pd.DataFrame):
        return pairs_from_frame(source, **reading)
    if _is_dataset(source):
        return pairs_from_dataset(source, split=split, max_rows=max_rows, **reading)
    if sources.is_url(source):
        fetched = sources.fetch(source)
        try:
            return load_pairs(fetched, **reading)
        except DataError:  # not kept: what a later call fetches is read afresh
            fetched.unlink(missing_ok=True)
            raise
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"load_any: cannot read pairs from a {type(source).__name__}; it "
                        f"reads {ACCEPTED}")
    path = Path(source)
    named_file = path.suffix.lower() in (*sources.TABLE_SUFFIXES, ".jsonl", ".gz", ".json")
    if os.path.lexists(path) or named_file or not HUB_ID.match(str(source)):
        return _load_path(path, split, max_rows, **reading)
    return _load_hub(str(source), split, max_rows, **reading)


# --------------------------------------------------------------------------- samples

SAMPLE_STRATA = ("lang", "category")  # what a sample is stratified over, where pairs have them
MAX_LEVELS = 12  # without them: meta keys with 2..MAX_LEVELS distinct text values


def strata_keys(pairs: Iterable[PreferencePair]) -> tuple[str, ...]:
    """The meta keys a sample of `pairs` is stratified over.

    lang and category where any pair has them; otherwise the (at most two, by name) meta keys
    that every pair has, with text values, taking 2 to MAX_LEVELS distinct values (a label, not
    an id); none for pairs without such metadata (HH transcripts).
    """
    pairs = list(pairs)
    present = [k for k in SAMPLE_STRATA if any(k in p.meta for p in pairs)]
    if present or not pairs:
        return tuple(present)
    shared = set.intersection(*(set(p.meta) for p in pairs))
    labels = [k for k in sorted(shared)
              if all(isinstance(p.meta[k], str) for p in pairs)
              and 2 <= len({p.meta[k] for p in pairs}) <= MAX_LEVELS]
    return tuple(labels[:2])


def _allocate(sizes: Mapping[Any, int], n: int) -> dict[Any, int]:
    """Sample sizes per stratum, proportional to `sizes` with largest remainders, summing to n
    (≤ Σ sizes); every stratum gets at least one when n allows (taken from the largest)."""
    total = sum(sizes.values())
    quota = {k: n * s / total for k, s in sizes.items()}
    take = {k: math.floor(q) for k, q in quota.items()}
    for k in sorted(quota, key=lambda k: (take[k] - quota[k], str(k)))[: n - sum(take.values())]:
        take[k] += 1
    if n >= len(sizes):
        for k in [k for k in sizes if take[k] == 0]:
            donor = max(take, key=lambda j: (take[j], str(j)))
            take[donor], take[k] = take[donor] - 1, 1
    return take


def sample_pairs(pairs: Sequence[PreferencePair], n: int, *, seed: int = 0,
                 by: Sequence[str] | None = None) -> PairSet:
    """`n` pairs drawn at random without replacement, stratified, seeded; never the first n.

    by: the meta keys of the strata (default `strata_keys(pairs)`: lang × category where
    present). Each stratum gets a share of n proportional to its size (largest remainders;
    at least one pair per stratum when n ≥ the number of strata), drawn with
    random.Random(f"{seed}:{stratum}"). The same pairs and seed give the same sample. Pairs keep
    their order in `pairs`; n ≥ len(pairs) returns them all. What the load skipped stays listed.
    """
    if n < 1:
        raise ValueError(f"sample_pairs: n={n} must be at least 1")
    pairs = load_any(pairs) if not isinstance(pairs, PairSet) else pairs
    if n >= len(pairs):
        return pairs
    keys = tuple(strata_keys(pairs) if by is None else by)
    strata: dict[tuple, list[int]] = {}
    for i, p in enumerate(pairs):
        strata.setdefault(tuple(str(p.meta.get(k)) for k in keys), []).append(i)
    take = _allocate({k: len(v) for k, v in strata.items()}, n)
    chosen = sorted(i for k, members in strata.items()
                    for i in random.Random(f"{seed}:{k}").sample(members, take[k]))
    return PairSet(tuple(pairs[i] for i in chosen), pairs.skipped)


# --------------------------------------------------------------------------- bundled data


def edit_distance(a: str, b: str) -> float:
    """Normalised Levenshtein (edit) distance of two texts over characters, in [0, 1].

    The fewest single-character insertions, deletions and substitutions that turn `a` into `b`,
    divided by the longer text's length (Unicode code points): 0 = identical (also two empty
    texts), 1 = every position must change, as for texts with no character in common ("" vs
    "abc", and also "ab" vs "ba"); "kitten" vs "sitting" = 3/7. Symmetric.
    Computed by rapidfuzz (`Levenshtein.normalized_distance`, in C).

    Not difflib: 1 − SequenceMatcher.ratio() is 1 − 2·M / (len a + len b), M the characters in
    greedily found matching blocks, which is no edit distance (not minimal, not even symmetric:
    "bbca"/"acabba" gives 0.4 one way, 0.6 the other), and it is slow: tens to hundreds of ms a
    pair at 1.5k–4k characters, against under a millisecond here.
    """
    return Levenshtein.normalized_distance(a, b)


def edit_distances(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """`edit_distance` of each a[i] with b[i], float64. Shape: (len(a),).

    rapidfuzz's `process.cpdist` (3.6 and later) does the whole batch in C with the same values
    as `edit_distance`; an older rapidfuzz falls back to one call a pair."""
    a, b = list(a), list(b)
    if hasattr(process, "cpdist"):
        return process.cpdist(a, b, scorer=Levenshtein.normalized_distance, dtype=np.float64)
    return np.array([edit_distance(x, y) for x, y in zip(a, b, strict=True)], dtype=np.float64)


def length_ratio(a, b):
    """The length ratio of two responses: longer / shorter (≥ 1), for numbers or Series.

    The one definition the data card and the diagnostics share; which side is longer is a
    separate question (`len_n − len_p`, or the card's chosen/rejected-over-2× shares).
    """
    return np.maximum(a, b) / np.minimum(a, b)


def pair_facts(pairs: PairSet, split: str) -> pd.DataFrame:
    """What the analysis needs of each pair, so that a run folder holds it (records.PAIRS_FILE)
    and a report never goes back to the data: `PairSet.to_frame()` (pair_id, prompt, chosen,
    rejected, one column per meta key) with split ("train" / "heldout") and `text_facts`."""
    frame = pairs.to_frame()
    if not len(frame):
        return pd.DataFrame(columns=["pair_id", "prompt", "chosen", "rejected", "split",
                                     "len_ratio", "edit_distance"])
    return text_facts(frame).assign(split=split)


def text_facts(pairs: pd.DataFrame) -> pd.DataFrame:
    """`pairs` (pair_id, chosen, rejected, …) with len_ratio, the longer over the shorter
    response in characters (`length_ratio`, ≥ 1), and edit_distance, the normalised Levenshtein
    distance of chosen and rejected (`edit_distance`, computed for all pairs at once)."""
    return pairs.assign(
        len_ratio=length_ratio(pairs.chosen.str.len(), pairs.rejected.str.len()),
        edit_distance=edit_distances(pairs.chosen, pairs.rejected))


def data_dir() -> Path:
    """The bundled data folder, shipped inside the package (`$PREFSTUDY_DATA` overrides it)."""
    env = os.environ.get("PREFSTUDY_DATA")
    return Path(env) if env else bundled("data")


def _string_records(path: Path, name: str) -> pd.DataFrame:
    """JSON Lines objects that each need a string field `name`, as a DataFrame (empty files
    pass): a file, or the *.jsonl / *.jsonl.gz files of a folder."""
    sources.check_path(path, folder_ok=True)
    files = sources.folder_files(path, (".jsonl", ".jsonl.gz"))[0] if path.is_dir() else [path]
    rows = []
    for source, line, record in (item for f in files for item in sources.json_lines(f)):
        if record is EMPTY:
            continue
        if not isinstance(record, Mapping):
            raise DataError(f"{source}:{line}: expected a JSON object, got "
                            f"{type(record).__name__}")
        if not isinstance(record.get(name), str):
            got = type(record[name]).__name__ if name in record else "nothing"
            raise DataError(f"{source}:{line}: field {name!r} must be a string, got {got} "
                            f"(fields present: {sorted(record)})")
        rows.append(dict(record))
    if not rows:
        raise DataError(f"{path}: empty: no records")
    return pd.DataFrame(rows)


def load_texts(path: str | os.PathLike) -> pd.DataFrame:
    """JSONL records with a "text" field (held-out text, filler sentences) as a DataFrame."""
    return _string_records(Path(path), "text")


def load_probes(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Probe prompts for generations (columns prompt, lang, kind); bundled ones by default."""
    return _string_records(Path(path) if path else data_dir() / "probes", "prompt")
