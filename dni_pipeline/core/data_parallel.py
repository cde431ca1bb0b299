"""A job's training run as N data-parallel replicas on Ray Train, for a model or data that outgrows
one process.

A `TorchTrainer` starts N workers (one CPU slice or one GPU each), joined in a process group (gloo
on CPUs, NCCL on GPUs). Every worker runs the job's own `train` with a `Replica`: it computes its
shard of every global batch and DDP averages the gradients, so a step equals one process's on the
whole batch. Rank 0 (the chief) writes the run folder and evaluates; each checkpoint it writes is
reported to Ray Train, which keeps the latest in the run folder, restarts the workers from it when
one dies (`FailureConfig`), and hands it back to a driver that runs the same folder again.
"""

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .configs import from_dict
from .errors import JobFailed, UserError
from .jobs import Job, enter_driver_directory
from .progress import task_progress
from .ray_session import Resources
from .run_folder import RunFolder

__all__ = ["SINGLE", "TRAIN_FAILURES", "Replica", "check_workers", "run_data_parallel"]

log = logging.getLogger("dni_pipeline.core")

TRAIN_FAILURES = 3  # worker-group restarts Ray Train makes before a run fails
STORAGE = "ray-train"  # the run folder's subfolder where Ray Train keeps its latest checkpoint


@dataclass(frozen=True)
class Replica:
    """Where this process stands among the copies of one run. The single-process path is
    `SINGLE`: chief, world 1, no collectives, no Ray Train."""

    rank: int = 0
    world: int = 1
    restored: str | None = None  # the checkpoint file Ray Train handed this attempt, if any

    @property
    def chief(self) -> bool:
        return self.rank == 0

    def shard(self, size: int) -> slice:
        """This replica's rows of a global batch of `size` (contiguous, sizes differing by at most one)."""
        return slice(self.rank * size // self.world, (self.rank + 1) * size // self.world)

    def wrap(self, module, device: str):
        """`module` as DDP when there are several replicas (its forward then synchronises gradients)."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device] if device.startswith("cuda") else None)

    def device(self, configured: str) -> str:
        """The torch device of this replica: a GPU of its own under Ray Train, else the configured one."""
        if self.world == 1 or configured == "cpu":
            return configured
        import ray.train.torch

        return str(ray.train.torch.get_device())

    def sum(self, value: float) -> float:
        """`value` summed over the replicas (a loss over the whole global batch)."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(total)
        return total.item()

    def broadcast(self, obj):
        """The chief's `obj`, on every replica (decisions the chief took, such as stopping early)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def checkpoint_to_load(self, folder: RunFolder) -> Path:
        return Path(self.restored) if self.restored else folder.checkpoint

    def checkpointed(self, path: Path, metrics: dict) -> None:
        """After the chief wrote the run's checkpoint `path`: hand a copy to Ray Train, which keeps the
        latest and restarts failed workers from it. Every replica calls this (it is a barrier)."""
        if self.world == 1:
            return
        import ray.train

        if not self.chief:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(path, Path(tmp) / path.name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


SINGLE = Replica()


def check_workers(workers: int, device: str, resources: Resources) -> None:
    """Refuse, before any work, a worker group the connected cluster cannot place all at once."""
    import ray

    have = ray.cluster_resources()
    if device == "cuda" and have.get("GPU", 0) < workers:
        raise UserError(f"--workers {workers} with --device cuda needs {workers} GPUs (one per worker) and the Ray "
                        f"cluster has {have.get('GPU', 0):g}: lower --workers, use --device cpu or join a cluster with GPUs")
    if workers * resources.num_cpus > have.get("CPU", 0):
        raise UserError(f"--workers {workers} x --num-cpus {resources.num_cpus:g} needs {workers * resources.num_cpus:g} "
                        f"CPUs and the Ray cluster has {have.get('CPU', 0):g}: lower --workers or --num-cpus, or join a "
                        "larger cluster with --address")


def _worker(config: dict) -> None:
    """One replica: the job's own training with this worker's rank, from Ray Train's latest checkpoint
    when it has one (a restart after a failure, or a driver running the folder again)."""
    import ray.train
    import torch

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    enter_driver_directory(config["cwd"])
    torch.set_num_threads(config["threads"])
    context, checkpoint = ray.train.get_context(), ray.train.get_checkpoint()
    job: Job = config["job"]
    folder = RunFolder.submitted(config["run_path"])
    restored = str(Path(checkpoint.path) / folder.checkpoint.name) if checkpoint else None
    replica = Replica(rank=context.get_world_rank(), world=context.get_world_size(), restored=restored)
    if config["config"]["device"] == "cuda":
        torch.cuda.set_device(replica.device("cuda"))  # NCCL's collectives run on the current device
    resume = config["resume"] or restored is not None or folder.checkpoint.is_file()
    if resume and replica.chief:
        log.info("replica 0 of %d resuming %s from %s", replica.world, folder.path, replica.checkpoint_to_load(folder))
    progress = task_progress(config["interactive"]) if replica.chief else None
    job.train(from_dict(job.config_class, config["config"]), folder, resume, progress, replica)


def run_data_parallel(job: Job, config: dict, run_path: str, workers: int, resources: Resources, *,
                      resume: bool = False) -> dict:
    """Train `config` (a job config as a dict, with its `device`) on `workers` Ray Train workers, each
    reserving `resources.num_cpus` CPUs (and as many torch threads) and, on cuda, one GPU; returns the
    summary the chief wrote. Call `check_workers` first."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    folder = RunFolder.submitted(run_path)
    cuda = config["device"] == "cuda"
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": job, "config": config, "run_path": str(folder.path), "cwd": os.getcwd(), "resume": resume,
                           "threads": max(1, int(resources.num_cpus)), "interactive": sys.stderr.isatty()},
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cuda, resources_per_worker={"CPU": resources.num_cpus}),
        run_config=RunConfig(name=STORAGE, storage_path=str(folder.path.resolve()),
                             failure_config=FailureConfig(max_failures=TRAIN_FAILURES),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)))
    log.info("%s: %d data-parallel workers on Ray Train (%s), %g CPU%s each", job.name, workers,
             "NCCL" if cuda else "gloo", resources.num_cpus, " and 1 GPU" if cuda else "")
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        raise JobFailed(f"{job.name} run {folder.path} failed on Ray Train after {TRAIN_FAILURES} restarts: {exc}") from None
    return folder.read_summary()
