#!/usr/bin/env bash
# The whole test suite on a fresh Debian/Ubuntu machine: installs what it
# needs (bindep.txt, .venv) and runs pytest. Extra arguments go to pytest.
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
bash "$TOP/tools/setup-env.sh" test
cd "$TOP"
exec "$TOP/.venv/bin/python" -m pytest "$@"
