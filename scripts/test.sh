#!/usr/bin/env bash
# README command 2: set up the environment (if needed) and run the whole test suite.
# Usage: scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
# pytest exits 5 when it collected no test: that must never pass as green. Tests are compile-bound
# (XLA compiles one program at a time), so one pytest-xdist worker per core roughly halves the time;
# --dist loadscope keeps each module on one worker, so module-scoped fixtures (trained runs) are built once.
set +e
python -m pytest -n "${PYTEST_WORKERS:-auto}" --dist loadscope "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
