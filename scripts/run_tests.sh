#!/usr/bin/env bash
# Every test, as `make test` runs them: two pytest processes side by side, so the suite's waiting
# (nodes starting, handlers answering, leases expiring) overlaps on a two-core machine. The first runs
# the scenario suites, the benchmarks' smoke tests, the contract and unit tests; the second the
# integration tests. Each is a whole pytest session of its own, so each still fails a run whose tests
# left a process behind (tests/conftest.py). Their outputs are printed one after the other.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-.venv/bin/pytest}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
started=$(date +%s)
"$PYTEST" -q -ra --durations=15 -p no:cacheprovider \
    tests/benchmarks tests/cluster tests/faults tests/fuzz tests/deploy tests/contract tests/unit \
    > "$logs/suites" 2>&1 &
suites=$!
"$PYTEST" -q -ra --durations=15 -p no:cacheprovider tests/integration > "$logs/integration" 2>&1 &
integration=$!
status=0
wait "$suites" || status=1
wait "$integration" || status=1
echo "== scenario, benchmark, contract and unit tests"
cat "$logs/suites"
echo "== integration tests"
cat "$logs/integration"
echo "all tests: $(( $(date +%s) - started )) s, $([[ $status == 0 ]] && echo passed || echo FAILED)"
exit "$status"
