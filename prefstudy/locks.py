"""One writer per run folder: an exclusive lock file beside it (`.<name>.lock`).

`prefstudy train` holds it while it trains (`held`); the trainers of prefstudy.integrations take
it when they are built and hold it until training ends (`acquire`). Either way the folder is
checked first: a folder that cannot be written, or a lock another process holds, is one RunError
line naming the folder, before anything is loaded or tokenised.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from .records import RunError


def lock_file(folder: Path) -> Path:
    """Where the lock of run folder `folder` lives: beside it, so that deleting the folder
    never deletes a lock that is held."""
    return folder.parent / f".{folder.name}.lock"


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def check_writable(folder: Path, *, create: bool = False) -> None:
    """RunError unless `folder` is (or, with `create`, becomes) a folder this process can write
    into: a path that is a file, or under one, a folder without write permission, or a disk that
    refuses a file are each named."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder}: exists and is not a folder; a run folder cannot be written "
                       "there")
    if not folder.exists() and not create:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # what writing a record needs, tried once
            pass
    except OSError as e:
        raise RunError(f"{folder}: cannot be written ({_reason(e)}); choose another folder"
                       ) from None


def acquire(folder: Path, *, writer: str = "training", hint: str = "choose another run_id"):
    """The run folder's lock, acquired now (a `filelock.FileLock`; release it when done).

    RunError, one line, if the folder is unusable (`check_writable`) or another process holds
    the lock ("another process is <writer> into this run folder; wait for it to end, or
    <hint>")."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    check_writable(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"{folder}: its parent folder cannot be created ({_reason(e)}); choose "
                       "another folder") from None
    try:
        lock = FileLock(lock_file(folder), timeout=0)
        lock.acquire()
    except Timeout:
        raise RunError(f"{folder}: another process is {writer} into this run folder; wait for "
                       f"it to end, or {hint}") from None
    except OSError as e:
        raise RunError(f"{folder}: its lock file {lock_file(folder).name} cannot be written "
                       f"beside it ({_reason(e)}); choose another folder") from None
    return lock


@contextlib.contextmanager
def held(folder: Path, is_main: bool):
    """The run folder's lock, held by the main process for the block (other processes of a
    distributed run write only their own shards and take no lock)."""
    if not is_main:
        yield
        return
    lock = acquire(folder)
    try:
        yield
    finally:
        lock.release()


__all__ = ["acquire", "check_writable", "held", "lock_file"]
