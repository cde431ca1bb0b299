"""KG runs as Ray tasks: one run with its own resources, or a grid / random search of configurations
run as parallel tasks and selected on validation MRR (never on test)."""

import logging

import ray

from dni_pipeline import sweeps
from dni_pipeline.runtime import RunFolder, submit_run

from .run import KGRunConfig, run_kg
from .training import KGTrainConfig

__all__ = ["parse_grid", "submit", "sweep"]

log = logging.getLogger("dni_pipeline")


def _run(config: dict, run: RunFolder, resume: bool, progress) -> dict:
    return run_kg(KGRunConfig.from_dict(config), run, resume, progress=progress)


def submit(cfg: KGRunConfig, run_path: str, *, resume: bool = False, num_cpus: float = 1, num_gpus: float = 0):
    """Start one run as a Ray task reserving `num_cpus` / `num_gpus`; returns its ObjectRef (the summary)."""
    return submit_run(_run, cfg.to_dict(), run_path, resume=resume, num_cpus=num_cpus, num_gpus=num_gpus)


def parse_grid(items: list[str]) -> dict[str, list]:
    """`name=v1,v2` items into {name: [typed values]}; names are fields of the run or training config."""
    return sweeps.parse_grid(items, sweeps.config_fields(KGTrainConfig, KGRunConfig))


def sweep(base: KGRunConfig, grid: dict[str, list], out: RunFolder, *, samples: int | None = None,
          num_cpus: float = 1, num_gpus: float = 0) -> list[dict]:
    """The grid's combinations (or `samples` random ones) as parallel Ray tasks, best validation MRR
    first; `sweep.json` and `sweep.md` list every trial with its valid and test figures."""
    combos = sweeps.combinations(grid, samples, seed=base.train.seed)
    configs = [sweeps.with_values(base, combo) for combo in combos]  # validated before anything runs
    out.create()
    refs = [submit(cfg, str(out.file(f"trial-{i:03d}")), num_cpus=num_cpus, num_gpus=num_gpus)
            for i, cfg in enumerate(configs)]
    log.info("kg sweep: %d trials as Ray tasks of %g CPU each, selected on validation MRR", len(refs), num_cpus)
    trials = []
    for i, (combo, summary) in enumerate(zip(combos, ray.get(refs))):
        trials.append({"trial": f"trial-{i:03d}", **combo, "valid_mrr": round(summary["valid"]["mrr"], 4),
                       "test_mrr": round(summary["test"]["mrr"], 4), "test_hits@10": round(summary["test"]["hits@10"], 4),
                       "epochs": summary["epochs"], "train_seconds": summary["train_seconds"]})
    trials.sort(key=lambda t: -t["valid_mrr"])
    out.write_json("sweep.json", {"selected_on": "valid_mrr", "best": trials[0], "trials": trials})
    columns = ["trial", *grid, "valid_mrr", "test_mrr", "test_hits@10", "epochs", "train_seconds"]
    out.file("sweep.md").write_text(sweeps.markdown_table(trials, columns))
    return trials
