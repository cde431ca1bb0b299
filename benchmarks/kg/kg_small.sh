#!/usr/bin/env bash
# The plain `kg train` command (tuned presets) on every shipped benchmark, then a table from the runs'
# summary.json files: filtered test MRR / Hits (realistic ties), the random floor, Countries AUC-PR.
# Usage: benchmarks/kg/kg_small.sh OUT_DIR [MODEL]
set -euo pipefail
out=${1:?output folder}
model=${2:-complex}
for dataset in nations umls kinships countries_s1 countries_s2 countries_s3; do
  dni-pipeline kg train --dataset "$dataset" --model "$model" --out "$out/$dataset-$model" | tail -n 4
done
python3 - "$out" "$model" <<'PY'
import json, sys, pathlib
out, model = pathlib.Path(sys.argv[1]), sys.argv[2]
print("| dataset | model | test MRR | pessimistic MRR | H@1 | H@3 | H@10 | random MRR | AUC-PR | epochs (best) | train s | test eval s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for d in ("nations", "umls", "kinships", "countries_s1", "countries_s2", "countries_s3"):
    s = json.loads((out / f"{d}-{model}" / "summary.json").read_text())
    t = s["test"]
    auc = f"{t['auc_pr']:.4f}" if "auc_pr" in t else "-"
    print(f"| {d} | {model} | {t['mrr']:.4f} | {t['pessimistic']['mrr']:.4f} | {t['hits@1']:.4f} | {t['hits@3']:.4f} | "
          f"{t['hits@10']:.4f} | {t['random_mrr']:.4f} | {auc} | {s['epochs']} ({s['best_epoch']}) | "
          f"{s['train_seconds']:.0f} | {s['eval_seconds']:.2f} |")
PY
