"""The alignment and integration tables, from run folders' summary.json files (the run folders stay out of git).

    python benchmarks/kg/kg_tables.py align OUT_DIR         # every `kg align` run in OUT_DIR/runs/, one row each
    python benchmarks/kg/kg_tables.py integration OUT_DIR   # the alone, found and reference `kg train` runs
    python benchmarks/kg/kg_tables.py pairs OUT_DIR         # the align tables of OUT_DIR/PAIR/ side by side

Each writes OUT_DIR/table.md and OUT_DIR/summary.json (the figures and each run's settings) and prints the table.
"""

import argparse
import json
from pathlib import Path

INFERENCES = ("cosine", "csls", "sinkhorn", "all_csls")
PAIRS = ("zh_en", "ja_en", "fr_en")  # DBP15K's order in the literature; other folders after them
RUNS = ("mtranse", "gcn-align", "dual-amn", "dual-amn-boot")  # kg_align.sh's order; other runs after them
GRAPHS = {"alone": "graph 1 alone", "found": "merged, alignment found", "reference": "merged, reference alignment"}


def alignment_row(summary: dict, name: str) -> dict:
    return {"run": name, "model": summary["model"], "rounds": summary["rounds"], "epochs": summary["epochs"],
            "train_seconds": summary["train_seconds"], "test": {k: summary["test"][k] for k in INFERENCES},
            "protocol": summary["protocol"], "config": summary["config"]}


def alignment_table(rows: list[dict]) -> str:
    head = "| run | epochs | train s | " + " | ".join(f"{k} H@1 / H@10 / MRR" for k in INFERENCES) + " |"
    lines = [head, "|---" * (3 + len(INFERENCES)) + "|"]
    for r in rows:
        cells = [f"{100 * m['hits@1']:.1f} / {100 * m['hits@10']:.1f} / {m['mrr']:.3f}"
                 for m in (r["test"][k] for k in INFERENCES)]
        lines.append(f"| {r['run']} | {r['epochs']} | {r['train_seconds']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nHits in %. cosine, csls, sinkhorn: each test entity of graph 1 ranked among the test "
                               "entities of graph 2 (the standard protocol); all_csls: among every entity of graph 2.\n")


def _rank(order: tuple, name: str) -> int:
    return order.index(name) if name in order else len(order)


def pairs_table(tables: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """Each run of every pair's align table: Hits@1 under each standard-protocol inference, and train seconds."""
    runs = sorted({r["run"] for rows in tables.values() for r in rows}, key=lambda r: (_rank(RUNS, r), r))
    lines = ["| run | " + " | ".join(f"{pair} Sinkhorn / CSLS / cosine H@1 | train s" for pair in tables) + " |",
             "|---" * (1 + 2 * len(tables)) + "|"]
    figures = []
    for run in runs:
        cells = []
        for pair, rows in tables.items():
            row = next((r for r in rows if r["run"] == run), None)
            if row is None:
                cells += ["not run", "-"]
                continue
            t = row["test"]
            cells += [" / ".join(f"{100 * t[k]['hits@1']:.1f}" for k in ("sinkhorn", "csls", "cosine")),
                      f"{row['train_seconds']:.0f}"]
            figures.append({"pair": pair, "run": run, "train_seconds": row["train_seconds"],
                            "hits@1": {k: t[k]["hits@1"] for k in INFERENCES}})
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nHits@1 in %, each test entity of graph 1 ranked among the test entities of graph 2.\n", figures


def integration_row(summary: dict, graph: str) -> dict:
    test = summary["test"]
    return {"graph": graph, "entities": summary["entities"], "relations": summary["relations"],
            "train_triples": summary["triples"]["train"], "test_triples": summary["triples"]["test"],
            "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
            "train_seconds": summary["train_seconds"], "valid_mrr": summary["valid"]["mrr"],
            "test": {k: test[k] for k in ("mrr", "hits@1", "hits@3", "hits@10")}, "config": summary["config"]}


def integration_table(rows: list[dict]) -> str:
    lines = ["| trained on | entities | train triples | epochs (best) | train s | valid MRR | test MRR | H@1 | H@3 | H@10 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test"]
        lines.append(f"| {GRAPHS[r['graph']]} | {r['entities']} | {r['train_triples']} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['train_seconds']:.0f} | {r['valid_mrr']:.4f} | {t['mrr']:.4f} | {t['hits@1']:.4f} | "
                     f"{t['hits@3']:.4f} | {t['hits@10']:.4f} |")
    return "\n".join(lines) + ("\n\nThe same held-out triples of graph 1 in every row (filtered ranking among every entity "
                               "of the training graph, both directions, realistic ties).\n")


def _summaries(runs: Path, names) -> list[tuple[dict, str]]:
    return [(json.loads((runs / n / "summary.json").read_text()), n) for n in names if (runs / n / "summary.json").is_file()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("align", "integration", "pairs"))
    parser.add_argument("out", type=Path, help="a folder whose runs/ holds the run folders (pairs: whose PAIR/ "
                                               "folders hold align tables)")
    args = parser.parse_args()
    runs = args.out / "runs"
    if args.table == "pairs":
        tables = {d.name: json.loads((d / "summary.json").read_text())
                  for d in sorted(args.out.iterdir(), key=lambda d: (_rank(PAIRS, d.name), d.name))
                  if (d / "runs").is_dir() and (d / "summary.json").is_file()}
        text, rows = pairs_table(tables)
    elif args.table == "align":
        rows = [alignment_row(s, n) for s, n in _summaries(runs, sorted(f.name for f in runs.iterdir()))]
        text = alignment_table(rows)
    else:
        rows = [integration_row(s, n) for s, n in _summaries(runs, GRAPHS)]
        text = integration_table(rows)
    (args.out / "table.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
