#!/usr/bin/env bash
# Measures `subinterp check --all` over the standard library plus a virtual environment
# holding numpy and a few compiled wheels (Cython, PyO3, pybind11), and prints the wall
# time and the modules checked per second.
#
#   bench/check_all.sh            # with the Python the build uses (tools/python3)
#   PYO3_PYTHON=/path/to/python3.12 CARGO_TARGET_DIR=target/py3.12 bench/check_all.sh
#
# The environment is made once under the target directory and reused. Needs pip access
# to PyPI the first time. Extra arguments go to `subinterp check` (e.g. --jobs 4).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYO3_PYTHON:-tools/python3}
target=${CARGO_TARGET_DIR:-target}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv="$target/check-bench-venv-$version"
requirements="numpy==2.5.5 msgpack==1.2.4 rpds-py==2026.9.1 google-re2==1.1.20251105 PyYAML==6.0.4 orjson==3.13.0"

if [ "$(cat "$venv/requirements.txt" 2>/dev/null)" != "$requirements" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: $requirements
    echo "$requirements" > "$venv/requirements.txt"
fi

cargo build --release --quiet -p subinterp-cli
start=$(date +%s.%N)
status=0
VIRTUAL_ENV="$(cd "$venv" && pwd)" "$target/release/subinterp" check --all --json "$@" > "$target/check-all.json" || status=$?
end=$(date +%s.%N)
if [ "$status" -ge 2 ]; then
    echo "subinterp check failed with status $status" >&2
    exit "$status"
fi
"$python" - "$target/check-all.json" "$start" "$end" "$version" <<'PY'
import collections, json, sys
reports = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
verdicts = collections.Counter(r["verdict"] for r in reports)
print(f"subinterp check --all, Python {sys.argv[4]}: {len(reports)} extension modules "
      f"in {wall:.1f} s wall = {len(reports) / wall:.1f} modules/s "
      f"({verdicts['ok']} ok, {verdicts['legacy-only']} legacy-only, {verdicts['broken']} broken)")
PY
