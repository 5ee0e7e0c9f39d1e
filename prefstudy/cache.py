"""Writing to disk so that a kill never leaves half a file, and computing a thing once.

Every file or folder prefstudy keeps (record shards, run metadata, checkpoints, the reference
log-probs and step-0 evaluations every run of a study shares, the de-quantised model) is written
under a unique temporary name in its own folder and renamed into place (`os.replace`, atomic on
one file system). A reader sees the old version or the new one, never part of either, and two
processes writing the same cache never write into each other's file. A write that fails (a full
disk, a file-size limit, no permission) leaves nothing behind and raises a `WriteError` naming
the file and the operating system's reason, whatever the serializer raised.

A cache entry carries the key it was computed for (prefstudy.fingerprint: the model's content,
the data's content, the settings) and is read back only as data: tensors through
`torch.load(weights_only=True)`, tables as parquet, nothing unpickled. An entry that cannot be
read, or that was made for another key, is computed again, with a `CacheWarning` naming it.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import PrefstudyError

T = TypeVar("T")


class WriteError(PrefstudyError, OSError):
    """A file or folder could not be written; the message names it and the reason. An OSError
    too, so that code catching the operating system's error still catches it."""


class CacheWarning(UserWarning):
    """A cache entry could not be used (unreadable, damaged, or made for another key) and was
    computed again."""


def failure_reason(error: BaseException) -> str:
    """The operating system's reason behind a failed write, where the serializer hid it
    (torch.save raises a RuntimeError whose context is the OSError), else the error's text."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(error).split())[:300]
    if isinstance(error, OSError | ForeignEntry) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _replace(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`; a folder already at `path` is moved aside first and removed
    after (`os.replace` cannot replace a folder that has files)."""
    if not (tmp.is_dir() and path.is_dir()):
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except OSError:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes a file or folder at `tmp`, a fresh name beside `path`; it then
    replaces `path`. Nothing is left at `tmp` if `write` raises; a failure to write (an OSError,
    or the RuntimeError torch.save raises for one) is a WriteError naming `path` and the reason.

    The temporary name is `.<name>.<random>.tmp`: it matches no reader's pattern (`*.parquet`,
    `state.pt`), and `write` creates it itself, so it gets the permissions of any new file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        _replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise WriteError(f"{path}: could not be written: {failure_reason(e)}") from e
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return path


def cached(path: str | os.PathLike, compute: Callable[[], T], *,
           save: Callable[[T, Path], object], load: Callable[[Path], T]) -> T:
    """`load(path)` if the cache file exists, else `compute()`, saved there with `save(value, p)`
    (through `write_atomic`). The caller's file name carries the key: everything the value
    depends on. An entry `load` cannot read or refuses (any exception: damaged, foreign, made
    for another key) is computed again and replaced, with a CacheWarning naming the file."""
    path = Path(path)
    if path.exists():
        try:
            return load(path)
        except Exception as e:  # noqa: BLE001 - any unusable entry is recomputed, and said so
            warnings.warn(f"{path}: cache entry not usable ({failure_reason(e)}); computing it "
                          "again", CacheWarning, stacklevel=2)
    value = compute()
    write_atomic(path, lambda tmp: save(value, tmp))
    return value


class ForeignEntry(ValueError):
    """A cache entry made for another key, or not by prefstudy."""


# --------------------------------------------------------------------------- entry formats


def save_torch(value, path: Path) -> None:
    """`torch.save` through an open file, so the archive inside is named the same whatever the
    temporary file name: equal values give equal bytes."""
    import torch

    with open(path, "wb") as f:
        torch.save(value, f)


def save_torch_entry(value: Any, path: Path, key: str) -> None:
    """`value` (tensors in dicts, lists and tuples) saved with the key it was computed for."""
    save_torch({"prefstudy_cache_key": key, "value": value}, path)


def load_torch_entry(path: Path, key: str) -> Any:
    """What `save_torch_entry` saved for `key`: read as data only (`weights_only`); ForeignEntry
    for an entry made for another key or not by prefstudy."""
    import torch

    entry = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(entry, dict) or entry.get("prefstudy_cache_key") != key:
        raise ForeignEntry("made for another key, or not by prefstudy")
    return entry["value"]


KEY_METADATA = b"prefstudy_cache_key"


def save_frame_entry(df, path: Path, key: str) -> None:
    """A DataFrame as parquet, with the key it was computed for in the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), KEY_METADATA:
                                           key.encode()})
    pq.write_table(table, path)


def load_frame_entry(path: Path, key: str):
    """What `save_frame_entry` saved for `key`; ForeignEntry for another key's entry."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if (table.schema.metadata or {}).get(KEY_METADATA) != key.encode():
        raise ForeignEntry("made for another key, or not by prefstudy")
    return table.to_pandas()
