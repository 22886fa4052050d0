#!/usr/bin/env bash
# The unit tests on the lowest versions pyproject.toml declares for the runtime dependencies (the test
# tools at their usual versions), against this tree's code (PYTHONPATH, nothing installed from it). The
# environment lives outside the clone, keyed by the requirements, so that later runs on the same machine
# reuse it and cost only the unit tests (28 s on a quiet 2-core machine, up to 2.5 min on a busy one;
# building the venv adds about 2 min, once per change of the requirements).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
requirements=$(mktemp) tools=$(mktemp)
trap 'rm -f "$requirements" "$tools"' EXIT
"$PYTHON" scripts/lowest_constraints.py > "$requirements"
"$PYTHON" scripts/lowest_constraints.py --test-tools > "$tools"
key=$(cat "$requirements" "$tools" | sha256sum | cut -c1-16)
LOWEST_VENV=${LOWEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/chiefofstate/venv-lowest-$key}
started=$(date +%s)
if [[ ! -f "$LOWEST_VENV/.complete" ]]; then
    rm -rf "$LOWEST_VENV"
    "$PYTHON" -m venv "$LOWEST_VENV"
    "$LOWEST_VENV/bin/python" -m pip install --quiet --upgrade pip
    "$LOWEST_VENV/bin/python" -m pip install --quiet -c "$requirements" -r "$requirements" -r "$tools"
    cp "$requirements" "$LOWEST_VENV/lowest.txt"
    touch "$LOWEST_VENV/.complete"
fi
# Every pin holds: pip may not have moved a package off its lower bound to satisfy another one.
"$LOWEST_VENV/bin/python" - "$requirements" <<'PY'
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
from packaging.version import Version
wrong = []
for line in open(sys.argv[1]):
    requirement = Requirement(line.strip())
    if requirement.marker is None or requirement.marker.evaluate():
        (pin,) = requirement.specifier
        if Version(version(requirement.name)) != Version(pin.version):
            wrong.append(f"{requirement.name} {version(requirement.name)} (want {pin.version})")
sys.exit(f"not at the lower bound: {', '.join(wrong)}" if wrong else 0)
PY
echo "lowest versions: environment ready in $(( $(date +%s) - started ))s ($LOWEST_VENV)"
PYTHONPATH="$PWD/src:$PWD/examples" "$LOWEST_VENV/bin/python" -m pytest tests/unit -q -p no:cacheprovider
echo "lowest versions: done in $(( $(date +%s) - started ))s"
