#!/usr/bin/env bash
# Runs lint and the whole test suite (unit, kernel, e2e) with the installed venv.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${CILIA_VENV:-/opt/cilia/venv}
cd "$here"
"$venv/bin/ruff" check src tests bench || exit 1
"$venv/bin/mypy" || exit 1
"$venv/bin/python" -m pytest tests "$@"
rc=$?
# pytest exits 5 when it collected no tests: that is a failure of the suite, not a pass.
if [ $rc -eq 5 ]; then echo "run-tests: no tests collected"; exit 1; fi
exit $rc
