"""The alignment table: Hits@1 / Hits@10 / MRR of each `kg align` run under every inference, one row per run folder.

    python benchmarks/kg_align_table.py OUT_DIR

reads OUT_DIR/runs/*/summary.json (run folders stay out of git), writes OUT_DIR/table.md and OUT_DIR/summary.json
(the figures, each run's rounds and settings) and prints the table.
"""

import argparse
import json
from pathlib import Path

INFERENCES = ("cosine", "csls", "sinkhorn", "all_csls")


def row(summary: dict, name: str) -> dict:
    return {"run": name, "model": summary["model"], "rounds": summary["rounds"], "epochs": summary["epochs"],
            "train_seconds": summary["train_seconds"], "test": {k: summary["test"][k] for k in INFERENCES},
            "protocol": summary["protocol"], "config": summary["config"]}


def table(rows: list[dict]) -> str:
    head = "| run | epochs | train s | " + " | ".join(f"{k} H@1 / H@10 / MRR" for k in INFERENCES) + " |"
    lines = [head, "|---" * (3 + len(INFERENCES)) + "|"]
    for r in rows:
        cells = [f"{100 * m['hits@1']:.1f} / {100 * m['hits@10']:.1f} / {m['mrr']:.3f}"
                 for m in (r["test"][k] for k in INFERENCES)]
        lines.append(f"| {r['run']} | {r['epochs']} | {r['train_seconds']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nHits in %. cosine, csls, sinkhorn: each test entity of graph 1 ranked among the test "
                               "entities of graph 2 (the standard protocol); all_csls: among every entity of graph 2.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a folder whose runs/ holds the kg align run folders")
    args = parser.parse_args()
    rows = [row(json.loads((f / "summary.json").read_text()), f.name)
            for f in sorted((args.out / "runs").iterdir()) if (f / "summary.json").is_file()]
    text = table(rows)
    (args.out / "table.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
