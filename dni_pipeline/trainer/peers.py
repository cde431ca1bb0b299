"""What a user would run instead of the stage actors, on the same model, data order, optimizer and cores:

- ``single``: one plain PyTorch process holding the whole network, with every core the stages reserve;
- ``torch-gpipe`` / ``torch-1f1b``: PyTorch's own pipeline schedules (torch.distributed.pipelining on
  gloo), one process per stage, the same micro-batches as the project's gpipe and 1f1b;
- ``torch-zb``: PyTorch's interleaved zero-bubble schedule (ZB1P, Qi et al. 2024), the strongest locked
  schedule it ships for K processes: the model cut into 2K stages, process r holding stages r and r + K,
  each backward split into the input gradient (sent at once) and the weight gradient (filling the bubble).

Each process is a Ray actor with the CPUs a stage (or all stages, for ``single``) would hold. The
driver times only the training calls; it evaluates between them on a copy of the weights, so the
figures are comparable with `train_pipeline`'s (evaluation excluded from training time). With
``link_latency_ms`` every message a torch schedule sends leaves that long after it was made
(`DelayedSends`), as the stage actors' messages do.
"""

import copy
import dataclasses
import logging
import queue
import socket
import statistics
import threading
import time

import numpy as np
import ray
import torch
from torch import nn

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.host import CpuBusy

from .config import TrainConfig
from .data import PlacedData, batch_order, place_data
from .model import Network
from .models import network_from_config
from .objective import scores_to_metrics
from .report import TrainResult, tokens_per_sec
from .stage import learning_rate

__all__ = ["PEER_MODES", "DelayedSends", "check_peer", "peer_network", "train_peer"]

log = logging.getLogger("dni_pipeline.trainer")

PEER_MODES = ("single", "torch-gpipe", "torch-1f1b", "torch-zb")


class DelayedSends:
    """Link latency for one rank of a torch pipeline, as `DelayedLink` gives the stage actors: every
    point-to-point send the schedule makes is copied and handed to a background thread that sends it
    `latency` seconds later, in order. The schedule sees it as sent at once, so neither side's compute
    waits for the link; a receive completes when the delayed send arrives."""

    def __init__(self, latency: float):
        self.latency = latency
        self.delays: list[float] = []  # seconds from each send being made to its leaving, as measured
        self.queue: queue.Queue = queue.Queue()
        self.sent: list = []  # (work, tensor) of the sends that have left, until flush() waits for them
        threading.Thread(target=self._run, daemon=True).start()

    def install(self) -> None:
        """Route the schedules' batched point-to-point calls (every send they make) through the link: in this
        process's torch for the rest of its life, which is one peer run's."""
        from torch.distributed.pipelining import schedules

        original = schedules._batch_p2p

        def batch_p2p(ops, desc=None):
            for op in ops:
                if op.op is torch.distributed.isend:
                    self.queue.put((time.monotonic(), op.tensor.detach().clone(), op))
            return original([op for op in ops if op.op is not torch.distributed.isend], desc)

        schedules._batch_p2p = batch_p2p

    def _run(self) -> None:
        while True:
            made, tensor, op = self.queue.get()
            time.sleep(max(0.0, made + self.latency - time.monotonic()))
            self.delays.append(time.monotonic() - made)
            self.sent.append((torch.distributed.isend(tensor, group=op.group, tag=op.tag, group_dst=op.group_peer), tensor))
            self.queue.task_done()

    def flush(self) -> None:
        """Return once every send made so far has left and completed."""
        self.queue.join()
        for work, _ in self.sent:
            work.wait()
        self.sent.clear()


class PeerProcess:
    """One process of a peer run: the whole network (``single``), or rank `rank` of a torch pipeline
    holding stage `rank` (and stage `rank` + K of the 2K, for ``torch-zb``)."""

    def __init__(self, config: dict, mode: str, rank: int, network: Network, total_steps: int):
        cfg = self.cfg = TrainConfig(**config)
        self.mode, self.rank, self.total_steps = mode, rank, total_steps
        threads = cfg.stages * cfg.cpus_per_stage if mode == "single" else cfg.cpus_per_stage
        torch.set_num_threads(max(1, int(threads)))
        self.held = list(range(network.num_stages)) if mode == "single" else _held_stages(mode, rank, cfg.stages)
        self.modules = [network.build(i) for i in self.held]
        self.module = nn.Sequential(*self.modules) if mode == "single" else nn.ModuleList(self.modules)
        self.loss = network.objective.loss
        # Shapes given up front: inferred at run time, the first step pushes an uninitialised receive
        # buffer through the stage and leaves its BatchNorm running statistics at inf.
        self.shapes = [(network.boundaries[i], network.boundaries[i + 1]) for i in self.held]
        self.num_stages = network.num_stages
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=cfg.lr)
        self.schedule = None
        self.link = DelayedSends(cfg.link_latency_ms / 1000.0) if cfg.link_latency_ms and mode != "single" else None

    def endpoint(self) -> tuple[str, int]:
        """An address and free port of this process's node, for the gloo rendezvous of rank 0."""
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def join(self, address: str, port: int) -> None:
        """Join the gloo group and build this rank's PipelineStages and schedule."""
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleavedZeroBubble

        torch.distributed.init_process_group("gloo", init_method=f"tcp://{address}:{port}", rank=self.rank,
                                             world_size=self.cfg.stages)
        if self.link:
            self.link.install()
        micro = self.cfg.batch_size // self.cfg.micro_batches
        stages = []
        for index, module, shapes in zip(self.held, self.modules, self.shapes):
            example_in, example_out = (torch.zeros(micro, *shape, dtype=dtype) for shape, dtype in shapes)
            example_in.requires_grad_(index > 0)  # the metadata says which gradients travel upstream
            example_out.requires_grad_()
            stages.append(PipelineStage(module, index, self.num_stages, torch.device("cpu"), input_args=example_in,
                                        output_args=example_out))
        if self.mode == "torch-zb":
            self.schedule = ScheduleInterleavedZeroBubble(stages, self.cfg.micro_batches, loss_fn=self.loss)
        else:
            schedule = ScheduleGPipe if self.mode == "torch-gpipe" else Schedule1F1B
            self.schedule = schedule(stages[0], self.cfg.micro_batches, loss_fn=self.loss)

    def attach_data(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        self.x_train, self.y_train = x_train, y_train

    def train(self, first_step: int, batches: list[np.ndarray]) -> float:
        """Train the given mini-batches (global steps from `first_step`); return the seconds it took."""
        start = time.perf_counter()
        for step, indices in enumerate(batches, first_step):
            x, y = torch.from_numpy(self.x_train[indices]), torch.from_numpy(self.y_train[indices])
            if self.schedule is None:
                self.loss(self.module(x), y).backward()
            elif self.rank == 0:
                self.schedule.step(x)
            elif self.rank == self.cfg.stages - 1:
                self.schedule.step(target=y)
            else:
                self.schedule.step()
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.cfg.lr, self.cfg.lr_schedule, step, self.total_steps)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.link:
            self.link.flush()
        return time.perf_counter() - start

    def weights(self) -> dict:
        """This process's weights under the whole model's keys (``stage.key``)."""
        return {f"{i}.{k}": v.detach().clone() for i, module in zip(self.held, self.modules)
                for k, v in module.state_dict().items()}

    def send_delays(self) -> list[float]:
        return self.link.delays if self.link else []

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _held_stages(mode: str, rank: int, num_ranks: int) -> list[int]:
    """The stages rank `rank` runs: its own, and for torch-zb also stage rank + K (interleaved placement)."""
    return [rank, rank + num_ranks] if mode == "torch-zb" else [rank]


def peer_network(cfg: TrainConfig, mode: str, data: PlacedData, network: Network | None = None) -> Network:
    """The network a peer trains: the run's, or for torch-zb the same model cut into 2K stages."""
    network = network or network_from_config(cfg, data)
    if mode != "torch-zb":
        return network
    try:
        return network.recut(2 * cfg.stages)
    except UserError as exc:
        raise UserError(f"torch-zb holds two stages per process: {exc}") from None


def check_peer(cfg: TrainConfig, mode: str) -> None:
    """Refuse, in one line, a peer mode this configuration cannot run."""
    if mode not in PEER_MODES:
        raise UserError(f"unknown peer mode '{mode}': choose one of {', '.join(PEER_MODES)}")
    if cfg.device != "cpu":
        raise UserError(f"{mode} runs on CPU only here (gloo): use --device cpu for the peer rows")
    if mode != "single" and cfg.stages < 2:
        raise UserError(f"{mode} needs at least 2 stages")
    if mode != "single" and cfg.batch_size % cfg.micro_batches:
        raise UserError(f"{mode} splits the batch evenly: --batch-size {cfg.batch_size} is not a multiple of "
                        f"--micro-batches {cfg.micro_batches}")
    if mode == "torch-1f1b" and cfg.micro_batches < cfg.stages:
        raise UserError(f"torch-1f1b needs at least as many micro-batches as stages (PyTorch's Schedule1F1B): use "
                        f"--micro-batches {cfg.stages} or more for {cfg.stages} stages")
    if mode == "torch-zb":
        if cfg.split:
            raise UserError("torch-zb cuts the model into two stages per process itself: drop --split for its row")
        rounds = max(1, cfg.micro_batches // cfg.stages)
        if cfg.micro_batches % rounds:
            raise UserError(f"torch-zb runs micro-batches in rounds of {cfg.stages}: use --micro-batches a multiple "
                            f"of {rounds} (e.g. {cfg.stages * rounds})")


def _evaluate(model: nn.Module, network: Network, x_test: np.ndarray, y_test: np.ndarray, batch_size: int) -> dict:
    model.eval()
    scored = []
    with torch.no_grad():
        for start in range(0, len(x_test), batch_size):
            x, y = torch.tensor(x_test[start:start + batch_size]), torch.tensor(y_test[start:start + batch_size])
            scored.append(network.objective.scores(model(x), y))
    return scores_to_metrics(scored, "test_")


def train_peer(cfg: TrainConfig, mode: str, data, network: Network | None = None) -> TrainResult:
    """Train `mode` for cfg's steps or epochs, evaluating every `eval_every` steps (or once per epoch),
    stopping at `target_accuracy`; the summary has the keys of a pipeline run that apply."""
    check_peer(cfg, mode)
    data: PlacedData = place_data(data)
    network = peer_network(cfg, mode, data, network)
    network.prepare(data, "backprop")
    steps_per_epoch = data.num_train // cfg.batch_size
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    every = cfg.eval_every or steps_per_epoch
    ranks = 1 if mode == "single" else cfg.stages
    cpus = cfg.stages * cfg.cpus_per_stage if mode == "single" else cfg.cpus_per_stage
    actor = ray.remote(PeerProcess).options(num_cpus=cpus, scheduling_strategy="SPREAD")
    processes = [actor.remote(dataclasses.asdict(cfg), mode, r,
                              network if mode == "single" else network.for_stage(*_held_stages(mode, r, ranks)), total)
                 for r in range(ranks)]
    evaluator = nn.Sequential(*copy.deepcopy(network.build_all()))  # a copy: a user's modules stay as they were
    x_test, y_test = ray.get(data.refs[2:])
    wall_start = time.time()
    try:
        ray.get([p.attach_data.remote(*data.refs[:2]) for p in processes])
        if mode != "single":
            address, port = ray.get(processes[0].endpoint.remote())
            ray.get([p.join.remote(address, port) for p in processes])
        train_seconds, step, evals, reached = 0.0, 0, [], None
        host = CpuBusy()
        epochs = -(-total // steps_per_epoch)  # each epoch's shuffle once, as the driver does
        orders = [batch_order(data.num_train, cfg.batch_size, epoch, cfg.seed) for epoch in range(epochs)]
        while step < total and reached is None:
            end = min(total, step + every)
            batches = [orders[s // steps_per_epoch][s % steps_per_epoch] for s in range(step, end)]
            with host:
                train_seconds += max(ray.get([p.train.remote(step, batches) for p in processes]))
            step = end
            weights = ray.get([p.weights.remote() for p in processes])
            evaluator.load_state_dict({k: v for w in weights for k, v in w.items()}, strict=True)
            record = {"kind": "eval", "step": step, "epoch": round(step / steps_per_epoch, 3),
                      "train_seconds": round(train_seconds, 3), **_evaluate(evaluator, network, x_test, y_test, cfg.batch_size)}
            evals.append(record)
            if cfg.target_reached(record):
                reached = train_seconds
        delays = [d for p in processes for d in ray.get(p.send_delays.remote())]
        ray.get([p.close.remote() for p in processes])
    finally:
        for p in processes:
            ray.kill(p)
    micro = 1 if mode == "single" else cfg.micro_batches
    summary = {
        "mode": mode, "stages": cfg.stages, "micro_batches": micro, "dataset": data.name, "arch": cfg.arch,
        "batch_size": cfg.batch_size, "steps": step, "planned_steps": total,
        "stopped_by": "target accuracy" if reached is not None else "completed",
        "test_accuracy": evals[-1].get("test_accuracy"), "test_loss": evals[-1]["test_loss"],
        **{k: v for k, v in evals[-1].items() if k.startswith("test_")},
        "samples_per_sec": round(step * cfg.batch_size / max(train_seconds, 1e-9), 2),
        "tokens_per_sec": tokens_per_sec(data, step * cfg.batch_size, train_seconds),
        "stage_utilization": None, "bubble_measured": None,
        # GPipe's and 1F1B's idle share; the zero-bubble schedule fills it with weight gradients (no closed form)
        "bubble_formula": (0.0 if mode == "single" else None if mode == "torch-zb"
                           else round((cfg.stages - 1) / (micro + cfg.stages - 1), 4)),
        "transport_fraction": None, "median_transit_ms": None, "host_cpu_busy": host.share,
        "link_latency_ms": 0.0 if mode == "single" else cfg.link_latency_ms,
        # the delay each send measured on its way out (torch schedules with link latency)
        "send_delay_ms": None if not delays else {"messages": len(delays), "min": round(min(delays) * 1e3, 2),
                                                  "median": round(statistics.median(delays) * 1e3, 2),
                                                  "max": round(max(delays) * 1e3, 2)},
        "target_accuracy": cfg.target_accuracy, "target_bits": cfg.target_bits,
        "time_to_target_seconds": None if reached is None else round(reached, 3),
        "train_seconds": round(train_seconds, 3), "wall_seconds": round(time.time() - wall_start, 3),
        "config": {**dataclasses.asdict(cfg), "mode": mode},
    }
    return TrainResult(summary, [], evals, [])
