"""Jobs as Ray tasks: one run with its own resources (retried from its checkpoint if its process or
node dies), or a sweep of configurations run as parallel tasks and ranked on one metric."""

import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from . import sweeps
from .configs import from_dict, with_values
from .progress import task_progress
from .ray_session import Resources
from .run_folder import RunFolder

__all__ = ["TASK_RETRIES", "Job", "enter_driver_directory", "run_sweep", "submit_job"]

log = logging.getLogger("dni_pipeline.core")

TASK_RETRIES = 3  # attempts after the first when a task's worker or node dies


@dataclass(frozen=True)
class Job:
    """A kind of job (diffusion, KG): its config dataclass, how to train one into a run folder, and
    what a sweep lists and ranks of its summaries."""

    name: str
    config_class: type  # a dataclass with validate(), possibly nesting its training config as `train`
    # train(cfg, folder, resume, progress, replica=SINGLE) -> summary (None off the chief replica);
    # `progress` is a tqdm-like class or None, `replica` a data_parallel.Replica
    train: Callable
    trial_figures: Callable[[dict], dict]  # summary -> the figures a sweep lists for a trial
    selection: Callable  # cfg -> (figure a sweep ranks on, whether higher is better)


def enter_driver_directory(cwd: str) -> None:
    """Work in the driver's directory where this node has it: relative paths in a config (--data-dir,
    --out) are the driver's, and Ray starts task and Ray Train workers elsewhere."""
    if os.path.isdir(cwd):
        os.chdir(cwd)


def _attempt(job: Job, config: dict, run_path: str, resume: bool, threads: int, interactive: bool, cwd: str) -> dict:
    """One attempt of a run, inside its task. An attempt that finds a checkpoint in the folder (an
    earlier attempt died after writing it) resumes from it."""
    import ray
    import torch

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")  # a task's logs reach the driver
    enter_driver_directory(cwd)
    torch.set_num_threads(threads)
    folder = RunFolder.submitted(run_path)
    resume = resume or folder.checkpoint.is_file()
    if resume:
        log.info("resuming %s from its checkpoint", run_path)
    summary = job.train(from_dict(job.config_class, config), folder, resume, task_progress(interactive))
    return {**summary, "resources": ray.get_runtime_context().get_assigned_resources()}


def submit_job(job: Job, cfg, run_path: str, resources: Resources, *, resume: bool = False):
    """Start `job.train` on `cfg` as a Ray task reserving `resources`; returns its ObjectRef (the
    summary, with the resources the task held). If the task's process or node dies, Ray runs it again
    (TASK_RETRIES times) and it continues from its checkpoint."""
    import ray

    task = ray.remote(_attempt).options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                        max_retries=TASK_RETRIES)
    return task.remote(job, dataclasses.asdict(cfg), str(run_path), resume, max(1, int(resources.num_cpus)),
                       sys.stderr.isatty(), os.getcwd())  # the driver's terminal decides bar or log lines


def run_sweep(job: Job, base, grid: dict[str, list], out: RunFolder, resources: Resources, *,
              samples: int | None = None, seed: int = 0) -> list[dict]:
    """The grid's combinations (or `samples` random ones) as parallel Ray tasks, each reserving
    `resources`; returns the trials, best first. `sweep.json` and `sweep.md` list every trial."""
    import ray

    combos = sweeps.combinations(grid, samples, seed=seed)
    configs = [with_values(base, combo) for combo in combos]  # validated before anything runs
    metric, higher_is_better = job.selection(base)
    out.create()
    refs = [submit_job(job, cfg, str(out.file(f"trial-{i:03d}")), resources) for i, cfg in enumerate(configs)]
    log.info("%s sweep: %d trials as Ray tasks of %g CPU and %g GPU each, ranked on %s", job.name, len(refs),
             resources.num_cpus, resources.num_gpus, metric)
    trials = [{"trial": f"trial-{i:03d}", **combo, **job.trial_figures(summary), "resources": summary["resources"]}
              for i, (combo, summary) in enumerate(zip(combos, ray.get(refs)))]
    trials.sort(key=lambda t: t[metric], reverse=higher_is_better)
    out.write_json("sweep.json", {"selected_on": metric, "best": trials[0], "trials": trials})
    figures = [k for k in trials[0] if k not in ("trial", "resources", *grid)]
    out.file("sweep.md").write_text(sweeps.markdown_table(trials, ["trial", *grid, *figures]))
    return trials
