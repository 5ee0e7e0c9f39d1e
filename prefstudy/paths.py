"""Where prefstudy's own files are. Two kinds, found in two places:

- Bundled files, what the package needs at run time: the pairs, held-out sets, neutral text,
  probes and filler (`data/`) and the configs (`configs/`). They ship inside the package: a
  built wheel holds them under `prefstudy/_bundled/` (pyproject.toml maps the folders there); a
  source checkout has them at its root. `bundled("data", "pairs")`.
- The repository, what a clone holds beyond the package: the committed study (`reports/runs`)
  and the notebooks. `in_repo("reports", "runs")` is relative to the folder the user names in
  `$PREFSTUDY_REPO`, else the source checkout this package is imported from, else the working
  directory.

`resolve_path` takes a path as a user or a config writes it (`"data/pairs"`,
`"configs/tiny.toml"`) and finds it in the working directory, then among the bundled files, then
in the repository.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

PACKAGE = Path(str(resources.files("prefstudy")))
SHIPPED = PACKAGE / "_bundled"  # data/ and configs/ inside an installed wheel
# The source checkout the package is imported from (an editable install, a clone on
# PYTHONPATH); None in an installed wheel.
CHECKOUT = PACKAGE.parent if (PACKAGE.parent / "pyproject.toml").is_file() else None
BUNDLED = ("data", "configs")  # the top-level folders that ship inside the package


def bundled(*parts: str) -> Path:
    """A file that ships with the package, e.g. `bundled("configs", "tiny.toml")`."""
    root = SHIPPED if SHIPPED.is_dir() or CHECKOUT is None else CHECKOUT
    return root.joinpath(*parts)


def repo_root() -> Path:
    """The repository: `$PREFSTUDY_REPO`, else the source checkout, else the working directory."""
    env = os.environ.get("PREFSTUDY_REPO")
    return Path(env) if env else CHECKOUT or Path.cwd()


REPO = repo_root()  # the repository as found at import (tests and tooling run in a checkout)


def in_repo(*parts: str) -> Path:
    """A path inside the repository, e.g. `in_repo("reports", "runs")`."""
    return repo_root().joinpath(*parts)


def resolve_path(path: str | os.PathLike | None) -> Path | None:
    """`path` as given if it exists (or is absolute); else the bundled file of that name
    (`data/pairs`, `configs/study.toml`); else the repository's (`reports`); else as given, for
    the caller to report or to read as a hub id."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    candidates = [bundled(*p.parts)] if p.parts and p.parts[0] in BUNDLED else []
    for candidate in (*candidates, in_repo(*p.parts)):
        if candidate.exists():
            return candidate
    return p
