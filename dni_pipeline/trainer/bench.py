"""`dni-pipeline bench`: modes and stage counts side by side on the same model, data and resources.

Throughput runs are interleaved (A B C A B C ...) so drift of a shared machine hits every mode alike;
each is a fixed number of steps with no probes. Time-to-accuracy runs train each mode until the test
accuracy reaches the target, with SG probes on, and give the accuracy-against-time and SG curves.
"""

import dataclasses
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from tqdm import tqdm

from dni_pipeline.core.datasets import Dataset
from dni_pipeline.core.errors import UserError
from dni_pipeline.core.run_folder import RunFolder

from .config import TrainConfig
from .plots import plot_accuracy_vs_time, plot_latency, plot_sg_cosine, plot_throughput, plot_timeline
from .report import TrainResult
from .training import train_pipeline

__all__ = ["BenchConfig", "bench_table", "run_bench"]

log = logging.getLogger("dni_pipeline.trainer")


@dataclass
class BenchConfig:
    base: TrainConfig  # model, data, batch, micro-batches, SG, resources: shared by every run
    modes: list[str] = field(default_factory=lambda: ["backprop", "gpipe", "dni"])
    stages: list[int] = field(default_factory=lambda: [2])
    reps: int = 3
    steps: int = 60
    latencies: list[float] = field(default_factory=lambda: [0.0, 20.0])
    target_accuracy: float = 0.97
    tta_epochs: int = 3  # time-to-accuracy runs stop here if the target is not reached
    eval_every: int = 25

    def validate(self) -> "BenchConfig":
        for mode in self.modes:
            dataclasses.replace(self.base, mode=mode).validate()
        for k in self.stages:
            dataclasses.replace(self.base, stages=k).validate()
        if self.reps < 1 or self.steps < 1 or self.eval_every < 1 or self.tta_epochs < 0:
            raise UserError("--reps, --steps and --eval-every must be at least 1, --tta-epochs at least 0")
        if not self.latencies or any(x < 0 for x in self.latencies):
            raise UserError("--link-latency-ms needs one or more values of 0 ms or more, e.g. 0,20")
        return self


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "values": [round(v, 3) for v in values]}


def _median_per_stage(rows: list[list[float]]) -> list[float]:
    return [round(statistics.median(col), 4) for col in zip(*rows)]


def _throughput_runs(bench: BenchConfig, data: Dataset, progress: bool):
    """Every (latency, K, mode) once per repetition, repetitions outermost."""
    runs: dict[tuple, list[TrainResult]] = defaultdict(list)
    grid = [(x, k, m) for x in bench.latencies for k in bench.stages for m in bench.modes]
    with tqdm(total=bench.reps * len(grid), unit="run", desc="throughput", disable=not progress) as bar:
        for _ in range(bench.reps):
            for latency, k, mode in grid:
                cfg = dataclasses.replace(bench.base, mode=mode, stages=k, link_latency_ms=latency,
                                          max_steps=bench.steps, eval_every=bench.steps, sg_probe_every=0)
                result = train_pipeline(cfg, data, progress=False)
                runs[(latency, k, mode)].append(result)
                bar.set_postfix(last=f"{mode} K={k} {latency:g}ms {result.summary['samples_per_sec']:.0f}/s")
                bar.update()
    return runs


def _time_to_accuracy_runs(bench: BenchConfig, data: Dataset) -> dict[tuple, TrainResult]:
    results = {}
    for k in bench.stages:
        for mode in bench.modes:
            cfg = dataclasses.replace(bench.base, mode=mode, stages=k, epochs=bench.tta_epochs,
                                      target_accuracy=bench.target_accuracy, eval_every=bench.eval_every,
                                      sg_probe_every=bench.eval_every)
            log.info("time to %.1f%%: %s with %d stages", 100 * bench.target_accuracy, mode, k)
            results[(k, mode)] = train_pipeline(cfg, data, progress=False)
    return results


def run_bench(bench: BenchConfig, data: Dataset, folder: RunFolder, progress: bool = True) -> list[dict]:
    """Run everything, write bench.json, bench.md and the plots into `folder`; return the entries."""
    throughput = _throughput_runs(bench, data, progress)
    tta = _time_to_accuracy_runs(bench, data) if bench.tta_epochs else {}
    base_latency = bench.latencies[0]
    entries = []
    for k in bench.stages:
        for mode in bench.modes:
            results = throughput[(base_latency, k, mode)]
            summaries = [r.summary for r in results]
            entry = {
                "mode": mode,
                "stages": k,
                "micro_batches": summaries[0]["micro_batches"],
                "samples_per_sec": _spread([s["samples_per_sec"] for s in summaries]),
                "stage_utilization": _median_per_stage([s["stage_utilization"] for s in summaries]),
                "bubble_measured": round(statistics.median(s["bubble_measured"] for s in summaries), 4),
                "bubble_formula": summaries[0]["bubble_formula"],
                "transport_fraction": _median_per_stage([s["transport_fraction"] for s in summaries]),
                "median_transit_ms": statistics.median(s["median_transit_ms"] or 0.0 for s in summaries),
                "latency_ms": base_latency,
                "samples_per_sec_by_latency": {
                    f"{x:g}": _spread([r.summary["samples_per_sec"] for r in throughput[(x, k, mode)]])
                    for x in bench.latencies
                },
            }
            if (k, mode) in tta:
                summary = tta[(k, mode)].summary
                entry.update(target_accuracy=bench.target_accuracy,
                             time_to_accuracy_seconds=summary["time_to_target_seconds"],
                             steps_to_accuracy=summary["steps"] if summary["time_to_target_seconds"] else None,
                             final_test_accuracy=summary["test_accuracy"])
            entries.append(entry)
    _add_ratios(entries)
    folder.write_json("bench.json", entries)
    folder.file("bench.md").write_text(bench_table(entries, bench))
    _plots(bench, entries, throughput, tta, folder)
    return entries


def _add_ratios(entries: list[dict]) -> None:
    """Median throughput of each entry over locked backprop and over GPipe with the same K."""
    by_key = {(e["stages"], e["mode"]): e["samples_per_sec"]["median"] for e in entries}
    for e in entries:
        for ref in ("backprop", "gpipe"):
            base = by_key.get((e["stages"], ref))
            e[f"vs_{ref}"] = round(e["samples_per_sec"]["median"] / base, 3) if base else None


def bench_table(entries: list[dict], bench: BenchConfig) -> str:
    """bench.md: one row per mode and stage count, ratios against the locked modes of the same K."""
    latencies = [f"{x:g}" for x in bench.latencies[1:]]
    head = ["mode", "K", "samples/s (median [min, max])", "vs backprop", "vs gpipe", "stage utilization",
            "bubble measured / formula", "transport / compute"]
    head += [f"kept at {x} ms" for x in latencies]
    if bench.tta_epochs:
        head.append(f"time to {100 * bench.target_accuracy:g}% (s)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        rate = e["samples_per_sec"]
        row = [e["mode"], str(e["stages"]), f"{rate['median']:.0f} [{rate['min']:.0f}, {rate['max']:.0f}]",
               _ratio(e["vs_backprop"]), _ratio(e["vs_gpipe"]),
               " / ".join(f"{u:.2f}" for u in e["stage_utilization"]),
               f"{e['bubble_measured']:.2f} / {e['bubble_formula']:.2f}",
               " / ".join(f"{100 * t:.1f}%" for t in e["transport_fraction"])]
        row += [f"{e['samples_per_sec_by_latency'][x]['median'] / rate['median']:.0%}" for x in latencies]
        if bench.tta_epochs:
            seconds = e.get("time_to_accuracy_seconds")
            row.append(f"{seconds:.0f}" if seconds else f"not reached ({100 * e['final_test_accuracy']:.2f}%)")
        lines.append("| " + " | ".join(row) + " |")
    cfg = bench.base
    lines += ["", f"{cfg.dataset}, arch {cfg.arch}, batch {cfg.batch_size}, M = {cfg.micro_batches} micro-batches "
              f"(gpipe, 1f1b), {cfg.cpus_per_stage:g} CPU per stage on {cfg.device}, {bench.steps} steps x "
              f"{bench.reps} interleaved repetitions per cell."]
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _plots(bench, entries, throughput, tta, folder: RunFolder) -> None:
    plot_throughput(folder.file("throughput.png"), entries)
    first = bench.steps // 2  # a window in the steady state, past the pipeline's fill
    count = min(6, bench.steps - first)
    for (latency, k, mode), results in throughput.items():
        if latency == bench.latencies[0]:
            plot_timeline(folder.file(f"timeline_{mode}_K{k}.png"), results[0].events, k,
                          f"{mode}, K = {k}: one repetition, steps {first} to {first + count - 1}",
                          first_step=first, num_steps=count)
    if len(bench.latencies) > 1:
        plot_latency(folder.file("latency.png"), entries, bench.latencies)
    if tta:
        plot_accuracy_vs_time(folder.file("accuracy_vs_time.png"), tta, bench.target_accuracy)
        if any(r.summary["mode"] in ("dni", "cdni") for r in tta.values()):
            plot_sg_cosine(folder.file("sg_cosine.png"), tta)
