"""Writing to disk so that a kill never leaves half a file, and computing a thing once.

Every file or folder prefstudy keeps (record shards, run metadata, checkpoints, the reference
log-probs and step-0 evaluations every run of a study shares, the de-quantised model) is written
under a unique temporary name in its own folder and renamed into place (`os.replace`, atomic on
one file system). A reader sees the old version or the new one, never part of either, and two
processes writing the same cache never write into each other's file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes a file or folder at `tmp`, a fresh name beside `path`; it then
    replaces `path`. Nothing is left at `tmp` if `write` raises.

    The temporary name is `.<name>.<random>.tmp`: it matches no reader's pattern (`*.parquet`,
    `state.pt`), and `write` creates it itself, so it gets the permissions of any new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
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
    depends on."""
    path = Path(path)
    if path.exists():
        return load(path)
    value = compute()
    write_atomic(path, lambda tmp: save(value, tmp))
    return value


def save_torch(value, path: Path) -> None:
    """`torch.save` through an open file, so the archive inside is named the same whatever the
    temporary file name: equal values give equal bytes."""
    import torch

    with open(path, "wb") as f:
        torch.save(value, f)
