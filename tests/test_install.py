"""prefstudy installed from its built wheel, run outside the repository: it finds its own data and
configs inside the package, and the repository's files relative to the folder the user names.

The wheel is built once per session from a copy of the source (no build isolation, no index), and
installed with `pip install --no-deps --target` into a temporary folder; every check runs in a
fresh Python whose working directory is elsewhere and whose path holds that folder, not the source
tree.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from prefstudy.paths import BUNDLED, CHECKOUT

pytestmark = pytest.mark.skipif(CHECKOUT is None, reason="needs the source checkout to build")
SOURCES = ("prefstudy", *BUNDLED, "pyproject.toml", "README.md")


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (setuptools writes build/ beside them)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in SOURCES:
        path = CHECKOUT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"),
         str(source), cwd=root)
    (found,) = (root / "dist").glob("prefstudy-*.whl")
    return found


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory) -> Path:
    """A folder holding the installed wheel (the package and its console script)."""
    site = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=site)
    return site


def _bundled_files() -> list[str]:
    return sorted(p.relative_to(CHECKOUT).as_posix() for name in BUNDLED
                  for p in (CHECKOUT / name).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def test_the_wheel_holds_every_data_and_config_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in _bundled_files() if f"prefstudy/_bundled/{f}" not in names]
    assert not missing, f"pyproject.toml's package-data leaves out {missing}"


CHECKS = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import prefstudy
    from prefstudy import cli, paths
    from prefstudy.config import load_config
    from prefstudy.data import data_dir, load_pairs, load_texts
    from prefstudy.study import DEFAULT_STUDY, load_study

    tiny = load_config(paths.resolve_path("configs/tiny.toml"))
    study = load_study(paths.resolve_path(DEFAULT_STUDY), profile="tiny", output="runs/x")
    assert cli.main(["objectives"]) == 0
    assert cli.main(["data", "stats"]) == 0
    print(json.dumps({
        "package": prefstudy.__file__,
        "checkout": str(paths.CHECKOUT),
        "tiny_data": str(paths.resolve_path(tiny.data)),
        "pairs": len(load_pairs(paths.resolve_path(tiny.data)).pairs),
        "study_heldout": str(paths.resolve_path(study.shared["heldout"])),
        "filler": len(load_texts(data_dir() / "filler")),
        "committed_runs": str(paths.in_repo("reports", "runs")),
        "hub_id_left_alone": str(paths.resolve_path("org/some-dataset")),
    }))
""")


def _run_installed(site: Path, cwd: Path, code: str = CHECKS, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("PREFSTUDY_") and k != "PYTHONPATH"}
    environment.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1", **env)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_the_installed_wheel_finds_its_data_and_configs_outside_the_repository(
        installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _run_installed(installed, elsewhere)
    assert "dpo" in out and "Pairs by split" in out  # `objectives`, `data stats`
    found = json.loads(out.strip().splitlines()[-1])
    shipped = installed / "prefstudy" / "_bundled"
    assert Path(found["package"]).is_relative_to(installed)  # not the source tree
    assert found["checkout"] == "None"
    assert found["tiny_data"] == str(shipped / "data" / "pairs")  # not read as a hub id
    assert found["pairs"] > 0 and found["filler"] > 0
    assert found["study_heldout"] == str(shipped / "data" / "heldout")
    assert found["committed_runs"] == str(elsewhere / "reports" / "runs")  # the working folder
    assert found["hub_id_left_alone"] == "org/some-dataset"


def test_the_repository_is_the_folder_the_user_names(installed, tmp_path):
    code = "from prefstudy import paths; print(paths.in_repo('reports', 'runs'))"
    out = _run_installed(installed, tmp_path, code, PREFSTUDY_REPO=str(tmp_path / "clone"))
    assert out.strip() == str(tmp_path / "clone" / "reports" / "runs")


def test_the_constraints_are_the_versions_these_tests_run_with():
    """constraints.txt pins what this environment holds, every dependency included: after an
    upgrade that passes the tests, `make constraints` records it."""
    spec = importlib.util.spec_from_file_location("constraints", CHECKOUT / ".ci" / "constraints.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    written = (CHECKOUT / "constraints.txt").read_text().splitlines()
    here = script.render().splitlines()
    assert written == here, (f"constraints.txt differs from this environment: "
                             f"{sorted(set(written) ^ set(here))}; `make constraints` rewrites it")
