"""Where the repository's own files are: the one definition of the repository root.

Bundled data (`data/`), configs (`configs/`) and the committed study runs (`reports/runs/`) are
found relative to it when a path given relative to the working directory does not exist.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def in_repo(*parts: str) -> Path:
    """A path inside the repository, e.g. `in_repo("reports", "runs")`."""
    return REPO.joinpath(*parts)


def resolve_path(path: str | None) -> Path | None:
    """A data path as given if it exists, else relative to the repository root."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    repo = in_repo(str(p))
    return repo if repo.exists() else p
