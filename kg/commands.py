"""`dni-pipeline kg train|sweep|complete|align|align-sweep`: KG completion and entity-alignment runs as Ray tasks on
the local Ray or a cluster."""

import argparse
import dataclasses
from pathlib import Path

from dni_pipeline.core.configs import check_file_values, load_config_file
from dni_pipeline.core.errors import UserError
from dni_pipeline.core.job_cli import JobCommands, add_job_commands, add_sweep_command, add_train_command
from dni_pipeline.core.run_folder import RunFolder

from .align.data import load_alignment
from .align.inference import INFERENCE
from .align.job import ALIGN_JOB, AlignJobConfig
from .align.training import ALIGN_MODELS, MODEL_DEFAULTS, AlignTrainConfig
from .datasets import SHIPPED, load_kg
from .job import KG_JOB, KGJobConfig
from .models import MODELS
from .presets import preset
from .training import KGTrainConfig

__all__ = ["add_commands"]

TRAIN = KGTrainConfig()
RUN = KGJobConfig()
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
    "precision": (str, "fp32 or bf16: the 1vsall score matrices in training (bf16 runs them about 3x faster on CPUs with "
                       "bf16 instructions and on GPUs; weights, loss and evaluation stay fp32)"),
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
    p.add_argument("--chunk-size", type=int,
                   help=f"candidate entities per score matrix: bounds memory (default {RUN.chunk_size})")


def _file_and_flags(args: argparse.Namespace, job_class, train_class) -> tuple[dict, dict]:
    """The config file's values overridden by the given flags, split into (training fields, job fields); a key of
    the file that neither config has is refused."""
    file_values = load_config_file(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if v is not None}
    train_fields = {f.name: f.type for f in dataclasses.fields(train_class)}
    job_fields = {f.name: f.type for f in dataclasses.fields(job_class) if f.name != "train"}
    check_file_values(file_values, {**job_fields, **train_fields})
    merged = {**file_values, **flags}
    return ({k: v for k, v in merged.items() if k in train_fields}, {k: v for k, v in merged.items() if k in job_fields})


def _config(args: argparse.Namespace) -> KGJobConfig:
    """The preset for (dataset, model), overridden by the config file, overridden by the given flags."""
    train, job = _file_and_flags(args, KGJobConfig, KGTrainConfig)
    train = {**preset(job.get("dataset", RUN.dataset), train.get("model", TRAIN.model)), **train}
    return KGJobConfig(train=KGTrainConfig(**train), **job).validate()


def _check_data(cfg: KGJobConfig) -> None:
    load_kg(cfg.dataset, cfg.data_dir, cfg.unseen, cfg.download)


def _show_summary(summary: dict) -> None:
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


def cmd_complete(args: argparse.Namespace) -> None:
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: folder {args.out.parent} does not exist: create it or choose another path")
    from .complete import complete, write_tsv
    from .evaluate import answer_index
    from .job import load_trained

    _, data, model = load_trained(RunFolder.existing(args.run))
    triples = complete(model, data, answer_index(data), head=args.head, relation=args.relation, tail=args.tail,
                       top_k=args.top_k)
    write_tsv(args.out, triples)
    for h, r, t, s in triples[:10]:
        print(f"{h}\t{r}\t{t}\t{s:.4f}")
    print(f"{len(triples)} predicted triples (none already known) in {args.out}")


COMMANDS = JobCommands(
    job=KG_JOB, help="knowledge-graph completion jobs as Ray tasks", train_description=(
        "Train a link-prediction model as one Ray task with early stopping on validation MRR, then evaluate the best "
        "model with the filtered protocol in both directions (realistic ties; pessimistic beside them). Defaults are "
        "tuned per dataset and model (kg/presets.py). The run folder gets summary.json, metrics.jsonl, curves.png, "
        "config.json and checkpoint.pt. A sweep selects on validation MRR, never on test."),
    add_flags=_run_flags, config_from_args=_config, check_data=_check_data, extendable=("epochs", "time_budget"),
    default_out=lambda cfg: f"kg-{cfg.dataset}-{cfg.train.model}", show_summary=_show_summary)


ALIGN = AlignJobConfig()
ALIGN_TRAIN_FLAGS = {
    "dim": (int, "embedding size per layer"),
    "optimizer": (str, "adam, rmsprop or sgd"),
    "lr": (float, "learning rate"),
    "batch_size": (int, "seed pairs per step (0: all of them)"),
    "epochs": (int, "epochs on the seeds before the first bootstrapping round"),
    "round_epochs": (int, "epochs after each bootstrapping round"),
}


def _align_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or JSON file whose keys are the long flag names (flags override it)")
    p.add_argument("--dataset", help=(f"a pair of graphs: a folder name under --data-dir's kg-align/ or the data "
                                      f"directory itself, or a folder path, holding ent_ids_1, ent_ids_2, triples_1, "
                                      f"triples_2 and ref_ent_ids (default {ALIGN.dataset})"))
    p.add_argument("--data-dir", help="folder holding kg-align/DATASET/ or DATASET/ (or set $DNI_PIPELINE_DATA)")
    p.add_argument("--seed-fraction", type=float, help=f"share of the reference pairs that are training seeds, in (0, 1); "
                                                        f"the rest are the test (default {ALIGN.seed_fraction})")
    p.add_argument("--split-seed", type=int, help=f"seed of the seed/test split (default {ALIGN.split_seed})")
    p.add_argument("--valid-fraction", type=float, help=(
        "share of the seeds held out to select on, in [0, 1); a sweep needs it (default 0: the standard protocol)"))
    p.add_argument("--model", help=f"{', '.join(ALIGN_MODELS)} (default {AlignTrainConfig.model})")
    for name, (kind, text) in ALIGN_TRAIN_FLAGS.items():
        defaults = ", ".join(f"{m} {d[name]}" for m, d in MODEL_DEFAULTS.items())
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default: the model's, {defaults})")
    p.add_argument("--rounds", type=int, help="bootstrapping rounds: each adds the mutual nearest neighbours under CSLS "
                                              "among the unpaired test entities to the seeds (default 0)")
    p.add_argument("--seed", type=int, help="seed of the weights, batches and negatives (default 0)")
    p.add_argument("--inference", help=f"{', '.join(INFERENCE)}: what alignments.tsv and the headline figures use; every "
                                       f"one is reported (default {ALIGN.inference})")
    p.add_argument("--write", help="alignments.tsv for the test entities (test) or for every entity of graph 1 under "
                                   f"CSLS (all) (default {ALIGN.write})")
    p.add_argument("--device", help="cpu (default cpu)")


def _align_config(args: argparse.Namespace) -> AlignJobConfig:
    """The models' defaults (AlignTrainConfig.resolved), overridden by the config file, overridden by the flags."""
    train, job = _file_and_flags(args, AlignJobConfig, AlignTrainConfig)
    return AlignJobConfig(train=AlignTrainConfig(**train), **job).validate()


def _check_alignment(cfg: AlignJobConfig) -> None:
    load_alignment(cfg.dataset, cfg.data_dir, cfg.seed_fraction, cfg.split_seed)


def _show_alignment(summary: dict) -> None:
    print(f"{summary['model']} on {summary['dataset']}: {summary['epochs']} epochs, {len(summary['rounds'])} "
          f"bootstrapping rounds, train {summary['train_seconds']:.1f} s, evaluation {summary['eval_seconds']:.1f} s")
    print(f"{'inference':<13} {'H@1':>7} {'H@10':>7} {'MRR':>7}")
    for name, m in summary["test"].items():
        print(f"{name:<13} {m['hits@1']:7.4f} {m['hits@10']:7.4f} {m['mrr']:7.4f}")
    for r in summary["rounds"]:
        print(f"round after epoch {r['after_epoch']}: {r['added']} seeds added, precision {r['precision']}")


ALIGN_COMMANDS = JobCommands(
    job=ALIGN_JOB, help="entity alignment of two knowledge graphs", train_description=(
        "Align the entities of two knowledge graphs as one Ray task: train an alignment model on the seed pairs "
        "(optionally bootstrapping more between rounds), then rank each test entity of graph 1 among the test "
        "entities of graph 2 under cosine, CSLS and Sinkhorn matching, and among every entity of graph 2. The run "
        "folder gets summary.json, metrics.jsonl, curves.png, config.json, checkpoint.pt and alignments.tsv."),
    add_flags=_align_flags, config_from_args=_align_config, check_data=_check_alignment,
    extendable=(), default_out=lambda cfg: f"align-{cfg.dataset.replace('/', '-')}-{cfg.train.model}",
    show_summary=_show_alignment)


def cmd_merge(args: argparse.Namespace) -> None:
    from .align.merge import write_completion_dataset

    dataset, fraction, split_seed, tsv = args.dataset, args.seed_fraction, args.split_seed, args.alignment
    if args.alignment not in ("none", "reference"):  # a `kg align` run: its pair of graphs, its split
        run = RunFolder.existing(args.alignment)
        cfg = run.read_config(AlignJobConfig)
        dataset, fraction, split_seed, tsv = cfg.dataset, cfg.seed_fraction, cfg.split_seed, str(run.file("alignments.tsv"))
        if cfg.data_dir and not args.data_dir:
            args.data_dir = cfg.data_dir
    data = load_alignment(dataset, args.data_dir, fraction, split_seed)
    counts = write_completion_dataset(data, tsv, args.out, args.holdout, args.seed)
    print(f"graph 1 of {data.name} {'alone' if args.alignment == 'none' else 'merged with graph 2 through ' + args.alignment}: "
          f"{counts['train']} train, {counts['valid']} valid, {counts['test']} test triples in {args.out}/ "
          f"(train on it: dni-pipeline kg train --data-dir {args.out.parent} --dataset {args.out.name})")


def add_commands(commands) -> None:
    """Register `kg train|sweep` (the shared skeleton), `kg complete`, and `kg align|align-sweep|merge`."""
    group = add_job_commands(commands, COMMANDS)
    add_train_command(group, ALIGN_COMMANDS, name="align", data_parallel=False)
    add_sweep_command(group, ALIGN_COMMANDS, name="align-sweep")
    merge = group.add_parser("merge", help="graph 1 of a pair, alone or merged with graph 2, as a completion dataset",
                             description=(
        "Hold out valid and test triples of graph 1 (each --holdout of them, all of whose entities and relation occur "
        "in training) and write train/valid/test.txt: graph 1's other triples, with graph 2's triples merged in "
        "through the alignment (each aligned entity named as its partner) unless --alignment none. Run `kg train` "
        "on the folder to measure what the other graph adds."))
    merge.add_argument("--alignment", required=True, help=(
        "none (graph 1 alone), reference (the reference alignment: the ceiling) or RUN, a `kg align` run folder "
        "(its seeds and its alignments.tsv; its pair and split)"))
    merge.add_argument("--dataset", default=ALIGN.dataset, help=f"the pair, as for kg align (default {ALIGN.dataset})")
    merge.add_argument("--data-dir", help="folder holding kg-align/DATASET/ (or set $DNI_PIPELINE_DATA)")
    merge.add_argument("--seed-fraction", type=float, default=ALIGN.seed_fraction, help="as for kg align")
    merge.add_argument("--split-seed", type=int, default=ALIGN.split_seed, help="as for kg align")
    merge.add_argument("--holdout", type=float, default=0.05, help="share of graph 1's triples held out for test, "
                                                                   "and as many for valid (default 0.05)")
    merge.add_argument("--seed", type=int, default=0, help="seed of the held-out draw (default 0)")
    merge.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    merge.set_defaults(func=cmd_merge)
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
