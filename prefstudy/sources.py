"""Where preference records come from: files, folders and URLs, read into raw records.

A file is read by what it holds, not only by its name:

- JSON Lines (`*.jsonl`, or `*.json` whose first character is not `[`): one JSON object per
  line, numbered by line;
- a JSON array (`*.json` starting with `[`, as AlpacaEval's annotations are): one record per
  element, numbered from 1 ("file.json item:3");
- a table: parquet (`*.parquet`, `*.pq`) or CSV (`*.csv`), one record per row, numbered by row
  label ("file.csv row:0");
- any of these gzip-compressed (`*.gz`, or whatever starts with gzip's magic bytes); a file
  with another name is sniffed: parquet's magic bytes, else `[` (a JSON array), else JSON lines.

Text is UTF-8 with or without a byte-order mark. A folder means every file in it whose name
ends in one of PAIR_SUFFIXES, in name order; each of its other entries (a hidden file, a
subfolder, another file, a FIFO, a device, a socket, a broken or looping symbolic link) is not
opened and comes back as a `Skipped` entry with the reason. A path that is not a regular file
or folder is refused before it is opened. An http(s) URL is fetched once into
`<cache>/downloads/` (`models.cache_dir()`) and read from there.

`file_items(path)` yields (source, number, record) for `data`'s loaders: the record is a dict
(a table row without its missing cells) or whatever JSON the line held (the loader refuses what
is not an object), or EMPTY for a file that holds no records. Malformed input (bytes that are
not UTF-8, invalid JSON, a damaged gzip or parquet file) raises `DataError` naming the file and
the line or item.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import stat
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .layouts import DataError

JSON_SUFFIXES = (".jsonl", ".json")
TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
PAIR_SUFFIXES = (*JSON_SUFFIXES, *TABLE_SUFFIXES, *(f"{s}.gz" for s in (*JSON_SUFFIXES, ".csv")))
GZIP_MAGIC, PARQUET_MAGIC = b"\x1f\x8b", b"PAR1"
# The fields that hold text in some layout (`layouts`): an empty CSV cell there is an empty
# answer (skipped as one), elsewhere a missing value.
TEXT_FIELDS = frozenset({"prompt", "chosen", "rejected", "instruction", "input", "output_1",
                         "output_2", "response_a", "response_b", "history", "human_ref_A",
                         "human_ref_B", "completion"})
FETCH_TIMEOUT = 60  # seconds a URL may take to answer


@dataclass(frozen=True)
class Skipped:
    """A record or folder entry left out: where it was, why, and the kind of reason (what a
    load's skips are counted by: "tie", "duplicate", "empty response", …)."""

    source: str
    line: int | None
    reason: str
    kind: str = ""

    @property
    def category(self) -> str:
        """What a load's skips are counted by: the kind, or the reason where none was given."""
        return self.kind or self.reason

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.reason}"


EMPTY = object()  # what `file_items` yields for a file without records
FOLDER_ENTRY = "folder entry"  # the kind of a folder's entry that is not read


# --------------------------------------------------------------------------- paths

_SPECIAL = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))


def not_readable(path: Path, *, folder_ok: bool = False) -> str | None:
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


def check_path(path: Path, *, folder_ok: bool = False) -> None:
    """DataError naming `path` and why it cannot be read (`not_readable`)."""
    why = not_readable(path, folder_ok=folder_ok)
    if why is not None:
        raise DataError(f"{path}: {why}")


def reads(name: str, suffixes: tuple[str, ...]) -> bool:
    return name.lower().endswith(suffixes)


def folder_files(path: Path, suffixes: tuple[str, ...] = PAIR_SUFFIXES
                 ) -> tuple[list[Path], list[Skipped]]:
    """The files of a folder that are read (regular files whose names end in `suffixes`, in name
    order) and a Skipped entry, with its reason, for every other entry: hidden files and folders,
    subfolders, other files, and what is not a regular file (never opened)."""
    files, skipped = [], []
    for entry in sorted(path.iterdir()):
        why = not_readable(entry)
        if entry.name.startswith("."):
            why = f"hidden {'folder' if entry.is_dir() else 'file'}: not read"
        elif why is not None and entry.is_dir():
            why = "a subfolder: not read (load it on its own)"
        elif why is None and not reads(entry.name, suffixes):
            why = f"not read: only {', '.join(f'*{s}' for s in suffixes)} files are"
        elif why is None and reads(entry.name, (".json", ".json.gz")) and kind_of(entry) == "object":
            why = "one JSON object over several lines (metadata?), not records: not read"
        if why is None:
            files.append(entry)
        else:
            skipped.append(Skipped(str(entry), None, why, FOLDER_ENTRY))
    return files, skipped


# --------------------------------------------------------------------------- URLs


def is_url(source: Any) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def fetch(url: str, *, cache: Path | None = None) -> Path:
    """The file at an http(s) URL, downloaded once into `cache` (default
    `<models.cache_dir()>/downloads/`, one folder per URL) and read from there afterwards. The
    download is written under a temporary name and renamed, so an interrupted one is never
    read. DataError naming the URL when it cannot be fetched."""
    from .cache import write_atomic

    if cache is None:
        from .models import cache_dir
        cache = cache_dir() / "downloads"
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    target = cache / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:
            body = answer.read()
    except urllib.error.HTTPError as e:
        raise DataError(f"{url}: could not be fetched (HTTP {e.code}: {e.reason})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e
        raise DataError(f"{url}: could not be fetched ({' '.join(str(why).split())[:200]})"
                        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, lambda tmp: tmp.write_bytes(body))
    return target


# --------------------------------------------------------------------------- one file


def _head(path: Path, n: int = 64) -> bytes:
    """The first `n` bytes of the file, through gzip when it is compressed."""
    with open(path, "rb") as f:
        start = f.read(n)
    if start[:2] != GZIP_MAGIC:
        return start
    try:
        with gzip.open(path, "rb") as f:
            return f.read(n)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: damaged gzip file ({e or 'truncated'})") from None


def kind_of(path: Path) -> str:
    """How a file is read: "parquet", "csv", "array" (a JSON array), "lines" (JSON lines) or
    "object" (one JSON object over several lines: no records), from its name without .gz, else
    from its first bytes."""
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    if TABLE_SUFFIXES.get(suffix):
        return TABLE_SUFFIXES[suffix]
    head = _head(path)
    if suffix not in JSON_SUFFIXES and head.startswith(PARQUET_MAGIC):
        return "parquet"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"["):
        return "array"
    return "object" if text.startswith(b"{") and _one_object(path) else "lines"


def _one_object(path: Path) -> bool:
    """Whether the file holds one JSON object written over several lines (a metadata file, a
    pretty-printed record): not JSON lines, whose objects stand one per line."""
    try:
        with _open(path) as f:
            text = f.read().decode("utf-8-sig")
        return "\n" in text.strip() and isinstance(json.loads(text), dict)
    except (ValueError, RecursionError, OSError, EOFError, zlib.error):
        return False  # JSON lines (or damaged): read line by line, which says where


def _open(path: Path):
    """The file as bytes, through gzip when it starts with gzip's magic bytes."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _decode(raw: bytes, where: str, first: bool) -> str:
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")  # a byte-order mark is accepted
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: bytes that are not UTF-8 at column {e.start + 1} "
                        f"({raw[e.start:e.start + 4]!r})") from None


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON at column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None


@contextlib.contextmanager
def _reading(path: Path):
    """Turns a damaged gzip stream or an OS error while `path` is read into one DataError line."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: damaged gzip file ({e or 'truncated'})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def json_lines(path: Path) -> Iterator[tuple[str, int | None, Any]]:
    """(source, line number, parsed JSON) for each non-blank line; (source, None, EMPTY) for a
    file without any."""
    empty = True
    with _reading(path), _open(path) as f:
        for n, raw in enumerate(f, start=1):
            text = _decode(raw, f"{path}:{n}", first=n == 1)
            if text.strip():
                empty = False
                yield str(path), n, parse_json(text, f"{path}:{n}")
    if empty:
        yield str(path), None, EMPTY


def json_array(path: Path) -> Iterator[tuple[str, int | None, Any]]:
    """(f"{path} item", number from 1, element) for each element of a file holding one JSON
    array; invalid JSON names the line and column where it breaks."""
    with _reading(path), _open(path) as f:
        raw = f.read()
    text = _decode(raw, str(path), first=True)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON at column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(value, list):  # "[" then something that is not an array cannot parse
        raise DataError(f"{path}: expected a JSON array of records")
    if not value:
        yield str(path), None, EMPTY
    for i, record in enumerate(value, start=1):
        yield f"{path} item", i, record


def read_table(path: Path, kind: str) -> pd.DataFrame:
    """A parquet or CSV file as a DataFrame. CSV cells are read as text (an answer "42" stays
    text); an empty cell is a missing value except in the text fields (TEXT_FIELDS), where it
    is an empty answer."""
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError, ImportError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read as {kind} "
                        f"({' '.join(str(e).split())[:200]})") from None
    others = [c for c in frame.columns if c not in TEXT_FIELDS]
    frame[others] = frame[others].replace("", None)
    return frame


def plain(value: Any) -> Any:
    """`value` as JSON-like Python: arrays and tuples → lists, mappings → dicts, numpy scalars
    → Python numbers (what parquet, CSV and `datasets` hand back is not always that)."""
    if isinstance(value, np.ndarray | list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def row_record(row: dict) -> dict:
    """A table or dataset row as a record: JSON-like values, its missing cells left out."""
    return {str(k): plain(v) for k, v in row.items() if not is_missing(plain(v))}


def table_rows(frame: pd.DataFrame, source: str) -> Iterator[tuple[str, Any, dict]]:
    """(f"{source} row", row label, record) for each row of a table."""
    for label, row in zip(frame.index, frame.to_dict(orient="records")):
        yield f"{source} row", label, row_record(row)


def file_items(path: Path) -> Iterator[tuple[str, Any, Any]]:
    """(source, line / item / row number, record) of one file, read as `kind_of` says."""
    kind = kind_of(path)
    if kind == "object":
        raise DataError(f"{path}: one JSON object over several lines, not records: pairs are a "
                        "JSON array of objects, or one object per line")
    if kind == "lines":
        yield from json_lines(path)
    elif kind == "array":
        yield from json_array(path)
    else:
        frame = read_table(path, kind)
        if not len(frame):
            yield str(path), None, EMPTY
        yield from table_rows(frame, str(path))
