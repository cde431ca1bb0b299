"""The alignment job: one run into a run folder, checkpointed every epoch (`resume` continues from the last one),
bootstrapping between rounds, then the test pairs ranked under every inference and the alignment written out.

Outputs: `summary.json` (Hits@1, Hits@10, MRR per inference; the rounds and the precision of what each added),
`metrics.jsonl` (loss and seed count per epoch, test Hits@1 under CSLS at each round's end), `curves.png`,
`config.json`, `checkpoint.pt` (model, optimizer, seeds, counters; loaded with weights_only) and
`alignments.tsv` (URI of graph 1, URI of graph 2, score) for the test entities, or for every entity of graph 1.
"""

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
from dni_pipeline.core.plotting import plt, save_figure
from dni_pipeline.core.run_folder import RunFolder

from .data import AlignmentData, load_alignment
from .inference import INFERENCE, cosine, csls, evaluate_alignment, similarity
from .training import AlignTrainConfig, bootstrap, build_align_model, embeddings, make_align_optimizer, train_align_epoch

__all__ = ["ALIGN_JOB", "AlignJobConfig", "train_align", "write_alignments"]

log = logging.getLogger("kg.align")

WRITE = ("test", "all")


@dataclass
class AlignJobConfig:
    dataset: str = "dbp15k/zh_en"
    data_dir: str | None = None
    seed_fraction: float = 0.3  # of the reference pairs: the training seeds; the rest are the test
    split_seed: int = 0  # of the seed/test split
    valid_fraction: float = 0.0  # of the seeds, held out to select on (a sweep needs it); 0: the standard protocol
    train: AlignTrainConfig = field(default_factory=AlignTrainConfig)
    inference: str = "sinkhorn"  # what alignments.tsv and the headline figures use (every one is reported)
    write: str = "test"  # alignments.tsv for the test entities, or for every entity of graph 1
    device: str = "cpu"

    def validate(self) -> "AlignJobConfig":
        problems = self.train.problems()
        if not 0 < self.seed_fraction < 1:
            problems.append(f"--seed-fraction must lie in (0, 1) (got {self.seed_fraction}): 0.3 is the standard protocol")
        if not 0 <= self.valid_fraction < 1:
            problems.append(f"--valid-fraction must lie in [0, 1) (got {self.valid_fraction})")
        if self.inference not in INFERENCE:
            problems.append(f"invalid inference '{self.inference}': use one of {', '.join(INFERENCE)}")
        if self.write not in WRITE:
            problems.append(f"invalid --write '{self.write}': use test (the test entities) or all (every entity)")
        if self.device != "cpu":
            problems.append(f"kg align runs on cpu only for now (got --device {self.device})")
        if problems:
            raise UserError(problems[0])
        return self


def write_alignments(path, data: AlignmentData, emb: torch.Tensor, inference: str, which: str) -> int:
    """alignments.tsv: each source's best partner and its score. `test`: the test entities of graph 1 against those
    of graph 2 under `inference`; `all`: every entity of graph 1 against every one of graph 2 under CSLS (Sinkhorn
    needs the two sets matched in size). Returns the rows written."""
    if which == "test":
        sources, targets = data.test_pairs[:, 0], data.test_pairs[:, 1]
        scores = similarity(emb[torch.as_tensor(sources)], emb[torch.as_tensor(targets)], inference)
    else:
        sources, targets = np.arange(data.graph1_size), np.arange(data.graph1_size, data.num_entities)
        scores = csls(cosine(emb[:data.graph1_size], emb[data.graph1_size:]))
    best, column = scores.max(dim=1)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as out:
            for source, target, score in zip(sources, targets[column.numpy()], best.tolist()):
                out.write(f"{data.uris[source]}\t{data.uris[target]}\t{score:.6f}\n")
    return len(sources)


def _plot(path, records: list[dict], title: str) -> None:
    fig, (loss_ax, hits_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot([r["epoch"] for r in records], [r["loss"] for r in records])
    loss_ax.set(xlabel="epoch", ylabel="training loss", title=title)
    evaluated = [r for r in records if "test_hits@1" in r]
    hits_ax.plot([r["epoch"] for r in evaluated], [r["test_hits@1"] for r in evaluated], marker="o")
    hits_ax.set(xlabel="epoch", ylabel="test Hits@1 (CSLS)", ylim=(0, 1), title="at each round's end")
    for ax in (loss_ax, hits_ax):
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def _precision(added: np.ndarray, reference: set) -> float | None:
    return sum((int(a), int(b)) in reference for a, b in added) / len(added) if len(added) else None


def train_align(cfg: AlignJobConfig, folder: RunFolder, resume: bool = False, progress=None,
                replica: Replica = SINGLE) -> dict:
    """Train (or continue), bootstrap, evaluate and write the run folder; return the summary. `progress` is a
    tqdm-like class or None. One process: `replica` is the Job protocol's and must be SINGLE."""
    cfg.validate()
    t = cfg.train
    data = load_alignment(cfg.dataset, cfg.data_dir, cfg.seed_fraction, cfg.split_seed)
    model = build_align_model(t, data)
    optimizer = make_align_optimizer(t, model)
    state = {"epoch": 0, "train_seconds": 0.0, "rounds": []}
    held_out = int(round(cfg.valid_fraction * len(data.train_pairs)))
    seeds, valid_pairs = data.train_pairs[held_out:], data.train_pairs[:held_out]  # the seeds are in a random order
    if resume:
        saved = torch.load(folder.checkpoint, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state, seeds = saved["state"], saved["seeds"].numpy()
        folder.trim_metrics(lambda r: r["epoch"] <= state["epoch"])
        log.info("resumed %s at epoch %d", folder.path, state["epoch"])
    else:
        folder.create()
        folder.write_config(cfg)
        folder.trim_metrics(lambda r: r["epoch"] <= 0)
    log.info("align %s: %d + %d entities, %d relations, %d + %d triples, %d seeds, %d test pairs; %s for %d epochs, "
             "%d bootstrapping rounds", data.name, data.graph1_size, data.num_entities - data.graph1_size,
             data.num_relations, len(data.triples1), len(data.triples2), len(data.train_pairs), len(data.test_pairs),
             t.model, t.total_epochs(), t.rounds)
    reference = {(int(a), int(b)) for a, b in data.test_pairs}
    total, round_ends = t.total_epochs(), t.round_ends()
    bar = progress(desc=f"align {t.model} {data.name}", total=total, unit="epoch") if progress else None
    if bar:
        bar.update(state["epoch"])
    while state["epoch"] < total:
        start = time.time()
        loss = train_align_epoch(t, model, optimizer, seeds, state["epoch"])
        state["epoch"] += 1
        if not np.isfinite(loss):
            raise UserError(f"the alignment loss became {loss} at epoch {state['epoch']}: lower --lr")
        record = {"epoch": state["epoch"], "loss": loss, "seeds": len(seeds)}
        if state["epoch"] in round_ends:
            emb = embeddings(model)
            measured = evaluate_alignment(emb, data.test_pairs, data.graph1_size)
            record["test_hits@1"] = measured["csls"]["hits@1"]  # reported, never selected on
            record["test_hits@1_by_inference"] = {name: m["hits@1"] for name, m in measured.items()}
            added = bootstrap(model, seeds, data.test_pairs[:, 0], data.test_pairs[:, 1])
            seeds = np.concatenate([seeds, added])
            entry = {"after_epoch": state["epoch"], "added": len(added), "precision": _precision(added, reference),
                     "seeds": len(seeds)}
            state["rounds"].append(entry)
            log.info("align: round %d after epoch %d added %d seeds (precision %s), %d in all", len(state["rounds"]),
                     state["epoch"], len(added), entry["precision"], len(seeds))
        state["train_seconds"] += time.time() - start
        folder.append_metrics([record])
        with atomic_path(folder.checkpoint) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                        "seeds": torch.as_tensor(seeds)}, tmp)
        if bar:
            bar.update(1)
            bar.set_description(f"align {t.model} {data.name} loss {loss:.4f}")
    if bar:
        bar.close()
    start = time.time()
    emb = embeddings(model)
    results = evaluate_alignment(emb, data.test_pairs, data.graph1_size)
    written = write_alignments(folder.file("alignments.tsv"), data, emb, cfg.inference, cfg.write)
    valid = evaluate_alignment(emb, valid_pairs, data.graph1_size)[cfg.inference] if held_out else None
    headline = results[cfg.inference]
    summary = {"dataset": data.name, "model": t.model, "inference": cfg.inference,
               "hits@1": headline["hits@1"], "hits@10": headline["hits@10"], "mrr": headline["mrr"],
               "test": results, "valid": valid, "entities": [data.graph1_size, data.num_entities - data.graph1_size],
               "relations": data.num_relations, "triples": [len(data.triples1), len(data.triples2)],
               "seed_pairs": len(data.train_pairs) - held_out, "valid_pairs": held_out, "test_pairs": len(data.test_pairs),
               "protocol": (f"a {cfg.seed_fraction:g} share of the reference pairs (split seed {cfg.split_seed}) as "
                            "seeds; each test entity of graph 1 ranked among the test entities of graph 2 (all_*: "
                            "among every entity of graph 2)"),
               "epochs": state["epoch"], "rounds": state["rounds"], "alignments_written": written,
               "train_seconds": round(state["train_seconds"], 3), "eval_seconds": round(time.time() - start, 3),
               "resumed": resume, "config": dataclasses.asdict(cfg)}
    folder.write_summary(summary)
    _plot(folder.file("curves.png"), folder.read_metrics(), f"{t.model} on {data.name}")
    return summary


def _trial_figures(summary: dict) -> dict:
    return {"valid_hits@1": round(summary["valid"]["hits@1"], 4),
            "hits@1": round(summary["hits@1"], 4), "hits@10": round(summary["hits@10"], 4),
            "mrr": round(summary["mrr"], 4), "epochs": summary["epochs"], "train_seconds": summary["train_seconds"]}


def _selection(cfg: AlignJobConfig) -> tuple[str, bool]:
    """Never the test pairs: a sweep ranks on the seeds held out by --valid-fraction."""
    if not cfg.valid_fraction:
        raise UserError("a sweep of alignments selects on held-out seeds, never on the test pairs: add --valid-fraction "
                        "(for example 0.1 of the seeds)")
    return "valid_hits@1", True


ALIGN_JOB = Job(name="align", config_class=AlignJobConfig, train=train_align, trial_figures=_trial_figures,
                selection=_selection)
