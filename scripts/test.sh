#!/usr/bin/env bash
# Set up .venv with the reference libraries, then run the whole test suite (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Tests run servers, torchrun ranks and the test process side by side on few cores: OpenMP threads
# that spin while waiting would starve each other (10-20x slower), so they sleep instead.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m pytest "$@"
