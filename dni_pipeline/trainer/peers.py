"""What a user would run instead of the stage actors, on the same model, data order, optimizer and cores:

- ``single``: one plain PyTorch process holding the whole network, with every core the stages reserve;
- ``torch-gpipe`` / ``torch-1f1b``: PyTorch's own pipeline schedules (torch.distributed.pipelining on
  gloo), one process per stage, the same micro-batches as the project's gpipe and 1f1b.

Each process is a Ray actor with the CPUs a stage (or all stages, for ``single``) would hold. The
driver times only the training calls; it evaluates between them on a copy of the weights, so the
figures are comparable with `train_pipeline`'s (evaluation excluded from training time).
"""

import copy
import dataclasses
import logging
import socket
import time

import numpy as np
import ray
import torch
from torch import nn

from dni_pipeline.core.errors import UserError

from .config import TrainConfig
from .data import PlacedData, place_data
from .driver import batch_order
from .model import Network
from .models import network_from_config
from .objective import scores_to_metrics
from .report import TrainResult, tokens_per_sec
from .stage import learning_rate

__all__ = ["PEER_MODES", "check_peer", "train_peer"]

log = logging.getLogger("dni_pipeline.trainer")

PEER_MODES = ("single", "torch-gpipe", "torch-1f1b")


class PeerProcess:
    """One process of a peer run: the whole network (``single``) or stage `rank` of a torch pipeline."""

    def __init__(self, config: dict, mode: str, rank: int, network: Network, total_steps: int):
        cfg = self.cfg = TrainConfig(**config)
        self.mode, self.rank, self.total_steps = mode, rank, total_steps
        threads = cfg.stages * cfg.cpus_per_stage if mode == "single" else cfg.cpus_per_stage
        torch.set_num_threads(max(1, int(threads)))
        self.module = nn.Sequential(*network.build_all()) if mode == "single" else network.build(rank)
        self.loss = network.objective.loss
        # Shapes given up front: inferred at run time, the first step pushes an uninitialised receive
        # buffer through the stage and leaves its BatchNorm running statistics at inf.
        self.shapes = network.boundaries[rank], network.boundaries[rank + 1]
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=cfg.lr)
        self.schedule = None

    def endpoint(self) -> tuple[str, int]:
        """An address and free port of this process's node, for the gloo rendezvous of rank 0."""
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def join(self, address: str, port: int) -> None:
        """Join the gloo group and build this rank's PipelineStage and schedule."""
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        torch.distributed.init_process_group("gloo", init_method=f"tcp://{address}:{port}", rank=self.rank,
                                             world_size=self.cfg.stages)
        micro = self.cfg.batch_size // self.cfg.micro_batches
        example_in, example_out = (torch.zeros(micro, *shape, dtype=dtype) for shape, dtype in self.shapes)
        example_in.requires_grad_(self.rank > 0)  # the metadata says which gradients travel upstream
        example_out.requires_grad_()
        stage = PipelineStage(self.module, self.rank, self.cfg.stages, torch.device("cpu"), input_args=example_in,
                              output_args=example_out)
        schedule = ScheduleGPipe if self.mode == "torch-gpipe" else Schedule1F1B
        self.schedule = schedule(stage, self.cfg.micro_batches, loss_fn=self.loss)

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
        return time.perf_counter() - start

    def weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


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
    network = network or network_from_config(cfg, data)
    network.prepare(data, "backprop")
    steps_per_epoch = data.num_train // cfg.batch_size
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    every = cfg.eval_every or steps_per_epoch
    ranks = 1 if mode == "single" else cfg.stages
    cpus = cfg.stages * cfg.cpus_per_stage if mode == "single" else cfg.cpus_per_stage
    actor = ray.remote(PeerProcess).options(num_cpus=cpus, scheduling_strategy="SPREAD")
    processes = [actor.remote(dataclasses.asdict(cfg), mode, r, network if mode == "single" else network.for_stage(r), total)
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
        epochs = -(-total // steps_per_epoch)  # each epoch's shuffle once, as the driver does
        orders = [batch_order(data.num_train, cfg.batch_size, epoch, cfg.seed) for epoch in range(epochs)]
        while step < total and reached is None:
            end = min(total, step + every)
            batches = [orders[s // steps_per_epoch][s % steps_per_epoch] for s in range(step, end)]
            train_seconds += max(ray.get([p.train.remote(step, batches) for p in processes]))
            step = end
            weights = ray.get([p.weights.remote() for p in processes])
            evaluator.load_state_dict({k: v for w in weights for k, v in w.items()} if mode == "single" else
                                      {f"{i}.{k}": v for i, w in enumerate(weights) for k, v in w.items()},
                                      strict=True)
            record = {"kind": "eval", "step": step, "epoch": round(step / steps_per_epoch, 3),
                      "train_seconds": round(train_seconds, 3), **_evaluate(evaluator, network, x_test, y_test, cfg.batch_size)}
            evals.append(record)
            if cfg.target_reached(record):
                reached = train_seconds
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
        "bubble_formula": 0.0 if mode == "single" else round((cfg.stages - 1) / (micro + cfg.stages - 1), 4),
        "transport_fraction": None, "median_transit_ms": None, "link_latency_ms": 0.0,
        "target_accuracy": cfg.target_accuracy, "target_bits": cfg.target_bits,
        "time_to_target_seconds": None if reached is None else round(reached, 3),
        "train_seconds": round(train_seconds, 3), "wall_seconds": round(time.time() - wall_start, 3),
        "config": {**dataclasses.asdict(cfg), "mode": mode},
    }
    return TrainResult(summary, [], evals, [])
