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

`text_rule` says whether a pair's texts may be written to a folder: not into the repository's
reports/ where the pairs are third-party (a user's data, AlpacaEval's annotations), whose text
must never be committed; there only ids and numbers are.
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


# --------------------------------------------------------------------------- third-party text

# A pair's free text. Where the pairs are not the project's own (a user's data, AlpacaEval's
# annotations), what is written into the repository keeps their ids and numbers, never these.
TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def own_data(source) -> bool:
    """Whether `source` is the project's own bundled pairs: None (the default data), or a path
    that resolves (`resolve_path`) to something inside `bundled("data")`; a list or tuple: every
    one of them is. A DataFrame, a PairSet or a hub id is not."""
    if isinstance(source, list | tuple):
        return all(own_data(s) for s in source)
    if source is None:
        return True
    if not isinstance(source, str | os.PathLike):
        return False
    path = resolve_path(source)
    return path.exists() and _inside(path, bundled("data"))


def _committed(out: str | os.PathLike) -> bool:
    """Whether `out` resolves inside the repository's reports/, where the committed study is.
    Only where there is a repository: a source checkout, or one `$PREFSTUDY_REPO` names (an
    installed package's working directory is no repository)."""
    if CHECKOUT is None and not os.environ.get("PREFSTUDY_REPO"):
        return False
    return _inside(out, in_repo("reports"))


def text_rule(out: str | os.PathLike, source, keep_text: bool | None = None) -> dict:
    """Whether the pair texts (TEXT_COLUMNS) of `source` are written to the folder `out`, and
    why, as the written settings record it: {"keep_text": as given, "text_kept": bool,
    "text_kept_why": a short reason}.

    keep_text True / False forces it. None is the default rule (`keeps_text`): dropped where
    `out` is inside the repository's reports/ and the pairs are not the project's own
    (`own_data`); kept everywhere else."""
    if keep_text is not None:
        why = "keep_text=True given" if keep_text else "keep_text=False given: ids and numbers only"
        return {"keep_text": keep_text, "text_kept": bool(keep_text), "text_kept_why": why}
    if not _committed(out):
        kept, why = True, "written outside the repository's reports/"
    elif own_data(source):
        kept, why = True, "the project's own bundled pairs"
    else:
        kept, why = False, ("third-party pairs written into the repository's reports/: ids and "
                            "numbers only")
    return {"keep_text": None, "text_kept": kept, "text_kept_why": why}


def keeps_text(out: str | os.PathLike, source) -> bool:
    """The default rule (`text_rule` with keep_text=None): whether pairs from `source` keep their
    texts in files written to `out`."""
    return text_rule(out, source)["text_kept"]
