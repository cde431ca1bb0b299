"""The integration table: filtered MRR and Hits of ComplEx on graph 1's held-out triples, trained on graph 1 alone,
on graph 1 merged with graph 2 through the found alignment, and through the reference alignment.

    python benchmarks/kg_integration_table.py OUT_DIR

reads OUT_DIR/runs/{alone,found,reference}/summary.json (run folders stay out of git), writes OUT_DIR/table.md and
OUT_DIR/summary.json and prints the table.
"""

import argparse
import json
from pathlib import Path

GRAPHS = {"alone": "graph 1 alone", "found": "merged, alignment found", "reference": "merged, reference alignment"}


def row(summary: dict, graph: str) -> dict:
    test = summary["test"]
    return {"graph": graph, "entities": summary["entities"], "relations": summary["relations"],
            "train_triples": summary["triples"]["train"], "test_triples": summary["triples"]["test"],
            "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
            "train_seconds": summary["train_seconds"], "valid_mrr": summary["valid"]["mrr"],
            "test": {k: test[k] for k in ("mrr", "hits@1", "hits@3", "hits@10")}, "config": summary["config"]}


def table(rows: list[dict]) -> str:
    lines = ["| trained on | entities | train triples | epochs (best) | train s | valid MRR | test MRR | H@1 | H@3 | H@10 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test"]
        lines.append(f"| {GRAPHS[r['graph']]} | {r['entities']} | {r['train_triples']} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['train_seconds']:.0f} | {r['valid_mrr']:.4f} | {t['mrr']:.4f} | {t['hits@1']:.4f} | "
                     f"{t['hits@3']:.4f} | {t['hits@10']:.4f} |")
    return "\n".join(lines) + ("\n\nThe same held-out triples of graph 1 in every row (filtered ranking among every entity "
                               "of the training graph, both directions, realistic ties).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a folder whose runs/ holds the alone, found and reference kg train runs")
    args = parser.parse_args()
    rows = [row(json.loads((args.out / "runs" / g / "summary.json").read_text()), g)
            for g in GRAPHS if (args.out / "runs" / g / "summary.json").is_file()]
    text = table(rows)
    (args.out / "table.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
