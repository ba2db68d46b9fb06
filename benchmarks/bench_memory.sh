#!/usr/bin/env bash
# Peak memory of `emlmm gwas` (exact and fixed) at n = 2000 for growing m.
# Run by hand (not in CI):  bash benchmarks/bench_memory.sh [m ...]   (default: 50000)
# METHODS="exact fixed" (the default) chooses the scans.
# Needs GNU time (apt-get install -y time). Data go to $WORKDIR (default /tmp/bench/mem).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORKDIR="${WORKDIR:-/tmp/bench/mem}"
N="${N:-2000}"
mkdir -p "$WORKDIR"
[ -x /usr/bin/time ] || { echo "GNU time missing: apt-get install -y time"; exit 1; }
echo "OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-unset}; $(uptime)"
for M in "${@:-50000}"; do
  P="$WORKDIR/P_${N}_${M}"
  [ -f "$P.bed" ] || python "$HERE/bench_memory_data.py" --n "$N" --m "$M" --out "$P"
  cd "$WORKDIR"
  for METHOD in ${METHODS:-exact fixed}; do
    /usr/bin/time -v emlmm gwas --bfile "$P" --kinship "$P.K.txt" --out "$P.$METHOD.tsv" \
        --method "$METHOD" --quiet 2> "$P.$METHOD.time.txt" || { cat "$P.$METHOD.time.txt"; exit 1; }
    rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$P.$METHOD.time.txt")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$P.$METHOD.time.txt")
    echo "n=$N m=$M $METHOD: peak RSS $(awk -v k="$rss_kb" 'BEGIN {printf "%.0f MB", k/1024}') " \
         "(${rss_kb} kB), wall $wall, rows $(($(wc -l < "$P.$METHOD.tsv") - 1)); $(uptime)"
  done
done
