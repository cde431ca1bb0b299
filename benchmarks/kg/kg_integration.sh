#!/usr/bin/env bash
# Issue 34's integration table: does graph 2 fill graph 1's gaps? `kg merge` holds out 5% test and 5% valid of
# graph 1's triples and writes three completion datasets: graph 1 alone, merged with graph 2 through the alignment
# a `kg align` run found, and merged through the reference alignment (the ceiling). ComplEx (the large benchmarks'
# preset: rank 200, batches of 1000, N3 0.05, bf16 score matrices, best epoch on validation MRR) trains EPOCHS
# epochs on each (the merged graphs take 2.5x graph 1's time per epoch); MINUTES > 0 stops a run at its first
# validation past that much training. kg_tables.py writes OUT/table.md and OUT/summary.json of the
# filtered test MRR and Hits. A run whose summary.json exists is kept, so a stopped table resumes.
# Usage: bash benchmarks/kg/kg_integration.sh DATA_DIR [PAIR] [EPOCHS] [MINUTES]   (the alignment read is
# benchmarks/results/kg-align/PAIR/runs/dual-amn, made by kg_align.sh; on 2 CPU cores about 12 + 2 x 30 minutes)
set -euo pipefail
DATA=${1:?usage: kg_integration.sh DATA_DIR [PAIR] [EPOCHS] [MINUTES]}
PAIR=${2:-zh_en}
EPOCHS=${3:-11}
MINUTES=${4:-0}
ALIGNED=benchmarks/results/kg-align/$PAIR/runs/dual-amn
OUT=benchmarks/results/kg-align/$PAIR/integration
SETS=$OUT/runs/datasets
[ -f "$ALIGNED/alignments.tsv" ] || { echo "no alignment run at $ALIGNED: run bash benchmarks/kg/kg_align.sh $DATA $PAIR dual-amn" >&2; exit 2; }
for graph in alone found reference; do
  case $graph in alone) alignment=none ;; found) alignment=$ALIGNED ;; reference) alignment=reference ;; esac
  [ -f "$SETS/$graph/train.txt" ] ||
    dni-pipeline kg merge --dataset "dbp15k/$PAIR" --data-dir "$DATA" --alignment "$alignment" --out "$SETS/$graph"
done
for graph in alone found reference; do
  [ -f "$OUT/runs/$graph/summary.json" ] && continue
  rm -rf "$OUT/runs/$graph"
  dni-pipeline kg train --data-dir "$SETS" --dataset "$graph" --model complex --dim 200 --batch-size 1000 --n3 0.05 \
    --init-scale 0.3 --precision bf16 --eval-every 1 --patience 3 --epochs "$EPOCHS" --time-budget "$MINUTES" \
    --num-cpus 2 --out "$OUT/runs/$graph" | tail -n 4
done
python benchmarks/kg/kg_tables.py integration "$OUT"
