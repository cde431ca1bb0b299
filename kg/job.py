"""The KG job: one completion run into a run folder, trained with early stopping on validation MRR
and checkpointed every epoch (`resume` continues from the last one), then the best model evaluated
on valid and test; and what a sweep lists and ranks of its runs.

Outputs: `summary.json`, `metrics.jsonl` (loss per epoch, validation metrics when measured),
`curves.png`, `config.json`, `checkpoint.pt` (model, optimizer, best model, counters; loaded with
weights_only).

Data-parallel (`--workers N`, on Ray Train), every replica trains its shard of each batch; the chief
alone validates, decides when to stop (the others follow its decision), writes the folder and
evaluates: the folder is the same as one process's.
"""

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dni_pipeline.core.data_parallel import SINGLE, Replica
from dni_pipeline.core.errors import UserError
from dni_pipeline.core.files import atomic_path
from dni_pipeline.core.jobs import Job
from dni_pipeline.core.run_folder import RunFolder

from .datasets import KGDataset, load_kg, with_reciprocals
from .evaluate import answer_index, evaluate, random_mrr, region_auc_pr
from .models import KGModel, build_model
from .plots import plot_kg_curves
from .training import KGTrainConfig, TrainingLoss, make_optimizer, train_epoch

__all__ = ["KG_JOB", "KGJobConfig", "load_trained", "train_kg"]

log = logging.getLogger("kg")


@dataclass
class KGJobConfig:
    dataset: str = "nations"
    data_dir: str | None = None
    unseen: str = "drop"  # valid/test triples with entities or relations unseen in train: drop or error
    download: bool = False  # fetch a missing wn18rr / fb15k237 (sha256-checked)
    train: KGTrainConfig = field(default_factory=KGTrainConfig)
    device: str = "cpu"  # or cuda
    eval_batch_size: int = 256  # queries scored per matrix product
    chunk_size: int = 8192  # candidate entities per matrix product (bounds memory)

    def validate(self) -> "KGJobConfig":
        problems = self.train.problems()
        if self.device not in ("cpu", "cuda"):
            problems.append(f"invalid device '{self.device}': use cpu or cuda")
        if self.eval_batch_size < 1 or self.chunk_size < 1:
            problems.append("--eval-batch-size and --chunk-size must be at least 1")
        if problems:
            raise UserError(problems[0])
        return self


def _build(cfg: KGJobConfig, data: KGDataset, device: str) -> KGModel:
    t = cfg.train
    return build_model(t.model, data.num_entities, data.num_relations, dim=t.dim, init_scale=t.init_scale,
                       gamma=t.gamma, p_norm=t.p_norm, seed=t.seed).to(device)


def load_trained(folder: RunFolder) -> tuple[KGJobConfig, KGDataset, KGModel]:
    """A finished (or interrupted) run's config, dataset and best model so far."""
    cfg = folder.read_config(KGJobConfig)
    data = load_kg(cfg.dataset, cfg.data_dir, cfg.unseen, cfg.download)
    model = _build(cfg, data, cfg.device)
    state = torch.load(folder.checkpoint, map_location=cfg.device, weights_only=True)
    model.load_state_dict(state["best_model"] or state["model"])
    return cfg, data, model.eval()


def train_kg(cfg: KGJobConfig, folder: RunFolder, resume: bool = False, progress=None,
             replica: Replica = SINGLE) -> dict | None:
    """Train (or continue), evaluate and write the run folder; return the summary (None on replicas
    other than the chief). `progress` is a tqdm-like class (inside a Ray task,
    ray.experimental.tqdm_ray.tqdm) or None."""
    cfg.validate()
    t = cfg.train
    device = replica.device(cfg.device)
    data = load_kg(cfg.dataset, cfg.data_dir, cfg.unseen, cfg.download)
    index = answer_index(data)
    train_triples = with_reciprocals(data.splits["train"], data.num_relations)
    batches = -(-len(train_triples) // t.batch_size)  # optimizer steps per epoch
    model = _build(cfg, data, device)
    optimizer = make_optimizer(t, model)
    state = {"epoch": 0, "best_mrr": -1.0, "best_epoch": 0, "bad_evals": 0, "stopped": False, "stop_reason": None,
             "train_seconds": 0.0}
    best_model = None
    checkpoint = folder.checkpoint
    if resume:
        saved = torch.load(replica.checkpoint_to_load(folder), map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        best_model, state = saved["best_model"], saved["state"]
        if state.get("stop_reason") == "time budget" and state["train_seconds"] < 60 * t.time_budget:
            state.update(stopped=False, stop_reason=None)  # resumed with a larger budget: train on
        if replica.chief:
            folder.trim_metrics(lambda r: r["epoch"] <= state["epoch"])
            log.info("resumed %s at epoch %d", folder.path, state["epoch"])
    elif replica.chief:
        folder.create()
        folder.write_config(cfg)
        folder.trim_metrics(lambda r: r["epoch"] <= 0)  # an attempt that died before its first checkpoint
    if replica.chief:
        log.info("kg %s: %d entities, %d relations, %d train triples (x2 with reciprocals); %s trained %s on %d "
                 "replica(s)", data.name, data.num_entities, data.num_relations, len(data.splits["train"]), t.model,
                 t.loss_kind, replica.world)
    loss_module = replica.wrap(TrainingLoss(t, model), device)
    bar = progress(desc=f"kg {t.model} {data.name}", total=t.epochs, unit="epoch") if progress else None
    if bar:
        bar.update(state["epoch"])
    while state["epoch"] < t.epochs and not state["stopped"]:
        start = time.time()
        loss = train_epoch(t, loss_module, optimizer, train_triples, state["epoch"], device=device, replica=replica,
                           on_batch=(lambda f: bar.update(min(f, t.epochs - bar.n))) if bar else None)
        state["train_seconds"] += time.time() - start
        state["epoch"] += 1
        if not np.isfinite(loss):
            raise UserError(f"the training loss became {loss} at epoch {state['epoch']}: lower --lr")
        record = {"epoch": state["epoch"], "loss": loss}
        if replica.chief and (state["epoch"] % t.eval_every == 0 or state["epoch"] == t.epochs):
            valid = evaluate(model, data, "valid", index, batch_size=cfg.eval_batch_size, chunk_size=cfg.chunk_size)
            record.update({f"valid_{k}": valid[k] for k in ("mrr", "hits@1", "hits@10")})
            if valid["mrr"] > state["best_mrr"]:
                state.update(best_mrr=valid["mrr"], best_epoch=state["epoch"], bad_evals=0)
                best_model = copy.deepcopy(model.state_dict())
            else:
                state["bad_evals"] += 1
                if state["bad_evals"] >= t.patience:
                    state.update(stopped=True, stop_reason="patience")
            if t.time_budget and state["train_seconds"] >= 60 * t.time_budget and not state["stopped"]:
                log.info("kg: time budget of %g min spent at epoch %d", t.time_budget, state["epoch"])
                state.update(stopped=True, stop_reason="time budget")
        state = replica.broadcast(state)  # the chief's clock and decision to stop, on every replica
        if replica.chief:
            folder.append_metrics([record])
            with atomic_path(checkpoint) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "best_model": best_model, "state": state}, tmp)
        replica.checkpointed(checkpoint, {"epoch": state["epoch"]})
        if bar:
            bar.set_description(f"kg {t.model} {data.name} loss {loss:.4f} valid mrr {state['best_mrr']:.3f}")
    if bar:
        bar.close()
    if not replica.chief:
        return None
    if best_model is not None:
        model.load_state_dict(best_model)
    results = {}
    for split in ("valid", "test"):
        start = time.time()
        results[split] = evaluate(model, data, split, index, batch_size=cfg.eval_batch_size, chunk_size=cfg.chunk_size)
        results[split]["random_mrr"] = random_mrr(data, split, index)
        if data.regions:
            results[split]["auc_pr"] = region_auc_pr(model, data, split)
        results[split]["eval_seconds"] = round(time.time() - start, 3)
    summary = {"dataset": data.name, "model": t.model, "loss": t.loss_kind, "dim": t.dim,
               "entities": data.num_entities, "relations": data.num_relations,
               "triples": {s: len(x) for s, x in data.splits.items()}, "unseen": data.unseen,
               "epochs": state["epoch"], "best_epoch": state["best_epoch"], "stopped_by": state.get("stop_reason"),
               "steps": state["epoch"] * batches, "planned_steps": t.epochs * batches,
               "valid": results["valid"], "test": results["test"],
               "train_seconds": round(state["train_seconds"], 3), "eval_seconds": results["test"]["eval_seconds"],
               "workers": replica.world,
               "resumed": resume, "config": dataclasses.asdict(cfg)}
    folder.write_summary(summary)
    plot_kg_curves(folder.file("curves.png"), folder.read_metrics(), f"{t.model} on {data.name}")
    return summary


def _trial_figures(summary: dict) -> dict:
    return {"valid_mrr": round(summary["valid"]["mrr"], 4), "test_mrr": round(summary["test"]["mrr"], 4),
            "test_hits@10": round(summary["test"]["hits@10"], 4), "epochs": summary["epochs"],
            "train_seconds": summary["train_seconds"]}


def _selection(cfg: KGJobConfig) -> tuple[str, bool]:
    return "valid_mrr", True  # never test: the test split only reports


KG_JOB = Job(name="kg", config_class=KGJobConfig, train=train_kg, trial_figures=_trial_figures, selection=_selection)
