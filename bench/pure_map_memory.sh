#!/usr/bin/env bash
# Peak memory (maximum resident set size, GNU time's %M) of a pure-Python `subinterp map`
# run: 20,000 records through 2 interpreters, 3 rounds per binary, binaries alternating.
# A pure run starts no worker process; compare a build from before worker processes
# existed with the current one to see what the process machinery costs a pure run.
#
#   bench/pure_map_memory.sh target/debug/subinterp [OTHER_SUBINTERP ...]
#
# Needs /usr/bin/time (GNU time).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 SUBINTERP [SUBINTERP ...]" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/purework.py" <<'PY'
def work(record):
    return {"n": record, "s": sum(i * i for i in range(record % 500)), "t": str(record) * 3}
PY
seq 0 19999 > "$work/in.jsonl"
binaries=()
for b in "$@"; do binaries+=("$(realpath "$b")"); done
cd "$work"
for round in 1 2 3; do
    for b in "${binaries[@]}"; do
        /usr/bin/time -f "$b round $round: peak RSS %M kB, %e s" \
            "$b" map purework:work -i in.jsonl -o out.jsonl -w 2 2>&1 | tail -1
    done
done
