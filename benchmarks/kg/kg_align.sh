#!/usr/bin/env bash
# Issue 34's alignment table: each alignment model on a DBP15K pair (30% seeds, split seed 0), one `kg align` run each
# into OUT/runs/ (outside git: checkpoints and alignments.tsv are large), then kg_tables.py align writes OUT/table.md
# and OUT/summary.json from their summary.json files.
# Usage: bash benchmarks/kg/kg_align.sh DATA_DIR [PAIR] [MODELS]   (PAIR default zh_en; MODELS default
# "mtranse gcn-align dual-amn dual-amn-boot"; on 2 CPU cores about 5, 10, 10 and 20 minutes)
set -euo pipefail
DATA=${1:?usage: kg_align.sh DATA_DIR [PAIR] [MODELS]}
PAIR=${2:-zh_en}
MODELS=${3:-mtranse gcn-align dual-amn dual-amn-boot}
OUT=benchmarks/results/kg-align/$PAIR
mkdir -p "$OUT/runs"
for name in $MODELS; do
  case $name in
    dual-amn-boot) args=(--model dual-amn --rounds 4) ;;  # Dual-AMN's iterative setting: 20 epochs, then 4 x 5
    mtranse|gcn-align|dual-amn) args=(--model "$name") ;;
    *) echo "unknown model $name: mtranse, gcn-align, dual-amn or dual-amn-boot" >&2; exit 2 ;;
  esac
  rm -rf "$OUT/runs/$name"
  dni-pipeline kg align --dataset "dbp15k/$PAIR" --data-dir "$DATA" "${args[@]}" --num-cpus 2 --out "$OUT/runs/$name"
done
python benchmarks/kg/kg_tables.py align "$OUT"
