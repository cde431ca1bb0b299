"""The README's headline table from the headline benches' bench.json files (headline.sh writes them).

    python benchmarks/time-to-accuracy/headline_table.py benchmarks/results/headline

For each model folder (mlp, gpt, resnet) that holds a finished bench: one process's time to the target, PyTorch's
fastest schedule, the fastest locked row (PyTorch's or the project's) and the fastest unlocked row at every
latency, each a median with its range over the repetitions, and the unlocked row's ratio to the fastest locked
one. Writes OUT/table.md and OUT/summary.json and prints the table.
"""

import argparse
import json
from pathlib import Path

MODELS = {"mlp": "MLP, 8 x 1024 on MNIST", "gpt": "character GPT, 4 x 128 on the KJV Bible",
          "resnet": "residual CNN, 3 pre-activation blocks on MNIST"}
TORCH = ("torch-gpipe", "torch-1f1b", "torch-zb")
LOCKED = TORCH + ("backprop", "gpipe", "1f1b")
UNLOCKED_PREFIXES = ("dgl", "delayed", "dni", "cdni")


def _cells(entry: dict) -> dict[str, dict]:
    """The row's time to the target at each latency: median, min, max (None: not reached)."""
    return entry["time_to_accuracy_spread_by_latency"]


def _fastest(entries: list[dict], modes, latency: str) -> dict | None:
    """The row among `modes` with the shortest median time at `latency`; None when none reached the target."""
    reached = [e for e in entries if e["mode"] in modes and _cells(e).get(latency, {}).get("median") is not None]
    return min(reached, key=lambda e: _cells(e)[latency]["median"], default=None)


def _time(entry: dict | None, latency: str) -> str:
    if entry is None:
        return "not reached"
    cell = _cells(entry)[latency]
    form = lambda v: "never" if v is None else f"{v:.1f}"  # noqa: E731
    return f"{form(cell['median'])} [{form(cell['min'])}, {form(cell['max'])}] ({entry['mode']})"


def headline(entries: list[dict]) -> dict:
    """What the README quotes of one bench: the picks at each latency and the unlocked-to-locked ratio."""
    latencies = list(_cells(next(e for e in entries if e["mode"] != "single")))  # single runs at the first only
    unlocked = [e["mode"] for e in entries if e["mode"].startswith(UNLOCKED_PREFIXES)]
    single = next(e for e in entries if e["mode"] == "single")
    picks = {}
    for x in latencies:
        torch, locked, free = (_fastest(entries, modes, x) for modes in (TORCH, LOCKED, unlocked))
        ratio = (_cells(locked)[x]["median"] / _cells(free)[x]["median"]) if locked and free else None
        picks[x] = {"torch": torch and torch["mode"], "locked": locked and locked["mode"], "unlocked": free and free["mode"],
                    "times": {"torch": _time(torch, x), "locked": _time(locked, x), "unlocked": _time(free, x)},
                    "unlocked_sooner_than_locked": ratio and round(ratio, 2)}
    return {"target": single["target"], "single": _time(single, latencies[0]), "latencies": latencies, "picks": picks}


def table(rows: dict[str, dict]) -> str:
    lines = ["| model | target | one process | ms per message | PyTorch's fastest schedule | fastest locked | "
             "fastest unlocked | unlocked sooner than locked |", "|---" * 8 + "|"]
    for model, h in rows.items():
        for i, x in enumerate(h["latencies"]):
            p = h["picks"][x]
            ratio = "-" if p["unlocked_sooner_than_locked"] is None else f"{p['unlocked_sooner_than_locked']:.2f}x"
            first = (MODELS.get(model, model), h["target"], h["single"]) if i == 0 else ("", "", "")
            lines.append(f"| {' | '.join(first)} | {x} | {p['times']['torch']} | {p['times']['locked']} | "
                         f"{p['times']['unlocked']} | {ratio} |")
    return "\n".join(lines) + ("\n\nTraining seconds to the target (evaluation not counted): the median of the "
                               "repetitions of each cell [min, max], the row named; a ratio is of medians.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder whose MODEL/ folders hold the headline benches")
    args = parser.parse_args()
    rows = {d.name: headline(json.loads((d / "bench.json").read_text()))
            for d in sorted(args.out.iterdir(), key=lambda d: list(MODELS).index(d.name) if d.name in MODELS else 9)
            if (d / "bench.json").is_file()}
    text = table(rows)
    (args.out / "table.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
