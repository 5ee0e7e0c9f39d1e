"""Preference pairs: the `PreferencePair` type and the loaders that build it.

Formats read (one JSON object per line, in UTF-8 with or without a byte-order mark, plain or
gzip-compressed; or one record per row of a parquet or CSV table):

- plain:          {"prompt": str, "chosen": str, "rejected": str, "meta"?: {...}}
- conversational: {"prompt"?: [msg], "chosen": [msg], "rejected": [msg]}, msg = {"role", "content"};
                  without "prompt" (or with "prompt" as text, as UltraFeedback-binarized has
                  it), the messages the two sides share are the prompt; a text prompt with
                  one-message sides is the user turn
- Anthropic-HH:   {"chosen": str, "rejected": str} full transcripts with "\\n\\nHuman:" and
                  "\\n\\nAssistant:" turns; everything up to the last assistant turn is the prompt
- a pandas DataFrame with those columns, one record per row (a `meta` column of mappings or of
  JSON objects as text, and every other column, become meta), and through it parquet and CSV
  files and Hugging Face `datasets` (a Dataset, an IterableDataset read up to a bound, a
  `save_to_disk` folder, a hub id): `load_any` reads every one of these

A folder means every `*.jsonl`, `*.jsonl.gz`, `*.parquet`, `*.pq` and `*.csv` file in it, in name
order; each of its other entries (a hidden file, a subfolder, another file, a FIFO, a device, a
socket, a broken or looping symbolic link) is not opened and is listed in `PairSet.skipped` with
the reason. A path that is not a regular file or folder is refused before it is opened.

A record that is malformed (invalid JSON, JSON nested too deeply to read, a missing or
non-string field, bytes that are not UTF-8) raises `DataError` naming the file, the line and the
field; so does a path that holds no records at all. A record that parses but cannot serve (an
empty response, an HH transcript without an assistant turn or whose two sides do not share a
prompt, text with a lone surrogate escape that no encoder can write, chosen identical to rejected,
a duplicate) and an empty file in a folder are skipped, counted in `PairSet.skipped` with their
line, and announced in one `SkippedPairsWarning` (with the folder entries not read);
`strict=True` raises instead (a folder's other entries are still only listed).
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import itertools
import json
import math
import os
import random
import re
import stat
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import PrefstudyError
from .paths import bundled

ROLES = ("system", "user", "assistant")
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"

Message = Mapping[str, str]
Prompt = str | tuple[Message, ...]


class DataError(PrefstudyError):
    """A record that cannot be read; the message names the source, the line and the field."""


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
    meta:     free-form labels, e.g. {"lang": "zh", "category": "empathy"}.
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
class Skipped:
    """A record left out: where it was and why."""

    source: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class PairSet(Sequence[PreferencePair]):
    """The pairs a loader produced, and the records it skipped (with their lines)."""

    pairs: tuple[PreferencePair, ...]
    skipped: tuple[Skipped, ...] = ()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        if isinstance(i, slice):  # a sample of the pairs; what the load skipped stays listed
            return PairSet(self.pairs[i], self.skipped)
        return self.pairs[i]

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self.pairs)

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
        return PairSet(tuple(keep), self.skipped)


# --------------------------------------------------------------------------- record parsing


def _field(record: Mapping, name: str, where: str, kinds=(str,)) -> Any:
    if name not in record:
        raise DataError(f"{where}: missing field {name!r} (fields present: {sorted(record)})")
    value = record[name]
    if not isinstance(value, kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: field {name!r} must be {wanted}, got {type(value).__name__}")
    return value


def _messages(value: list, name: str, where: str) -> tuple[dict[str, str], ...]:
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: {name}[{i}] must be a {{'role', 'content'}} message "
                            f"with string content, got {m!r:.80}")
        if m.get("role") not in ROLES:
            raise DataError(f"{where}: {name}[{i}] has role {m.get('role')!r}; allowed: {ROLES}")
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


class UnusableRecord(Exception):
    """A record that parsed but cannot serve as a pair (skipped unless strict)."""


def _last_reply(messages: tuple[dict[str, str], ...], name: str) -> str:
    if not messages or messages[-1]["role"] != "assistant":
        raise UnusableRecord(f"{name} does not end with an assistant message")
    return messages[-1]["content"]


def _from_messages(record: Mapping, where: str) -> tuple[Prompt, str, str]:
    chosen = _messages(_field(record, "chosen", where, (list,)), "chosen", where)
    rejected = _messages(_field(record, "rejected", where, (list,)), "rejected", where)
    if isinstance(record.get("prompt"), list):
        prompt = _messages(_field(record, "prompt", where, (list,)), "prompt", where)
    else:  # implicit prompt: the messages both sides share, before their final replies
        prompt, shared = chosen[:-1], rejected[:-1]
        if prompt != shared:
            raise UnusableRecord("chosen and rejected conversations do not share a prompt")
        if not prompt and isinstance(record.get("prompt"), str):  # prompt text + replies
            prompt = ({"role": "user", "content": record["prompt"]},)
    if not prompt:
        raise UnusableRecord("empty prompt")
    return prompt, _last_reply(chosen, "chosen"), _last_reply(rejected, "rejected")


def _hh_turns(transcript: str) -> tuple[dict[str, str], ...]:
    turns, text = [], transcript
    marks = {HH_HUMAN: "user", HH_ASSISTANT: "assistant"}
    while text:
        starts = {m: text.find(m) for m in marks if text.find(m) >= 0}
        if not starts:
            break
        mark = min(starts, key=starts.get)
        text = text[starts[mark] + len(mark):]
        nxt = [text.find(m) for m in marks if text.find(m) >= 0]
        end = min(nxt) if nxt else len(text)
        turns.append({"role": marks[mark], "content": text[:end].strip()})
        text = text[end:]
    return tuple(turns)


def _from_hh(record: Mapping, where: str) -> tuple[Prompt, str, str]:
    chosen = _field(record, "chosen", where)
    rejected = _field(record, "rejected", where)
    cut_c, cut_r = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        raise UnusableRecord("an HH transcript has no '\\n\\nAssistant:' turn")
    head = len(HH_ASSISTANT)
    if chosen[: cut_c + head] != rejected[: cut_r + head]:
        raise UnusableRecord("chosen and rejected HH transcripts do not share a prompt")
    prompt = _hh_turns(chosen[:cut_c])
    if not prompt:
        raise UnusableRecord("HH transcript has no human turn before the last assistant turn")
    return prompt, chosen[cut_c + head:].strip(), rejected[cut_r + head:].strip()


def _from_plain(record: Mapping, where: str) -> tuple[Prompt, str, str]:
    return (_field(record, "prompt", where), _field(record, "chosen", where),
            _field(record, "rejected", where))


def _detect(record: Mapping) -> str:
    if isinstance(record.get("chosen"), list):
        return "messages"
    sides = f"{record.get('chosen', '')}{record.get('rejected', '')}"
    if "prompt" not in record and (HH_ASSISTANT in sides or HH_HUMAN in sides):
        return "hh"
    return "plain"


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
                                 "valid Unicode text") from None


PARSERS = {"plain": _from_plain, "messages": _from_messages, "hh": _from_hh}


def _meta(value: Any, where: str) -> dict:
    """A record's meta as a dict: a mapping, a JSON object written as text (as a CSV cell holds
    it), or a list of (key, value) pairs (a parquet map column); {} where it is missing.
    DataError for anything else. Blank text is no meta, as a missing value is."""
    if _is_missing(value) or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise DataError(f"{where}: field 'meta' must be a JSON object, got text that is not "
                            f"JSON: {value!r:.80}") from None
    elif isinstance(value, list) and all(isinstance(kv, list | tuple) and len(kv) == 2
                                         for kv in value):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise DataError(f"{where}: field 'meta' must be an object, got {type(value).__name__}")
    return dict(value)


def parse_record(record: Any, where: str, fmt: str = "auto") -> PreferencePair:
    """One JSON record → a pair. Raises DataError (malformed) or UnusableRecord (skippable)."""
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    fmt = _detect(record) if fmt == "auto" else fmt
    prompt, chosen, rejected = PARSERS[fmt](record, where)
    meta = _meta(record.get("meta"), where)
    if not chosen.strip() or not rejected.strip():
        raise UnusableRecord(f"empty {'chosen' if not chosen.strip() else 'rejected'} response")
    if isinstance(prompt, str) and not prompt.strip():
        raise UnusableRecord("empty prompt")
    if chosen == rejected:
        raise UnusableRecord("chosen is identical to rejected")
    _check_encodable(prompt, chosen, rejected, meta)
    return PreferencePair(prompt, chosen, rejected, dict(meta))


# --------------------------------------------------------------------------- loaders


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
PAIR_SUFFIXES = (*JSONL_SUFFIXES, *TABLE_SUFFIXES)  # the files a folder of pairs is read from
GZIP_MAGIC = b"\x1f\x8b"


_SPECIAL = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))


def _not_readable(path: Path, *, folder_ok: bool = False) -> str | None:
    """Why `path` cannot be read as a file (None if it can), found without opening it: missing,
    a dangling symbolic link or a loop of them, a folder (unless `folder_ok`), a FIFO, a device
    or a socket (which would block or never end)."""
    try:
        mode = path.stat().st_mode  # follows symbolic links
    except FileNotFoundError:
        if path.is_symlink():
            return f"a symbolic link to {os.readlink(path)}, which does not exist"
        return "no such file or folder"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a loop of symbolic links that never reaches a file"
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return None
    kind = next((name for test, name in _SPECIAL if test(mode)), "not a regular file")
    return f"{kind}, not a regular file: refused before opening"


def _check_path(path: Path, *, folder_ok: bool = False) -> None:
    """DataError naming `path` and why it cannot be read (`_not_readable`)."""
    why = _not_readable(path, folder_ok=folder_ok)
    if why is not None:
        raise DataError(f"{path}: {why}")


def _reads(name: str, suffixes: tuple[str, ...]) -> bool:
    return name.lower().endswith(suffixes)


def _folder(path: Path, suffixes: tuple[str, ...]) -> tuple[list[Path], list[Skipped]]:
    """The files of a folder that are read (regular files whose names end in `suffixes`, in name
    order) and a Skipped entry, with its reason, for every other entry: hidden files and folders,
    subfolders, other files, and what is not a regular file (never opened)."""
    files, skipped = [], []
    for entry in sorted(path.iterdir()):
        why = _not_readable(entry)
        if entry.name.startswith("."):
            why = f"hidden {'folder' if entry.is_dir() else 'file'}: not read"
        elif why is not None and entry.is_dir():
            why = "a subfolder: not read (load it on its own)"
        elif why is None and not _reads(entry.name, suffixes):
            why = f"not read: only {', '.join(f'*{s}' for s in suffixes)} files are"
        if why is None:
            files.append(entry)
        else:
            skipped.append(Skipped(str(entry), None, why))
    return files, skipped


def _jsonl_files(path: Path) -> list[Path]:
    """The JSONL files at `path` (a file, or the JSONL files of a folder); the special files
    and loops `_not_readable` names are refused before they are opened."""
    _check_path(path, folder_ok=True)
    if path.is_dir():
        files, _ = _folder(path, JSONL_SUFFIXES)
        if not files:
            raise DataError(f"{path}: folder holds no *.jsonl or *.jsonl.gz file")
        return files
    return [path]


def _open_lines(path: Path):
    """The file's lines as bytes, through gzip when it starts with gzip's magic bytes."""
    import gzip

    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _decode(raw: bytes, where: str, first: bool) -> str:
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")  # a byte-order mark is accepted
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: bytes that are not UTF-8 at column {e.start + 1} "
                        f"({raw[e.start:e.start + 4]!r})") from None


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON at column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None


def _records(path: Path) -> Iterator[tuple[str, int | None, Any]]:
    """(source, line number, parsed JSON) for each non-blank line; (source, None, EMPTY) for a
    file without any."""
    import gzip
    import zlib

    empty = True
    try:
        with _open_lines(path) as f:
            for n, raw in enumerate(f, start=1):
                text = _decode(raw, f"{path}:{n}", first=n == 1)
                if text.strip():
                    empty = False
                    yield str(path), n, _parse_json(text, f"{path}:{n}")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: damaged gzip file ({e or 'truncated'})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if empty:
        yield str(path), None, EMPTY


EMPTY = object()  # what `_records` yields for a file without records


def _collect(items: Iterable[tuple[str, int | None, Any]], fmt: str, strict: bool) -> PairSet:
    """The pairs of (source, line, record) items; a `Skipped` item (a file a folder listing did
    not read) is listed as it is, whatever `strict`."""
    pairs, skipped, seen = [], [], {}
    for source, line, record in items:
        if isinstance(record, Skipped):
            skipped.append(record)
            continue
        where = f"{source}:{line}" if line is not None else source
        try:
            if record is EMPTY:
                raise UnusableRecord("empty file: no records")
            pair = parse_record(record, where, fmt)
            if pair.pair_id in seen:
                raise UnusableRecord(f"duplicate of {seen[pair.pair_id]}")
        except UnusableRecord as e:
            if strict:
                raise DataError(f"{where}: {e}") from None
            skipped.append(Skipped(source, line, str(e)))
            continue
        seen[pair.pair_id] = where
        pairs.append(pair)
    return PairSet(tuple(pairs), tuple(skipped))


def _announce(pairs: PairSet) -> PairSet:
    """One SkippedPairsWarning listing what a load skipped (the first ten, and a count)."""
    skipped = pairs.skipped
    if skipped:
        records = sum(s.line is not None for s in skipped)  # the others: a folder's entries
        entries = len(skipped) - records
        counts = ([f"{records} of {records + len(pairs)} records"] if records else []) + (
            [f"{entries} folder entr{'ies' if entries > 1 else 'y'}"] if entries else [])
        shown = "; ".join(str(s) for s in skipped[:10])
        more = f" (and {len(skipped) - 10} more)" if len(skipped) > 10 else ""
        warnings.warn(f"skipped {' and '.join(counts)}: {shown}{more}", SkippedPairsWarning,
                      stacklevel=3)
    return pairs


def load_pairs(path: str | os.PathLike, *, format: str = "auto", strict: bool = False) -> PairSet:
    """Load preference pairs from a file or a folder of them.

    path: a JSONL (or .jsonl.gz) file, a .parquet / .pq or .csv table (read as `pairs_from_frame`
    reads a DataFrame), or a folder: every such file in it, in name order. Every other entry of
    the folder (hidden files, subfolders, other files, FIFOs, devices, sockets, broken links) is
    not opened and is listed in `PairSet.skipped` with the reason, as an empty file is. A path
    that is not a regular file or folder is refused before it is opened.
    format: "auto" (detect per record), "plain", "messages" or "hh", for every record read.
    strict: raise on records that parse but cannot serve, instead of skipping them.
    Returns a PairSet of PreferencePair(prompt, chosen, rejected, meta) in file and line order.
    """
    if format != "auto" and format not in PARSERS:
        raise ValueError(f"format={format!r}; allowed: 'auto', {', '.join(map(repr, PARSERS))}")
    path = Path(path)
    _check_path(path, folder_ok=True)
    files, not_read = _folder(path, PAIR_SUFFIXES) if path.is_dir() else ([path], [])
    if not files:
        names = ", ".join(Path(s.source).name for s in not_read[:10]) or "nothing"
        raise DataError(f"{path}: folder holds no pairs file ({', '.join(PAIR_SUFFIXES)}); "
                        f"it holds {names}")
    items = itertools.chain(((s.source, None, s) for s in not_read),
                            (item for f in files for item in _file_items(f)))
    pairs = _collect(items, format, strict)
    if not pairs and all(s.line is None for s in pairs.skipped):  # no record anywhere
        raise DataError(f"{path}: empty: no records")
    return _announce(pairs)


def _file_items(path: Path) -> Iterator[tuple[str, Any, Any]]:
    """(source, line or row, record) of one file: a table's rows, else a JSONL file's lines."""
    if not _reads(path.name, tuple(TABLE_SUFFIXES)):
        yield from _records(path)
        return
    frame = _read_table(path)
    _check_columns(frame.columns, str(path))
    if not len(frame):
        yield str(path), None, EMPTY
    yield from _row_items(((label, row.to_dict()) for label, row in frame.iterrows()), str(path))


def _check_columns(columns, source: str) -> None:
    missing = [c for c in ("chosen", "rejected") if c not in columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; columns present: "
                        f"{list(columns)}")


def pairs_from_frame(df: pd.DataFrame, *, strict: bool = False, source: str = "DataFrame") -> PairSet:
    """Pairs from a DataFrame, one record per row in any format `load_pairs` reads.

    Columns: prompt / chosen / rejected (prompt may be absent for HH transcripts and for
    conversations whose prompt is the messages both sides share). Responses may be strings or
    lists of {"role", "content"} messages, as parquet and `datasets` store them (arrays become
    lists). A `meta` column of mappings and every other column become meta; missing values
    (None, NaN) are left out. Rows are reported by their index label.
    """
    _check_columns(df.columns, source)
    rows = ((label, row.to_dict()) for label, row in df.iterrows())
    return _announce(_collect(_row_items(rows, source), "auto", strict))


def _plain(value: Any) -> Any:
    """`value` as JSON-like Python: arrays and tuples → lists, mappings → dicts, numpy scalars
    → Python numbers (what parquet, CSV and `datasets` hand back is not always that)."""
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _row_items(rows: Iterable[tuple[Any, Mapping]], source: str
               ) -> Iterator[tuple[str, Any, dict]]:
    """(source, row label, record) for `_collect` from (label, {column: value}) rows: the text
    columns as they are, meta = the row's `meta` (`_meta`: a mapping, or a JSON object as text)
    plus its other columns, missing values (None, NaN, pandas NA) left out."""
    for label, row in rows:
        record = {k: _plain(row[k]) for k in ("prompt", "chosen", "rejected")
                  if k in row and not _is_missing(row[k])}
        meta = _meta(_plain(row.get("meta")), f"{source} row:{label}")
        meta.update({c: _plain(v) for c, v in row.items()
                     if c not in ("prompt", "chosen", "rejected", "meta", "pair_id")})
        record["meta"] = {k: v for k, v in meta.items() if not _is_missing(v)}
        yield f"{source} row", label, record


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


# --------------------------------------------------------------------------- any source

SAVED_DATASET = ("dataset_info.json", "state.json", "dataset_dict.json")  # save_to_disk's files


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
                       source: str = "Dataset", max_rows: int | None = None) -> PairSet:
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
    dataset = _one_split(dataset, split, source)
    if isinstance(dataset, _datasets().IterableDataset):
        rows, columns = _stream(dataset, source, max_rows)
    else:
        rows, columns = enumerate(itertools.islice(dataset, max_rows)), dataset.column_names
    _check_columns(columns, source)
    return _announce(_collect(_row_items(rows, source), "auto", strict))


def _stream(dataset, source: str, max_rows: int | None) -> tuple[list, list[str]]:
    """The (row number, row) of an IterableDataset up to the bound `pairs_from_dataset` states,
    and its columns (from its features, or its first row where they are unknown)."""
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
    return rows, list(dataset.column_names or rows[0][1])


def _read_table(path: Path) -> pd.DataFrame:
    """A parquet or CSV file as a DataFrame; CSV cells are text, and an empty cell outside the
    text columns is a missing value (so it does not become meta)."""
    try:
        if TABLE_SUFFIXES[path.suffix.lower()] == "parquet":
            return pd.read_parquet(path)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, ImportError) as e:
        raise DataError(f"{path}: cannot be read as {path.suffix.lstrip('.')} "
                        f"({' '.join(str(e).split())[:200]})") from None
    others = [c for c in frame.columns if c not in ("prompt", "chosen", "rejected")]
    frame[others] = frame[others].replace("", None)
    return frame


def _load_path(path: Path, split: str | None, format: str, strict: bool,
               max_rows: int | None) -> PairSet:
    _check_path(path, folder_ok=True)
    if path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET):
        datasets = _datasets()
        try:
            saved = datasets.load_from_disk(str(path))
        except Exception as e:  # a damaged or foreign save_to_disk folder: one line
            raise DataError(f"{path}: a saved dataset (save_to_disk) that cannot be read "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        return pairs_from_dataset(saved, split=split, strict=strict, source=str(path),
                                  max_rows=max_rows)
    return load_pairs(path, format=format, strict=strict)


def _load_hub(name: str, split: str | None, strict: bool, max_rows: int | None) -> PairSet:
    datasets = _datasets()
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown id, no such split: one line that says which
        raise DataError(f"{name}: no such file or folder, and the Hugging Face hub dataset "
                        f"could not be loaded ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None
    return pairs_from_dataset(loaded, split=split, strict=strict, source=name, max_rows=max_rows)


def _unique(pairs: Sequence[PreferencePair]) -> PairSet:
    """The pairs, a repeat of an earlier pair (same pair_id) skipped as a load skips it."""
    kept, skipped, seen = [], [], {}
    for i, pair in enumerate(pairs):
        if pair.pair_id in seen:
            skipped.append(Skipped("pairs", i, f"duplicate of pairs:{seen[pair.pair_id]}"))
            continue
        seen[pair.pair_id] = i
        kept.append(pair)
    return PairSet(tuple(kept), tuple(skipped))


HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # "name" or "owner/name"


ACCEPTED = ("a path, a PairSet, a list of PreferencePair, a pandas DataFrame, or a `datasets` "
            "Dataset, DatasetDict, IterableDataset or IterableDatasetDict")


def load_any(source, *, split: str | None = None, format: str = "auto",
             strict: bool = False, max_rows: int | None = None) -> PairSet:
    """Preference pairs from whatever holds them; one entry point for every format.

    source: a PairSet (returned as it is) or list of PreferencePair (repeats skipped, as a load
    skips them); a pandas DataFrame (`pairs_from_frame`); a `datasets` Dataset, DatasetDict,
    IterableDataset or IterableDatasetDict (`pairs_from_dataset`: a stream is read up to a
    bound); or a path (`load_pairs`): a JSONL / .jsonl.gz, .parquet or .csv file, a folder of
    them (every other entry listed as skipped), or a folder written by `Dataset.save_to_disk` /
    `DatasetDict.save_to_disk`. A string that is no path here but looks like "owner/name" is
    loaded from the Hugging Face hub (`datasets.load_dataset`, which needs a network or a cached
    copy). Anything else is a TypeError; a path that is not a regular file or folder (a FIFO, a
    device, a socket, a loop of symbolic links) a DataError, before it is opened.
    split: the split of a DatasetDict or hub dataset (default: the only one there is).
    format, strict: as for `load_pairs`. max_rows: as for `pairs_from_dataset` (datasets only).
    Reading a dataset needs the optional `datasets` package (`pip install 'prefstudy[audit]'`).
    """
    if isinstance(source, PairSet):
        return source
    if isinstance(source, list | tuple) and all(isinstance(p, PreferencePair) for p in source):
        return _announce(_unique(source))
    if isinstance(source, pd.DataFrame):
        return pairs_from_frame(source, strict=strict)
    if _is_dataset(source):
        return pairs_from_dataset(source, split=split, strict=strict, max_rows=max_rows)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"load_any: cannot read pairs from a {type(source).__name__}; it "
                        f"reads {ACCEPTED}")
    path = Path(source)
    named_file = path.suffix.lower() in (*TABLE_SUFFIXES, ".jsonl", ".gz", ".json")
    if os.path.lexists(path) or named_file or not HUB_ID.match(str(source)):
        return _load_path(path, split, format, strict, max_rows)
    return _load_hub(str(source), split, strict, max_rows)


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
    """Normalised character-level edit distance in [0, 1]: 1 − difflib's similarity ratio.

    difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() is 2·M / (len a + len b), M the
    characters in matching blocks; 0 = identical, 1 = nothing in common. autojunk is off: its
    heuristic treats frequent characters of texts over 200 characters as junk, which would make
    the distance of long texts depend on their letter frequencies.
    """
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


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
    response in characters (`length_ratio`, ≥ 1), and edit_distance (chosen vs rejected,
    `edit_distance`)."""
    return pairs.assign(
        len_ratio=length_ratio(pairs.chosen.str.len(), pairs.rejected.str.len()),
        edit_distance=[edit_distance(a, b) for a, b in zip(pairs.chosen, pairs.rejected)])


def data_dir() -> Path:
    """The bundled data folder, shipped inside the package (`$PREFSTUDY_DATA` overrides it)."""
    env = os.environ.get("PREFSTUDY_DATA")
    return Path(env) if env else bundled("data")


def _string_records(path: Path, name: str) -> pd.DataFrame:
    """JSONL objects that each need a string field `name`, as a DataFrame (empty files pass)."""
    rows = []
    for f in _jsonl_files(path):
        for source, line, record in _records(f):
            if record is EMPTY:
                continue
            where = f"{source}:{line}"
            if not isinstance(record, Mapping):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            rows.append({**record, name: _field(record, name, where)})
    if not rows:
        raise DataError(f"{path}: empty: no records")
    return pd.DataFrame(rows)


def load_texts(path: str | os.PathLike) -> pd.DataFrame:
    """JSONL records with a "text" field (held-out text, filler sentences) as a DataFrame."""
    return _string_records(Path(path), "text")


def load_probes(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Probe prompts for generations (columns prompt, lang, kind); bundled ones by default."""
    return _string_records(Path(path) if path else data_dir() / "probes", "prompt")
