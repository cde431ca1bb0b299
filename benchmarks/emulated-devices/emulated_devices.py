"""Emulated devices (`--model emulated`): measure what to emulate, and report the sweep over K.

    python benchmarks/emulated-devices/emulated_devices.py measure --data-dir ../shared/data --out benchmarks/configs
    python benchmarks/emulated-devices/emulated_devices.py report benchmarks/results/emulated-devices

`measure` times each stage of the bench's MLP (fc1024*8, K = 2, batch 256) alone, in this process on one
thread as a stage actor runs it: its forward and its backward (with its Adam step) on the whole batch,
the share of a call's time that does not shrink with its rows, the cDNI SG model's prediction and
regression, DGL's auxiliary head; and writes two bench configs whose emulated model waits that long:
stage by stage for K = 2 (emulated-mlp-k2.yaml, to validate against the real run), and every stage
the mean of the two for any K (emulated-mlp.yaml).

`report` reads the sweep's bench.json files (one folder per micro-batch rule and group of K, as
`emulated_devices.sh` writes them) and writes sweep.md: the K = 2 validation, a table per latency (each
row over the best locked schedule of its K, the locked rows at 0 ms over the bubble formula's
samples/s, the projected seconds to the target), dgl's stage utilization at steady state, and
samples_vs_K.png, samples/s against K per mode at each latency.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.data import describe
from dni_pipeline.trainer.models import network_from_config

LOCKED = ("backprop", "gpipe", "1f1b", "torch-gpipe", "torch-1f1b", "torch-zb")
UNLOCKED = ("dni", "cdni", "dgl")


def _milliseconds(work, repeats: int) -> float:
    """Median milliseconds of `work()` over `repeats` calls, after two unmeasured ones."""
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        work()
        if i >= 2:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _stage_times(module: torch.nn.Module, h_in: torch.Tensor, labels: torch.Tensor | None, cfg: TrainConfig,
                 repeats: int) -> tuple[float, float, float]:
    """One stage's forward ms and backward ms (with its Adam step) on the whole batch, and the share of a
    call's time that does not shrink with its rows: a step of M micro-batches takes fixed + (1 - fixed) / M
    of the whole batch's time per call. `labels` for the last stage (its loss), None for the others."""
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr)

    def train(parts: int) -> None:  # M forwards and backwards (accumulating), one Adam step
        for rows in torch.arange(cfg.batch_size).chunk(parts):
            out = module(h_in[rows])
            if labels is None:
                out.backward(torch.ones_like(out))
            else:
                F.cross_entropy(out, labels[rows]).backward()
        optimizer.step()
        optimizer.zero_grad()

    forward = _milliseconds(lambda: module(h_in), repeats)
    whole = _milliseconds(lambda: train(1), repeats)
    fixed = (_milliseconds(lambda: train(cfg.micro_batches), repeats) / whole - 1) / (cfg.micro_batches - 1)
    return forward, whole - forward, fixed


def measure(cfg: TrainConfig, data_dir: str, repeats: int) -> dict:
    """Every stage's `_stage_times` (the fixed share as their mean), and the cDNI SG model's and the
    auxiliary head's milliseconds per call on stage 0's output."""
    torch.set_num_threads(1)
    dataset = load_dataset(cfg.dataset, data_dir)
    data = describe(dataset)
    network = network_from_config(cfg, data)
    network.prepare(data, "cdni")
    x, y = torch.from_numpy(dataset.x_train[:cfg.batch_size]), torch.from_numpy(dataset.y_train[:cfg.batch_size])
    forward_ms, backward_ms, fixed, h = [], [], [], x
    for i in range(cfg.stages):
        module = network.build(i)
        h_in = h.detach().requires_grad_(i > 0)
        times = _stage_times(module, h_in, y if i == cfg.stages - 1 else None, cfg, repeats)
        forward_ms.append(times[0])
        backward_ms.append(times[1])
        fixed.append(times[2])
        with torch.no_grad():
            h = module(h_in)
    shape = network.output_shape(0)
    h0 = torch.zeros(cfg.batch_size, *shape)
    sg = network.build_synthetic_gradient(0, [], conditioned=True)
    sg_optimizer = torch.optim.Adam(sg.parameters(), lr=cfg.lr)
    head = network.build_aux_head(0, [])
    head_optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    h0_grad = h0.clone().requires_grad_()

    def sg_regression():
        sg.regression_loss(h0, y, torch.zeros_like(h0)).backward()
        sg_optimizer.step()
        sg_optimizer.zero_grad()

    def aux_step():
        F.cross_entropy(head(h0_grad), y).backward()
        head_optimizer.step()
        head_optimizer.zero_grad()

    sg_forward = _milliseconds(lambda: sg.predict(h0, y), repeats)
    aux_forward = _milliseconds(lambda: head(h0_grad), repeats)
    return {"shape": list(shape), "forward_ms": [round(v, 2) for v in forward_ms],
            "backward_ms": [round(v, 2) for v in backward_ms], "fixed_share": round(statistics.mean(fixed), 3),
            "sg_forward_ms": round(sg_forward, 2),
            "sg_backward_ms": round(_milliseconds(sg_regression, repeats) - sg_forward, 2),
            "aux_forward_ms": round(aux_forward, 2), "aux_backward_ms": round(_milliseconds(aux_step, repeats) - aux_forward, 2)}


def _cells(folder: Path) -> dict[tuple, dict]:
    """(row, K, latency) -> samples/s, worst stage's utilization, host CPU: from every sweep folder's
    bench.json (`m4-*` with M = 4, `m4k-*` with M = 4K for the locked schedules)."""
    cells = {}
    for path in sorted(folder.glob("m4*/bench.json")):
        for e in json.loads(path.read_text()):
            row = e["mode"] + (" M=4K" if path.parent.name.startswith("m4k") else "")
            for latency, rate in e["samples_per_sec_by_latency"].items():
                utilization = e["stage_utilization_by_latency"][latency]
                cells[(row, e["stages"], float(latency))] = {
                    "rate": rate["median"], "host": e["host_cpu_busy_by_latency"][latency],
                    "worst": min(utilization) if utilization else None}
    return cells


def formula_rate(options: dict, row: str, k: int, micro: int, batch: int) -> float | None:
    """Samples/s a locked schedule would reach with no messaging cost: a step is (M + K - 1) micro-batch
    slots (K for backprop) of one stage's forward and backward, each call waiting as the emulated model does."""
    if row.split(" ")[0] not in LOCKED or row.startswith("torch-zb"):  # zero bubble has no closed form
        return None
    m = 1 if row == "backprop" else micro
    fixed = options.get("fixed_share", 0.0)
    slot = (options["forward_ms"] + options["backward_ms"]) * (fixed + (1 - fixed) / m) / 1000
    return batch / ((m + k - 1) * slot)


def validation(folder: Path) -> list[str]:
    """The K = 2 check: the emulated run's samples/s and stage utilization over the real run's, per row."""
    real, emulated_run = ({e["mode"]: e for e in json.loads((folder / name / "bench.json").read_text())}
                          for name in ("validate-real", "validate-emulated"))
    lines = ["### Validation at K = 2: emulated over real\n", "| row | samples/s real | emulated | ratio | "
             "utilization real | emulated |", "|---|---|---|---|---|---|"]
    for mode, r in real.items():
        e = emulated_run[mode]
        joined = lambda u: "-" if not u else " / ".join(f"{v:.2f}" for v in u)  # noqa: E731
        lines.append(f"| {mode} | {r['samples_per_sec']['median']:.0f} | {e['samples_per_sec']['median']:.0f} | "
                     f"{e['samples_per_sec']['median'] / r['samples_per_sec']['median']:.2f} | "
                     f"{joined(r['stage_utilization'])} | {joined(e['stage_utilization'])} |")
    return lines


def steps_to_target(bench_json: Path) -> dict[str, int]:
    """Per row, the first evaluated step at which a real K = 2 time-to-target run reached its target (at the
    first latency; the locked modes are exact, so the same at every latency)."""
    steps = {}
    for e in json.loads(bench_json.read_text()):
        curve = next(iter(e["curve_by_latency"].values()))
        reached = [step for step, _, value in curve if value is not None and value >= e["target_accuracy"]]
        if reached:
            steps[e["mode"]] = reached[0]
    return steps


def projected(cells: dict[tuple, dict], steps: dict[str, int], batch: int, stages: list[int], latency: float) -> list[str]:
    """Seconds to the target: the K = 2 run's steps to it times the emulated run's seconds per step."""
    lines = [f"\nProjected seconds to the target at {latency:g} ms (steps to it from the real K = 2 runs x seconds per "
             "step emulated; accuracy per step at larger K is not measured)\n",
             "| row | steps (K = 2) | " + " | ".join(f"K = {k}" for k in stages) + " |", "|---|---|" + "---|" * len(stages)]
    for row in dict.fromkeys(r for r, _, x in cells if x == latency):
        mode = row.split(" ")[0]
        if mode not in steps:
            continue
        seconds = [f"{steps[mode] * batch / cells[(row, k, latency)]['rate']:.1f}" if (row, k, latency) in cells else "-"
                   for k in stages]
        lines.append(f"| {row} | {steps[mode]} | " + " | ".join(seconds) + " |")
    return lines


def steady_state(folder: Path) -> list[str]:
    """The long runs of the fastest unlocked mode: every stage's utilization at each K and latency."""
    lines = ["\n### dgl at steady state (100 steps): utilization of every stage\n",
             "| K | latency | samples/s | utilization, lowest / median / highest stage | host CPU |", "|---|---|---|---|---|"]
    for e in json.loads((folder / "long-dgl" / "bench.json").read_text()):
        for latency, rate in e["samples_per_sec_by_latency"].items():
            u = sorted(e["stage_utilization_by_latency"][latency])
            lines.append(f"| {e['stages']} | {latency} ms | {rate['median']:.0f} | {u[0]:.2f} / {statistics.median(u):.2f} / "
                         f"{u[-1]:.2f} | {e['host_cpu_busy_by_latency'][latency]:.0%} |")
    return lines


def report(folder: Path, options: dict, batch: int, steps: dict[str, int]) -> str:
    """The sweep as one table per latency (samples/s, worst stage's utilization, host CPU; each row over the
    best locked schedule of the same K), and the plot of samples/s against K per mode at each latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cells = _cells(folder)
    latencies = sorted({x for _, _, x in cells})
    stages = sorted({k for _, k, _ in cells})
    rows = list(dict.fromkeys(row for row, _, _ in cells))
    lines = []
    for latency in latencies:
        best = {k: max(((c["rate"], row) for (row, kk, x), c in cells.items()
                        if kk == k and x == latency and row.split(" ")[0] in LOCKED), default=(None, None))
                for k in stages}
        lines += [f"\n### {latency:g} ms per message\n",
                  "| row | " + " | ".join(f"K = {k}" for k in stages) + " |", "|---|" + "---|" * len(stages)]
        for row in rows:
            out = []
            for k in stages:
                c = cells.get((row, k, latency))
                if c is None:
                    out.append("-")
                    continue
                util = "" if c["worst"] is None else f", util {c['worst']:.2f}"
                formula = formula_rate(options, row, k, 4 * k if "4K" in row else 4, batch) if latency == 0 else None
                vs_formula = "" if formula is None else f", {c['rate'] / formula:.2f} of formula"
                out.append(f"{c['rate']:.0f} ({c['rate'] / best[k][0]:.2f}x{util}, host {c['host']:.0%}{vs_formula})")
            lines.append(f"| {row} | " + " | ".join(out) + " |")
        lines.append("| best locked | " + " | ".join(f"{best[k][1]}" for k in stages) + " |")
        lines += projected(cells, steps, batch, stages, latency)
    # A colour per mode; unlocked solid, locked at M = 4 dashed, at M = 4K dotted.
    colours = {mode: plt.get_cmap("tab10")(i) for i, mode in enumerate(dict.fromkeys(r.split(" ")[0] for r in rows))}
    figure, axes = plt.subplots(1, len(latencies), figsize=(5 * len(latencies), 4.5), sharey=True, squeeze=False)
    for ax, latency in zip(axes[0], latencies):
        for row in rows:
            points = [(k, cells[(row, k, latency)]["rate"]) for k in stages if (row, k, latency) in cells]
            style = "-" if row in UNLOCKED else ":" if "4K" in row else "--"
            if points:
                ax.plot(*zip(*points), style, marker="o", color=colours[row.split(" ")[0]], label=row)
        ax.set(xscale="log", yscale="log", xlabel="K (emulated devices)", title=f"{latency:g} ms per message")
        ax.set_xticks(stages, [str(k) for k in stages])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0][0].set_ylabel("samples/s")
    axes[0][0].legend(fontsize=7, loc="lower left", ncol=2)
    figure.tight_layout()
    figure.savefig(folder / "samples_vs_K.png", dpi=120)
    if (folder / "validate-real" / "bench.json").exists():
        lines = validation(folder) + lines
    if (folder / "long-dgl" / "bench.json").exists():
        lines += steady_state(folder)
    text = "\n".join(lines) + "\n"
    (folder / "sweep.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    m = commands.add_parser("measure", help="time the bench MLP's stages and write the emulated model's config")
    m.add_argument("--data-dir", required=True, help="folder holding the MNIST IDX files")
    m.add_argument("--out", required=True, help="folder to write emulated-mlp-k2.yaml and emulated-mlp.yaml into")
    m.add_argument("--repeats", type=int, default=20, help="timed calls of each part (median)")
    r = commands.add_parser("report", help="the sweep's table (sweep.md) and plot (samples_vs_K.png)")
    r.add_argument("folder", help="the folder holding one bench run folder per latency and micro-batch rule")
    r.add_argument("--config", default="benchmarks/configs/emulated-mlp.yaml", help="the sweep's bench config")
    r.add_argument("--steps-from", default="benchmarks/results/bench-k2-torch-latency/bench.json",
                   help="a real K = 2 bench with time-to-target runs, for each row's steps to the target")
    args = parser.parse_args()
    if args.command == "report":
        config = yaml.safe_load(Path(args.config).read_text())
        steps = steps_to_target(Path(args.steps_from))
        print(report(Path(args.folder), config["model_options"], config["batch_size"], steps))
        return
    cfg = TrainConfig(dataset="mnist", arch="fc1024*8", stages=2, batch_size=256).validate()
    measured = measure(cfg, args.data_dir, args.repeats)
    mean = lambda values: round(statistics.mean(values), 2)  # noqa: E731
    every_stage = {**measured, "forward_ms": mean(measured["forward_ms"]), "backward_ms": mean(measured["backward_ms"])}
    header = ("# The emulated model of the bench MLP (fc1024*8, K = 2, batch 256): each stage's forward and backward\n"
              "# (with its Adam step), the cDNI SG's and DGL's head's calls, as measured alone on one thread by\n"
              "# `python benchmarks/emulated-devices/emulated_devices.py measure`")
    out = Path(args.out)
    for name, options, note in (("emulated-mlp-k2.yaml", measured, ", stage by stage (K = 2 only).\n"),
                                ("emulated-mlp.yaml", every_stage, "; every stage the mean of K = 2's two (any K).\n")):
        config = {"model": "emulated", "model_options": options, "dataset": "mnist", "batch_size": cfg.batch_size}
        (out / name).write_text(header + note + yaml.safe_dump(config, default_flow_style=None, sort_keys=False))
    print(json.dumps(measured))

if __name__ == "__main__":
    main()
