"""Print pip requirements pinning every runtime dependency of pyproject.toml to its declared lower bound
(with `--test-tools`: the dev extra's test tools instead).

`.ci/lowest_versions.sh` installs with them and runs the unit tests, so a lower bound the code has
outgrown fails CI instead of a user's install.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_LOWER = re.compile(r"^(?P<name>[A-Za-z0-9._\[\]-]+)\s*(?P<specs>[^;]*?)\s*(?:;(?P<marker>.*))?$")


def lowest_constraints(dependencies: list[str]) -> list[str]:
    lines = []
    for requirement in dependencies:
        match = _LOWER.match(requirement)
        if match is None:
            raise SystemExit(f"cannot read requirement {requirement!r}")
        bounds = [
            spec.strip()[2:].strip() for spec in match["specs"].split(",") if spec.strip().startswith(">=")
        ]
        if len(bounds) != 1:
            raise SystemExit(f"{requirement!r} needs exactly one lower bound (>=)")
        name = re.sub(r"\[.*\]", "", match["name"])
        marker = f"; {match['marker'].strip()}" if match["marker"] else ""
        lines.append(f"{name}=={bounds[0]}{marker}")
    return lines


# The dev extra's linters and packaging tools are not needed to run the unit tests (the code generators
# are: a unit test regenerates the stubs and compares; so is mypy with the stubs: a unit test type-checks
# code written with the SDK).
_NOT_FOR_TESTS = (
    "ruff",
    "py-spy",
    "build",
    "setuptools",
    "twine",
    "check-jsonschema",
    "kubernetes-validate",
    "hadolint",
)


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    if sys.argv[1:] == ["--test-tools"]:
        tools = [r for r in project["optional-dependencies"]["dev"] if not r.startswith(_NOT_FOR_TESTS)]
        sys.stdout.write("".join(f"{line}\n" for line in tools))
        return
    sys.stdout.write("".join(f"{line}\n" for line in lowest_constraints(project["dependencies"])))


if __name__ == "__main__":
    main()
