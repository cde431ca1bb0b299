"""`dni-pipeline bench`: modes and stage counts side by side on the same model, data and resources.

Rows are the project's modes, the peers a user would pick instead (`single`, `torch-gpipe`,
`torch-1f1b`, `torch-zb`: peers.py) and, with `sg_off_rows`, an SG-off ablation beside every SG mode. Throughput
runs are interleaved (A B C A B C ...) so drift of a shared machine hits every row alike; each is a
fixed number of steps with no probes. Time-to-accuracy runs train each row until the test accuracy
reaches the target, at every link latency, with SG probes on. The torch schedules run at every latency
(their sends delayed as the stage actors' messages are); `single` at the first only, having no links.
"""

import dataclasses
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from tqdm import tqdm

from dni_pipeline.core.errors import JobFailed, UserError
from dni_pipeline.core.host import CpuBusy
from dni_pipeline.core.provenance import provenance, provenance_line
from dni_pipeline.core.run_folder import RunFolder

from .bench_journal import BenchJournal
from .config import TrainConfig
from .data import PlacedData, place_data
from .model import Network
from .models import network_from_config
from .peers import PEER_MODES, check_peer, peer_network, train_peer
from .plots import plot_accuracy_vs_time, plot_latency, plot_sg_cosine, plot_throughput, plot_time_to_accuracy, plot_timeline
from .report import TrainResult
from .stage import MODES, SG_MODES, SG_UPDATES
from .training import train_pipeline

__all__ = ["BenchConfig", "bench_table", "check_networks", "run_bench"]

log = logging.getLogger("dni_pipeline.trainer")

SG_OFF = " sg-off"  # the suffix of an ablation row's label
SYNTHETIC_INPUTS = "+si"  # the suffix of an SG mode with synthetic inputs: "cdni+si", the complete unlock
RULE_SUFFIXES = {f"+{rule}": rule for rule in SG_UPDATES}  # an SG mode under a named update rule: "cdni+corrected"


def _rule_of(mode: str) -> tuple[str, str | None]:
    """A row's mode without its +RULE suffix, and the rule it names (None: the bench's)."""
    for suffix, rule in RULE_SUFFIXES.items():
        if mode.endswith(suffix):
            return mode.removesuffix(suffix), rule
    return mode, None


@dataclass
class BenchConfig:
    base: TrainConfig  # model, data, batch, micro-batches, SG, resources: shared by every run
    modes: list[str] = field(default_factory=lambda: ["backprop", "gpipe", "dni"])
    stages: list[int] = field(default_factory=lambda: [2])
    reps: int = 3
    steps: int = 60
    latencies: list[float] = field(default_factory=lambda: [0.0, 20.0])
    target_accuracy: float = 0.97
    target_bits: float | None = None  # a language model's target instead: test bits per token at most this
    tta_epochs: int = 3  # time-to-accuracy runs stop here if the target is not reached
    tta_steps: int = 0  # ... or after this many steps, if set
    tta_reps: int = 1  # time-to-target runs per cell, interleaved: the table gives their median and range
    eval_every: int = 25
    sg_off_rows: bool = False  # an SG-off ablation row beside every SG mode
    delay: int | None = None  # the delayed rows' delay (None: K - 1 - k) and staleness treatment
    staleness: str | None = None
    own_model: bool = False  # the network is the API caller's model object (TrainConfig.validate)

    def validate(self) -> "BenchConfig":
        for mode in self.modes:
            base, rule = _rule_of(mode.removesuffix(SYNTHETIC_INPUTS))
            if base not in MODES + PEER_MODES:
                raise UserError(f"unknown bench mode '{mode}': choose from {', '.join(MODES + PEER_MODES)}, or dni+si, "
                                "cdni+si (with synthetic inputs), dni+RULE, cdni+RULE (under --sg-update RULE: "
                                f"{', '.join(SG_UPDATES)})")
        for k in self.stages:
            for mode in self.modes:
                cfg = dataclasses.replace(self.base, stages=k)
                if mode in PEER_MODES:
                    check_peer(cfg.validate(self.own_model), mode)
                else:
                    self.row_config(cfg, mode).validate(self.own_model)
        for mode in self.modes:
            base, rule = _rule_of(mode.removesuffix(SYNTHETIC_INPUTS))
            if rule and base not in SG_MODES:
                raise UserError(f"bench mode '{mode}': a +RULE row names an SG mode's update rule: use dni+{rule} or "
                                f"cdni+{rule}")
        if min(self.reps, self.steps, self.eval_every, self.tta_reps) < 1 or self.tta_epochs < 0 or self.tta_steps < 0:
            raise UserError("--reps, --steps, --eval-every and --tta-reps must be at least 1, --tta-epochs and --tta-steps "
                            "at least 0")
        self.target_config().validate(self.own_model)
        if not self.latencies or any(x < 0 for x in self.latencies):
            raise UserError("--link-latency-ms needs one or more values of 0 ms or more, e.g. 0,20")
        return self

    def resolved(self) -> dict:
        """Every setting, the SG update rule resolved (provenance.json; a resumed bench must match it)."""
        return {**dataclasses.asdict(self), "base": {**dataclasses.asdict(self.base),
                                                     "sg_update": self.base.resolved_sg_update()}}

    def rows(self) -> list[str]:
        """Row labels in order: each mode, followed by its SG-off ablation where asked for."""
        return [label for mode in self.modes
                for label in ([mode, mode + SG_OFF] if self.sg_off_rows and mode in SG_MODES else [mode])]

    def target_config(self) -> TrainConfig:
        """The base config of a time-to-target run: its target, its evaluations and probes, its cap."""
        return dataclasses.replace(self.base, epochs=max(1, self.tta_epochs), max_steps=self.tta_steps,
                                   target_accuracy=None if self.target_bits else self.target_accuracy,
                                   target_bits=self.target_bits, eval_every=self.eval_every,
                                   sg_probe_every=self.eval_every)

    def runs_at(self, label: str, latency: float) -> bool:
        return label != "single" or latency == self.latencies[0]

    def row_config(self, cfg: TrainConfig, label: str) -> TrainConfig:
        """The trainer's config of a row: its mode, with its SG-off ablation or synthetic inputs, and the delayed
        mode's settings on its rows."""
        mode, rule = _rule_of(label.removesuffix(SG_OFF).removesuffix(SYNTHETIC_INPUTS))
        delayed = mode == "delayed"
        return dataclasses.replace(cfg, mode=mode, sg_off=label.endswith(SG_OFF),
                                   synthetic_inputs=label.endswith(SYNTHETIC_INPUTS),
                                   sg_update=rule or cfg.sg_update,
                                   delay=self.delay if delayed else None, staleness=self.staleness if delayed else None)


def _run(bench: BenchConfig, cfg: TrainConfig, label: str, data: PlacedData, network: Network) -> TrainResult:
    if label in PEER_MODES:
        return train_peer(cfg, label, data, network)
    return train_pipeline(bench.row_config(cfg, label), data, progress=False, network=network)


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "values": [round(v, 3) for v in values]}


def _median(values: list[float | None]) -> float | None:
    return None if None in values else round(statistics.median(values), 4)


def _median_per_stage(rows: list[list[float] | None]) -> list[float] | None:
    return None if rows[0] is None else [round(statistics.median(col), 4) for col in zip(*rows)]


def _throughput_runs(bench: BenchConfig, data: PlacedData, networks: dict[int, Network], progress: bool,
                     journal: BenchJournal):
    """Every (latency, K, row) once per repetition, repetitions outermost; a run the journal holds is not rerun."""
    runs: dict[tuple, list[TrainResult]] = defaultdict(list)
    grid = [(x, k, r) for x in bench.latencies for k in bench.stages for r in bench.rows() if bench.runs_at(r, x)]
    with tqdm(total=bench.reps * len(grid), unit="run", desc="throughput", disable=not progress) as bar:
        for rep in range(bench.reps):
            for latency, k, label in grid:
                result = journal.get("throughput", rep, latency, k, label)
                if result is None:
                    cfg = dataclasses.replace(bench.base, stages=k, link_latency_ms=latency, max_steps=bench.steps,
                                              eval_every=bench.steps, sg_probe_every=0, target_accuracy=None,
                                              target_bits=None)
                    result = _run(bench, cfg, label, data, networks[k])
                    journal.add("throughput", rep, latency, k, label, result,
                                keep_events=rep == 0 and latency == bench.latencies[0])  # the timelines' runs
                runs[(latency, k, label)].append(result)
                bar.set_postfix(last=f"{label} K={k} {latency:g}ms {result.summary['samples_per_sec']:.0f}/s")
                bar.update()
    return runs


def _time_to_accuracy_runs(bench: BenchConfig, data: PlacedData, networks: dict[int, Network],
                           journal: BenchJournal) -> dict[tuple, list]:
    """Every (latency, K, row) once per repetition, repetitions outermost, as the throughput runs."""
    results: dict[tuple, list[TrainResult]] = defaultdict(list)
    for rep, latency, k, label in [(i, x, k, r) for i in range(bench.tta_reps) for x in bench.latencies
                                   for k in bench.stages for r in bench.rows() if bench.runs_at(r, x)]:
        result = journal.get("tta", rep, latency, k, label)
        if result is not None:
            results[(latency, k, label)].append(result)
            continue
        cfg = dataclasses.replace(bench.target_config(), stages=k, link_latency_ms=latency)
        log.info("time to %s: %s with %d stages at %g ms", cfg.target_text(), label, k, latency)
        try:
            result = _run(bench, cfg, label, data, networks[k])
        except JobFailed as exc:  # a row that diverges is a result too; the others still run
            log.warning("  %s failed: %s", label, exc)
            result = TrainResult({"time_to_target_seconds": None,
                                  "failed": next(iter(str(exc).splitlines()), type(exc).__name__)})
        journal.add("tta", rep, latency, k, label, result, keep_events=False)
        results[(latency, k, label)].append(result)
        log.info("  %s", f"{result.summary['time_to_target_seconds']} s" if result.summary["time_to_target_seconds"]
                 else _final(result.summary, bench))
    return results


def time_spread(seconds: list[float | None]) -> dict:
    """Median, min and max of a cell's times to the target over its repetitions; a repetition that missed the
    target counts as never, so the median is None (not reached) when most of them missed."""
    never = float("inf")
    values = [never if t is None else t for t in seconds]
    known = lambda v: None if v == never else round(v, 3)  # noqa: E731
    return {"median": known(statistics.median(values)), "min": known(min(values)), "max": known(max(values)),
            "values": seconds}


def check_networks(bench: BenchConfig, data: PlacedData, networks: dict[int, Network]) -> None:
    """Refuse, before any run or run folder, a model that a row cannot train (torch-zb cuts it again), and a
    language model raced to an accuracy: a model scored in bits needs its target in bits."""
    sequence_output = any(n.objective.classifies and len(n.boundaries[-1][0]) == 2 for n in networks.values())
    if bench.tta_epochs and bench.target_bits is None and sequence_output:
        raise UserError("this model predicts a sequence and is scored in bits per token: give --target-bits (for "
                        "example 2.8 for the character GPT), or --tta-epochs 0 to measure samples/s only")
    for k in bench.stages if "torch-zb" in bench.modes else []:
        peer_network(dataclasses.replace(bench.base, stages=k), "torch-zb", data, networks[k])


def run_bench(bench: BenchConfig, data, folder: RunFolder, progress: bool = True, network_for=None,
              resume: bool = False) -> list[dict]:
    """Run everything, write bench.json, bench.md, provenance.json (commit, command, resolved config, host load)
    and the plots into `folder`; return the entries. Each run is journalled as it finishes (cells.jsonl);
    with `resume`, the runs the folder's journal holds are taken from it (the same config, else a UserError).
    `network_for(K)` gives the model cut into K stages (default: the one the base config names)."""
    data = place_data(data)
    network_for = network_for or (lambda k: network_from_config(dataclasses.replace(bench.base, stages=k), data))
    networks = {k: network_for(k) for k in bench.stages}
    record = provenance()
    config = bench.resolved()
    journal = BenchJournal(folder, config, dict(record), resume)
    with CpuBusy() as host:
        throughput = _throughput_runs(bench, data, networks, progress, journal)
        tta = _time_to_accuracy_runs(bench, data, networks, journal) if bench.tta_epochs else {}
    record.update(host_cpu_busy=host.share, config=config)
    if resume:
        record.update(resumed_runs=len(journal.done), parts=journal.parts)
    base_latency = bench.latencies[0]
    entries = []
    for k in bench.stages:
        for label in bench.rows():
            summaries = [r.summary for r in throughput[(base_latency, k, label)]]
            entry = {
                "mode": label,
                "stages": k,
                "micro_batches": summaries[0]["micro_batches"],
                "samples_per_sec": _spread([s["samples_per_sec"] for s in summaries]),
                "tokens_per_sec": (None if summaries[0]["tokens_per_sec"] is None
                                   else round(statistics.median(s["tokens_per_sec"] for s in summaries), 1)),
                "stage_utilization": _median_per_stage([s["stage_utilization"] for s in summaries]),
                "stage_update_rate": _median_per_stage([s.get("stage_update_rate") for s in summaries]),
                "bubble_measured": (None if summaries[0]["bubble_measured"] is None
                                    else round(statistics.median(s["bubble_measured"] for s in summaries), 4)),
                "bubble_formula": summaries[0]["bubble_formula"],
                "transport_fraction": _median_per_stage([s["transport_fraction"] for s in summaries]),
                "median_transit_ms": (None if summaries[0]["median_transit_ms"] is None
                                      else statistics.median(s["median_transit_ms"] for s in summaries)),
                "host_cpu_busy": _median([s["host_cpu_busy"] for s in summaries]),
                "latency_ms": base_latency,
                "samples_per_sec_by_latency": {
                    f"{x:g}": _spread([r.summary["samples_per_sec"] for r in throughput[(x, k, label)]])
                    for x in bench.latencies if bench.runs_at(label, x)
                },
                "stage_utilization_by_latency": {
                    f"{x:g}": _median_per_stage([r.summary["stage_utilization"] for r in throughput[(x, k, label)]])
                    for x in bench.latencies if bench.runs_at(label, x)
                },
                "host_cpu_busy_by_latency": {
                    f"{x:g}": _median([r.summary["host_cpu_busy"] for r in throughput[(x, k, label)]])
                    for x in bench.latencies if bench.runs_at(label, x)
                },
            }
            if tta:
                cells = {f"{x:g}": tta[(x, k, label)] for x in bench.latencies if bench.runs_at(label, x)}
                spread = {x: time_spread([r.summary["time_to_target_seconds"] for r in runs]) for x, runs in cells.items()}
                by_latency = {x: runs[0].summary for x, runs in cells.items()}  # the first repetition's curve and end
                entry.update(target=bench.target_config().target_text(), target_accuracy=bench.target_accuracy,
                             final_test_bits_by_latency={x: s.get("test_bits") for x, s in by_latency.items()},
                             final_by_latency={x: _final(next(r.summary for r in runs if not r.summary["time_to_target_seconds"]),
                                                         bench) for x, runs in cells.items() if spread[x]["median"] is None},
                             time_to_accuracy_seconds=spread[f"{base_latency:g}"]["median"],
                             time_to_accuracy_by_latency={x: v["median"] for x, v in spread.items()},
                             time_to_accuracy_spread_by_latency=spread,
                             final_test_accuracy_by_latency={x: s.get("test_accuracy") for x, s in by_latency.items()},
                             final_test_accuracy=by_latency[f"{base_latency:g}"].get("test_accuracy"),
                             curve_by_latency={x: _curve(runs[0]) for x, runs in cells.items()})
            entries.append(entry)
    _add_ratios(entries)
    folder.write_json("bench.json", entries)
    folder.write_json("provenance.json", record)
    folder.file("bench.md").write_text(bench_table(entries, bench) + "\n" + provenance_line(record) + "\n")
    _plots(bench, entries, throughput, tta, folder)
    return entries


def _add_ratios(entries: list[dict]) -> None:
    """Median throughput of each entry over locked backprop, GPipe and one process, same K."""
    by_key = {(e["stages"], e["mode"]): e["samples_per_sec"]["median"] for e in entries}
    for e in entries:
        for ref in ("backprop", "gpipe", "single"):
            base = by_key.get((e["stages"], ref))
            e[f"vs_{ref}"] = round(e["samples_per_sec"]["median"] / base, 3) if base else None


def bench_table(entries: list[dict], bench: BenchConfig) -> str:
    """bench.md: one row per mode and stage count, ratios against the locked modes of the same K, and
    the seconds to the target accuracy at every latency."""
    latencies = [f"{x:g}" for x in bench.latencies]
    tokens = entries[0]["tokens_per_sec"] is not None
    head = ["mode", "K", "samples/s (median [min, max])", *(["tokens/s"] if tokens else []), "vs single", "vs backprop",
            "vs gpipe", "stage utilization", "updates/s per stage", "bubble measured / formula", "transport / compute",
            "host CPU busy"]
    head += [f"kept at {x} ms" for x in latencies[1:]]
    if bench.tta_epochs:
        head += [f"s to {bench.target_config().target_text()} at {x} ms" for x in latencies]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        rate = e["samples_per_sec"]
        by_latency = e["samples_per_sec_by_latency"]
        row = [e["mode"], str(e["stages"]), f"{rate['median']:.0f} [{rate['min']:.0f}, {rate['max']:.0f}]",
               *([f"{e['tokens_per_sec']:.0f}"] if tokens else []),
               _ratio(e["vs_single"]), _ratio(e["vs_backprop"]), _ratio(e["vs_gpipe"]),
               _joined(e["stage_utilization"], "{:.2f}"), _joined(e["stage_update_rate"], "{:.1f}"),
               "-" if e["bubble_measured"] is None else f"{e['bubble_measured']:.2f} / {e['bubble_formula']:.2f}",
               _joined(e["transport_fraction"], "{:.1%}"),
               "-" if e["host_cpu_busy"] is None else f"{e['host_cpu_busy']:.0%}"]
        row += [f"{by_latency[x]['median'] / rate['median']:.0%}" if x in by_latency else "-" for x in latencies[1:]]
        if bench.tta_epochs:
            for x in latencies:
                spread = e["time_to_accuracy_spread_by_latency"].get(x)
                row.append("-" if spread is None else e["final_by_latency"][x] if spread["median"] is None
                           else f"{spread['median']:.1f}" if bench.tta_reps == 1 else _time_range(spread))
        lines.append("| " + " | ".join(row) + " |")
    cfg = bench.base
    model = f"model {cfg.model}{f' {cfg.model_options}' if cfg.model_options else ''}" if cfg.model else f"arch {cfg.arch}"
    data = f"{cfg.data or cfg.dataset}{f' {cfg.data_options}' if cfg.data_options else ''}"
    lines += ["", f"{data}, {model}, split {cfg.split or 'default'}, "
              f"batch {cfg.batch_size}, M = {cfg.micro_batches} micro-batches "
              f"(gpipe, 1f1b and torch's), {cfg.cpus_per_stage:g} CPU per stage on {cfg.device} (single: all "
              f"of them in one process), SG updates {cfg.resolved_sg_update()}, {bench.steps} steps x {bench.reps} interleaved "
              f"repetitions per throughput cell; time to accuracy: {_runs_per_cell(bench.tta_reps)}, evaluated every "
              f"{bench.eval_every} steps, at most {bench.tta_steps or bench.tta_epochs} "
              f"{'steps' if bench.tta_steps else 'epochs'}."]
    return "\n".join(lines) + "\n"


def _curve(result: TrainResult) -> list[list]:
    """A time-to-target run's evaluations as [step, training seconds, headline figure] (accuracy or bits)."""
    key = "test_bits" if result.evals and "test_bits" in result.evals[0] else "test_accuracy"
    return [[e["step"], e["train_seconds"], e.get(key)] for e in result.evals]


def _final(summary: dict, bench: BenchConfig) -> str:
    """How a run that missed the target ended, in the target's terms (or how it failed)."""
    if "failed" in summary:
        return f"failed ({summary['failed']})"
    if bench.target_bits:
        return f"not reached ({summary['test_bits']:.3f} bits)"
    return f"not reached ({100 * summary['test_accuracy']:.2f}%)"


def _runs_per_cell(reps: int) -> str:
    return "one run per cell" if reps == 1 else f"{reps} interleaved runs per cell (median [min, max])"


def _time_range(spread: dict) -> str:
    """A cell's median time with its range over repetitions ("never" for a repetition that missed)."""
    form = lambda v: "never" if v is None else f"{v:.1f}"  # noqa: E731
    return f"{form(spread['median'])} [{form(spread['min'])}, {form(spread['max'])}]"


def _joined(values: list[float] | None, form: str) -> str:
    return "-" if values is None else " / ".join(form.format(v) for v in values)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _plots(bench, entries, throughput, tta, folder: RunFolder) -> None:
    plot_throughput(folder.file("throughput.png"), entries)
    first = bench.steps // 2  # a window in the steady state, past the pipeline's fill
    count = min(6, bench.steps - first)
    for (latency, k, label), results in throughput.items():
        if latency == bench.latencies[0] and results[0].events:
            plot_timeline(folder.file(f"timeline_{label.replace(' ', '_')}_K{k}.png"), results[0].events, k,
                          f"{label}, K = {k}: one repetition, steps {first} to {first + count - 1}",
                          first_step=first, num_steps=count)
    if len(bench.latencies) > 1:
        plot_latency(folder.file("latency.png"), entries, bench.latencies)
    if tta:
        at_base = {(k, label): runs[0] for (x, k, label), runs in tta.items() if x == bench.latencies[0]}
        plot_accuracy_vs_time(folder.file("accuracy_vs_time.png"), at_base, bench.target_bits or bench.target_accuracy)
        plot_time_to_accuracy(folder.file("time_to_accuracy.png"), entries, bench.latencies,
                              bench.target_config().target_text())
        if any(label in SG_MODES for (_, label) in at_base):
            plot_sg_cosine(folder.file("sg_cosine.png"), at_base)
