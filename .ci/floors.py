"""The declared floors of the key libraries, as pip constraints (``name==floor``).

pyproject.toml is where they are declared; requirements.txt (what the Space installs: the
serving half) must give the ones it names the same floor, or this exits with the difference. ``--check-installed``
checks that the running environment holds exactly those releases."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY = ("transformers", "gradio", "datasets", "accelerate", "huggingface_hub", "ctranslate2", "faster-whisper")
FLOOR = re.compile(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][A-Za-z0-9.]*)")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        match = FLOOR.match(line)
        if match and _canon(match.group(1)) in {_canon(k) for k in KEY}:
            found[_canon(match.group(1))] = match.group(2)
    return found


def main(argv: list[str]) -> int:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = floors([*project["dependencies"], *sum(project["optional-dependencies"].values(), [])])
    missing = [k for k in KEY if _canon(k) not in declared]
    required = floors((REPO / "requirements.txt").read_text().splitlines())
    # requirements.txt is the Space's light install: it names some of the key libraries, at their floors
    if missing or any(declared.get(name) != floor for name, floor in required.items()):
        print(f"floors differ: pyproject.toml {declared}, requirements.txt {required}, undeclared {missing}",
              file=sys.stderr)
        return 1
    if "--check-installed" in argv:
        from packaging.version import Version  # installed with transformers; a bare venv has none

        wrong = {n: version(n) for n, v in declared.items() if Version(version(n)) != Version(v)}
        if wrong:
            print(f"installed above the floor: {wrong}", file=sys.stderr)
            return 1
        return 0
    print("\n".join(f"{name}=={v}" for name, v in sorted(declared.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
