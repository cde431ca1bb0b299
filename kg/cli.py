"""`dni-pipeline kg train|complete|sweep`: KG completion runs as Ray tasks on the local Ray or a cluster."""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import ray

from dni_pipeline.config import check_type, load_config_file
from dni_pipeline.errors import UserError
from dni_pipeline.runtime import RunFolder, check_task_resources, connect_ray, write_json_atomic

from .complete import complete, write_tsv
from .datasets import SHIPPED, load_kg
from .evaluate import answer_index
from .jobs import parse_grid, submit, sweep
from .models import MODELS
from .presets import preset
from .run import KGRunConfig, load_trained
from .training import KGTrainConfig

__all__ = ["add_kg_commands"]

TRAIN = KGTrainConfig()
RUN = KGRunConfig()
# Flag name -> help; defaults come from the preset of (dataset, model), shown by `kg train --help`.
TRAIN_FLAGS = {
    "dim": (int, "embedding size (complex numbers for complex and rotate)"),
    "loss": (str, "1vsall (cross-entropy over all entities) or negsamp (self-adversarial negative sampling); default by model"),
    "optimizer": (str, "adagrad or adam"),
    "lr": (float, "learning rate"),
    "batch_size": (int, "training triples per step (reciprocals included)"),
    "epochs": (int, "most epochs; early stopping usually ends sooner"),
    "n3": (float, "N3 regularisation weight (1vsall)"),
    "label_smoothing": (float, "label smoothing of the 1vsall cross-entropy"),
    "init_scale": (float, "std of the initial embeddings"),
    "negatives": (int, "negative tails per positive (negsamp)"),
    "adversarial_temperature": (float, "alpha of the self-adversarial weights (negsamp; 0 = uniform)"),
    "gamma": (float, "margin of the distance models"),
    "p_norm": (int, "TransE distance: 1 or 2"),
    "eval_every": (int, "epochs between validation MRRs"),
    "patience": (int, "validations without improvement before early stopping"),
    "time_budget": (float, "minutes of training after which the run stops at its next validation (0: none)"),
    "seed": (int, "seed of the embeddings, batches and negatives"),
}


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or JSON file whose keys are the long flag names (flags override it)")
    p.add_argument("--dataset", help=f"shipped: {', '.join(SHIPPED)}; or any folder name under --data-dir "
                                     f"(wn18rr, fb15k237, ...) holding train/valid/test.txt (default {RUN.dataset})")
    p.add_argument("--data-dir", help="folder holding DATASET/ or kg/DATASET/ (or set $DNI_PIPELINE_DATA)")
    p.add_argument("--download", action="store_true", default=None,
                   help="fetch a missing wn18rr or fb15k237 (sha256-checked) into --data-dir or the cache")
    p.add_argument("--unseen", help="valid/test triples whose entity or relation is not in train: drop (left out, "
                                    "counted in summary.json) or error (default drop)")
    p.add_argument("--model", help=f"{', '.join(MODELS)} (default {TRAIN.model})")
    for name, (kind, text) in TRAIN_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default: the preset for dataset and model)")
    p.add_argument("--device", help="cpu or cuda (with --num-gpus 1) (default cpu)")
    p.add_argument("--eval-batch-size", type=int, help=f"queries per score matrix in evaluation (default {RUN.eval_batch_size})")
    p.add_argument("--chunk-size", type=int, help=f"candidate entities per score matrix: bounds memory (default {RUN.chunk_size})")


def _ray_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="join the Ray cluster at host:port instead of starting a local Ray")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs each training task reserves (and torch threads) (default 1)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs each training task reserves (default 0)")


def _config(args: argparse.Namespace) -> KGRunConfig:
    """The preset for (dataset, model), overridden by the config file, overridden by the given flags."""
    file_values = load_config_file(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if v is not None}
    train_fields = {f.name: f.type for f in dataclasses.fields(KGTrainConfig)}
    run_fields = {f.name: f.type for f in dataclasses.fields(KGRunConfig) if f.name != "train"}
    unknown = sorted(set(file_values) - set(train_fields) - set(run_fields))
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(unknown)}: valid keys are {', '.join([*run_fields, *train_fields])}")
    for key, value in file_values.items():
        check_type(key, value, {**train_fields, **run_fields}[key])
    merged = {**file_values, **{k: v for k, v in flags.items() if k in train_fields or k in run_fields}}
    dataset, model = merged.get("dataset", RUN.dataset), merged.get("model", TRAIN.model)
    train = {**preset(dataset, model), **{k: v for k, v in merged.items() if k in train_fields}}
    return KGRunConfig(train=KGTrainConfig(**train), **{k: v for k, v in merged.items() if k in run_fields}).validate()


def _print_results(summary: dict) -> None:
    print(f"{summary['model']} on {summary['dataset']}: {summary['epochs']} epochs (best {summary['best_epoch']}), "
          f"train {summary['train_seconds']:.1f} s, test evaluation {summary['eval_seconds']:.2f} s")
    print(f"{'split':<6} {'MRR':>7} {'H@1':>7} {'H@3':>7} {'H@10':>7} {'pess. MRR':>10} {'random MRR':>11}")
    for split in ("valid", "test"):
        m = summary[split]
        extra = f"  AUC-PR {m['auc_pr']:.4f}" if "auc_pr" in m else ""
        print(f"{split:<6} {m['mrr']:7.4f} {m['hits@1']:7.4f} {m['hits@3']:7.4f} {m['hits@10']:7.4f} "
              f"{m['pessimistic']['mrr']:10.4f} {m['random_mrr']:11.4f}{extra}")
    if any(summary["unseen"].values()):
        print(f"left out of evaluation (entity or relation unseen in train): {summary['unseen']}")


def cmd_train(args: argparse.Namespace) -> None:
    resume = args.resume is not None
    if resume:
        run = RunFolder(args.resume, resume=True)
        cfg = KGRunConfig.from_dict(json.loads(run.file("config.json").read_text()))
        extended = {k: getattr(args, k) for k in ("epochs", "time_budget") if getattr(args, k) is not None}
        if extended:  # the settings a resumed run may change: how far it goes
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **extended)).validate()
            write_json_atomic(run.file("config.json"), cfg.to_dict())
    else:
        cfg = _config(args)
        run = RunFolder(args.out or f"runs/kg-{cfg.dataset}-{cfg.train.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        load_kg(cfg.dataset, cfg.data_dir, cfg.unseen, cfg.download)  # bad data fails before any work
    with connect_ray(args.address, args.num_cpus):
        check_task_resources(cfg.device, args.num_cpus, args.num_gpus)
        summary = ray.get(submit(cfg, str(run.path), resume=resume, num_cpus=args.num_cpus, num_gpus=args.num_gpus))
    _print_results(summary)
    print(f"results in {run.path}/")


def cmd_complete(args: argparse.Namespace) -> None:
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: folder {args.out.parent} does not exist: create it or choose another path")
    run = RunFolder(args.run, resume=True)
    _, data, model = load_trained(run)
    triples = complete(model, data, answer_index(data), head=args.head, relation=args.relation, tail=args.tail,
                       top_k=args.top_k)
    write_tsv(args.out, triples)
    for h, r, t, s in triples[:10]:
        print(f"{h}\t{r}\t{t}\t{s:.4f}")
    print(f"{len(triples)} predicted triples (none already known) in {args.out}")


def cmd_sweep(args: argparse.Namespace) -> None:
    base = _config(args)
    grid = parse_grid(args.grid)
    out = RunFolder(args.out or f"runs/kg-sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    load_kg(base.dataset, base.data_dir, base.unseen, base.download)
    with connect_ray(args.address, args.num_cpus):
        check_task_resources(base.device, args.num_cpus, args.num_gpus)
        trials = sweep(base, grid, out, samples=args.samples, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    print(out.file("sweep.md").read_text())
    best = trials[0]
    print(f"selected on validation MRR: {best['trial']} (valid {best['valid_mrr']:.4f}, test {best['test_mrr']:.4f}); "
          f"results in {out.path}/")


def add_kg_commands(commands, parser_class) -> None:
    """Register `kg train|complete|sweep` under the top-level command parser."""
    group = commands.add_parser("kg", help="knowledge-graph completion jobs as Ray tasks").add_subparsers(
        dest="kg_command", required=True, parser_class=parser_class)
    train = group.add_parser("train", help="train a KG embedding model (a Ray task) and evaluate it", description=(
        "Train a link-prediction model as one Ray task with early stopping on validation MRR, then evaluate the best "
        "model with the filtered protocol in both directions (realistic ties; pessimistic beside them). Defaults are "
        "tuned per dataset and model (kg/presets.py). The run folder gets summary.json, metrics.jsonl, curves.png, "
        "config.json and checkpoint.pt."))
    _run_flags(train)
    train.add_argument("--out", help="run folder to create (must be new or empty)")
    train.add_argument("--resume", help="continue the run in this folder from its last checkpoint, with its own config "
                                        "(--epochs and --time-budget may extend it; a run its budget stopped trains on)")
    _ray_flags(train)
    train.set_defaults(func=cmd_train)

    comp = group.add_parser("complete", help="write the top-k predicted triples that are not already known", description=(
        "Score candidate triples with a trained run's best model and write the top-k that are in none of the splits, "
        "as TSV (head, relation, tail, score). Give --head and/or --relation (or --tail and/or --relation); with "
        "neither, the whole graph is searched."))
    comp.add_argument("--run", required=True, help="a run folder written by `kg train`")
    comp.add_argument("--head", help="complete (HEAD, relation, ?)")
    comp.add_argument("--tail", help="complete (?, relation, TAIL)")
    comp.add_argument("--relation", help="only this relation (default: every relation)")
    comp.add_argument("--top-k", type=int, default=10, help="number of triples to write (default 10)")
    comp.add_argument("--out", type=Path, required=True, help="TSV file to write")
    comp.set_defaults(func=cmd_complete)

    sw = group.add_parser("sweep", help="grid or random search as parallel Ray tasks, selected on validation MRR")
    _run_flags(sw)
    sw.add_argument("--grid", action="append", required=True, help="name=v1,v2 (repeatable), e.g. --grid lr=0.05,0.1 --grid dim=200,1000")
    sw.add_argument("--samples", type=int, help="random search: run this many combinations drawn from the grid (default: all)")
    sw.add_argument("--out", help="folder for the trials, sweep.json and sweep.md (must be new or empty)")
    _ray_flags(sw)
    sw.set_defaults(func=cmd_sweep)
