"""Diffusion runs as Ray tasks: one run with its own resources, or a sweep of configurations run as
parallel tasks and ranked by sample quality."""

import logging

import ray

from dni_pipeline import sweeps
from dni_pipeline.runtime import RunFolder, submit_run

from .run import DiffusionRunConfig, run_diffusion
from .toys import TOYS
from .trainer import DiffusionTrainConfig

__all__ = ["submit", "sweep", "parse_grid", "rank_metric"]

log = logging.getLogger("dni_pipeline")


def rank_metric(dataset: str) -> str:
    """The quality metric trials are ranked by (lower is better, reported with floor and ceiling)."""
    return "energy_distance" if dataset in TOYS else "fd"


def _run(config: dict, run: RunFolder, resume: bool, progress) -> dict:
    return run_diffusion(DiffusionRunConfig.from_dict(config), run, resume, progress=progress)


def submit(cfg: DiffusionRunConfig, run_path: str, *, resume: bool = False, num_cpus: float = 1, num_gpus: float = 0):
    """Start one run as a Ray task reserving `num_cpus` / `num_gpus`; returns its ObjectRef (the summary)."""
    return submit_run(_run, cfg.to_dict(), run_path, resume=resume, num_cpus=num_cpus, num_gpus=num_gpus)


def parse_grid(items: list[str]) -> dict[str, list]:
    """`name=v1,v2` items into {name: [typed values]}; names are fields of the run or training config."""
    return sweeps.parse_grid(items, sweeps.config_fields(DiffusionTrainConfig, DiffusionRunConfig))


def sweep(base: DiffusionRunConfig, grid: dict[str, list], out: RunFolder, *, num_cpus: float = 1) -> list[dict]:
    """Every combination of the grid as a parallel Ray task; trials ranked by `rank_metric`."""
    names = list(grid)
    combos = sweeps.combinations(grid)
    configs = [sweeps.with_values(base, combo) for combo in combos]  # validated before anything runs
    out.create()
    refs = [submit(cfg, str(out.file(f"trial-{i:03d}")), num_cpus=num_cpus) for i, cfg in enumerate(configs)]
    log.info("sweep: %d trials as Ray tasks of %g CPU each", len(refs), num_cpus)
    trials = []
    for i, (combo, summary) in enumerate(zip(combos, ray.get(refs))):
        trials.append({"trial": f"trial-{i:03d}", **combo, **{k: v for k, v in summary.items() if k != "config"}})
    metric = rank_metric(base.dataset)
    trials.sort(key=lambda t: t[metric])
    out.write_json("sweep.json", trials)
    columns = ["trial", *names, metric, f"{metric}_floor", f"{metric}_ceiling", "train_seconds"]
    out.file("sweep.md").write_text(sweeps.markdown_table(trials, columns))
    return trials
