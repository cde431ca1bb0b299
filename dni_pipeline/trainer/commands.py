"""`dni-pipeline train` and `dni-pipeline bench`: the unlocked trainer's commands."""

import argparse
import dataclasses
import time

from dni_pipeline.core.configs import load_config_file
from dni_pipeline.core.errors import UserError
from dni_pipeline.core.ray_session import connect_ray
from dni_pipeline.core.run_folder import RunFolder
from dni_pipeline.core.settings import DATA_DIR_ENV

from .bench import BenchConfig, check_networks, run_bench
from .bench_journal import bench_folder
from .config import DEFAULT_SG_HIDDEN, TrainConfig, build_config
from .data import data_from_config, place_data
from .delayed import STALENESS
from .driver import check_capacity
from .models import network_from_config
from .network import PRESETS
from .report import summary_table
from .stage import SG_UPDATES
from .stage_config import StageConfig
from .training import train_into_folder

__all__ = ["add_commands", "add_common_flags", "add_stages_and_epochs"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None


def add_stages_and_epochs(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--stages", type=int, help=f"K, the number of stage actors the network is split into (default "
                   f"{d.stages}); with --arch, one more than its hidden layers puts the head on a stage of its own")
    p.add_argument("--epochs", type=int, help=f"passes over the training set (default {d.epochs})")


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every command; every default lives in TrainConfig (flags left unset say None)."""
    d = TrainConfig()
    p.add_argument("--data-dir", help=f"folder holding the MNIST IDX files (or a mnist/ subfolder) and text/kjv.txt.gz; default ${DATA_DIR_ENV}")
    p.add_argument("--address", help="join the Ray cluster at host:port (or 'auto') instead of starting a local Ray")
    p.add_argument("--device", help="cpu (each stage reserves --cpus-per-stage CPUs) or cuda (each stage reserves one GPU)")
    p.add_argument("--cpus-per-stage", type=float,
                   help=f"CPUs each stage actor reserves; torch uses that many threads (default {d.cpus_per_stage:g})")
    p.add_argument("--seed", type=int, help=f"seed of weights, data order and synthetic data (default {d.seed})")
    p.add_argument("--out", help="run folder to create for summary.json, metrics.jsonl and plots (must be new or empty)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log more of what the system does")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The user's own model and data (train and bench)."""
    p.add_argument("--model", help=(
        "the network: a built-in (gpt: a character GPT; resnet: a pre-activation ResNet; emulated: stages whose "
        "compute is a stated wait, standing in for K devices) or an import path "
        "package.module:function returning an nn.Sequential, a list of stage modules or a factory "
        "build_stage(index, num_stages); its keyword options come from the config file's model_options "
        "(default: --arch)"))
    p.add_argument("--split", type=_int_list, help=(
        "where --model's nn.Sequential is cut: the index of the first child of every stage after the first, "
        "comma separated (default: balanced by parameter count)"))
    p.add_argument("--data", help=(
        "your data: an import path package.module:function, run on the cluster with the config file's "
        "data_options, returning ((x_train, y_train), (x_test, y_test)), a dict of those arrays or a (train, "
        "test) pair of torch Datasets (default: --dataset)"))


def add_delayed_flags(p: argparse.ArgumentParser) -> None:
    """The delayed mode's settings (train and bench)."""
    p.add_argument("--delay", type=int, help=(
        "--mode delayed: a stage steps on the gradient of the batch it computed this many steps before, waiting only "
        "if that one is late; 0 is locked backprop (default K - 1 - k for stage k, as DDG)"))
    p.add_argument("--staleness", choices=STALENESS, help=(
        "--mode delayed: what a batch in flight keeps for its late gradient: none (its graph on the weights it was "
        "computed with), recompute (its input, run again on the weights of now), lookahead (its graph on weights "
        f"extrapolated --delay steps along the last update); default {StageConfig.staleness}"))


def _add_train_command(commands) -> None:
    d = TrainConfig()
    train = commands.add_parser("train", help="train one pipeline run", description=(
        "Train a network split into K Ray stage actors. Flags override a --config file; "
        "the run folder gets summary.json, metrics.jsonl and curves.png."))
    add_stages_and_epochs(train)
    train.add_argument("--config", help="YAML or JSON file whose keys are the long flag names (e.g. batch_size: 256)")
    train.add_argument("--mode", help=(
        "backprop (locked, exact), gpipe or 1f1b (pipelined micro-batches, exact), dni (synthetic "
        f"gradients), cdni (label-conditioned SG), dgl (local auxiliary losses) or delayed (the true gradient, "
        f"applied --delay steps late); default {d.mode}"))
    train.add_argument("--dataset", help=(
        "mnist (needs --data-dir or --download), digits (bundled), synthetic, or kjv (the King James Bible as "
        f"next-character prediction, needs --data-dir; data_options: context, test_windows) (default {d.dataset})"))
    train.add_argument("--download", action="store_true", default=None,
                       help="download MNIST (md5-checked) into the data folder or ~/.cache/dni-pipeline when missing")
    add_model_flags(train)
    train.add_argument("--arch", help=f"a preset ({', '.join(f'{k}={v}' for k, v in PRESETS.items())}) or layers like 'fc256*3' or 'conv64p*2,fc256' (default {d.arch})")
    train.add_argument("--batch-size", type=int, help=f"mini-batch size (default {d.batch_size})")
    train.add_argument("--lr", type=float, help=f"Adam learning rate of every block not driven by a synthetic gradient (of every block under --sg-update paper); default {d.lr:g}")
    train.add_argument("--lr-schedule", help=f"constant or cosine (decay to 0 over the run); default {d.lr_schedule}")
    train.add_argument("--sg-hidden", type=_int_list, help=f"hidden widths of the SG model, comma separated, '' for linear (default cdni linear; dni {DEFAULT_SG_HIDDEN['dni']} for flat activations, two layers as wide as the channels or features for images and sequences)")
    train.add_argument("--sg-lr", type=float, help="Adam learning rate of the SG models (default: --lr)")
    train.add_argument("--sg-off", action="store_true", default=None,
                       help="ablation: only the last stage learns; the stages before it run their blocks forward only")
    train.add_argument("--sg-update", choices=SG_UPDATES, help=(
        "how a stage driven by its SG steps: gated (the prediction into Adam, its learning rate scaled by a lower "
        "bound on the measured cosine between Adam's step and the weight gradient the true target gives, over the "
        "same cosine for Adam's step on the measured true gradients alone), "
        "calibrated (the prediction scaled by its measured least-squares fit to the targets that come back, "
        "SGD with momentum), paper (the raw prediction into Adam, as Jaderberg et al.) or corrected (the optimizer's step "
        "on the prediction at once, taken back when the true gradient of the batch comes, at most --delay steps later, "
        "and the optimizer's step on that one taken instead); default corrected, gated with --synthetic-inputs"))
    train.add_argument("--sg-update-lr", type=float, help=f"SGD learning rate of SG-driven stages under --sg-update calibrated (default {d.sg_update_lr:g})")
    train.add_argument("--sg-trust-every", type=int, help=(
        "under --sg-update gated, steps between the batches on which a stage measures its SG step against the true "
        f"one (each costs one more backward of the block); default {d.sg_trust_every}"))
    add_delayed_flags(train)
    train.add_argument("--synthetic-inputs", action="store_true", default=None, help=(
        "dni and cdni: the complete unlock; every stage after the first also learns to predict its input from the "
        "batch's data, computes and updates on that prediction as soon as the driver hands it the batch, and waits for "
        "no other stage (the real inputs train the input models; see docs/training.md)"))
    train.add_argument("--input-hidden", type=_int_list,
                       help="hidden widths of the synthetic-input models, comma separated (default two as wide as the activation)")
    train.add_argument("--sg-probe-every", type=int, help=f"steps between measurements of each SG's cosine similarity to the true gradient, 0 never (default {d.sg_probe_every})")
    train.add_argument("--aux-hidden", type=_int_list,
                       help="hidden widths of dgl's auxiliary classifiers, comma separated (default linear)")
    train.add_argument("--micro-batches", type=int,
                       help=f"M, micro-batches per mini-batch in gpipe and 1f1b (default {d.micro_batches})")
    train.add_argument("--max-steps", type=int, help="stop after this many steps (default: --epochs full epochs)")
    train.add_argument("--eval-every", type=int, help="steps between test evaluations (default: once per epoch)")
    train.add_argument("--target-accuracy", type=float,
                       help="stop once the test accuracy reaches this fraction (time to accuracy)")
    train.add_argument("--target-bits", type=float,
                       help="stop once the test bits per token fall to this (a language model's time to target)")
    train.add_argument("--link-latency-ms", type=float,
                       help="delay added to every message between stages, emulating links between machines (default 0)")
    train.add_argument("--max-in-flight", type=int,
                       help="steps the driver lets into the pipeline before waiting (default 2K; backprop is always 1); under "
                            "--synthetic-inputs, the steps each stage may be fed ahead and the real inputs in flight")
    train.add_argument("--stage-delay-ms", type=_float_list,
                       help="extra milliseconds per training message at each stage, comma separated (emulates slower devices)")
    train.add_argument("--checkpoint-dir", help="where every stage saves its checkpoints: a path or URI all nodes can reach (default RUN/checkpoints)")
    train.add_argument("--checkpoint-every", type=int,
                       help="steps between stage checkpoints; a lost stage costs at most these (default 0: at each evaluation)")
    train.add_argument("--max-restarts", type=int,
                       help=f"times each stage actor is restarted after dying before the run gives up (default {d.max_restarts})")
    train.add_argument("--stall-timeout", type=float, help=f"seconds a stage may leave a ping unanswered before it is restarted as stuck (default {d.stall_timeout:g})")
    train.add_argument("--inject-nan", type=_int_list, help="fault injection for testing: STAGE,STEP makes that stage's input NaN at that step; the run stops naming it")
    train.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint, with its own config (only --data-dir and --address may change)")
    add_common_flags(train)
    train.set_defaults(func=cmd_train)



def _add_bench_command(commands) -> None:
    bench = commands.add_parser("bench",
                                help="throughput of modes side by side, with timelines and time to accuracy", description=(
        "Run the chosen modes and stage counts on the same model, data and resources, repetitions "
        "interleaved (A B C A B C ...), and write bench.json, bench.md and PNG plots to --out. The "
        "defaults are the reference configuration: K = 2 stages of 4 Linear(1024) layers, batch 256, MNIST."))
    bench.add_argument("--modes", type=_str_list, default=["backprop", "gpipe", "dni"], help=(
        "modes to compare, comma separated: the trainer's (backprop, gpipe, 1f1b, dni, cdni, dgl, delayed) and the peers "
        "single (one PyTorch process with every core the stages reserve), torch-gpipe, torch-1f1b and torch-zb "
        "(torch.distributed.pipelining on gloo, a process per stage; torch-zb is its interleaved zero-bubble "
        "schedule, two stages per process); dni+si and cdni+si are those with --synthetic-inputs (the complete "
        "unlock), dni+RULE and cdni+RULE those under --sg-update RULE (corrected, gated, calibrated, paper: rules side by "
        "side in one bench, e.g. dni+paper beside dni to see what the gate's measurements cost); default "
        "backprop,gpipe,dni"))
    bench.add_argument("--sg-off-rows", action="store_true",
                       help="add an SG-off ablation row ('dni sg-off') beside every SG mode: the same run with its SG models held at zero")
    bench.add_argument("--stages", type=_int_list, default=[2], help="stage counts to compare, comma separated (default 2)")
    bench.add_argument("--config", help=(
        "YAML or JSON file of train's keys (model, model_options, data, dataset, batch_size, ...) shared by every "
        "row; flags override it"))
    add_model_flags(bench)
    bench.add_argument("--dataset", help="mnist, digits, synthetic or kjv, as for train (default mnist)")
    bench.add_argument("--arch", help="the network when there is no --model, as for train (default fc1024*8: 4 layers "
                       "per stage at K = 2)")
    bench.add_argument("--batch-size", type=int, help="mini-batch size (default 256)")
    bench.add_argument("--micro-batches", type=int, help="M for gpipe and 1f1b (default 4)")
    bench.add_argument("--sg-hidden", type=_int_list, help=(
        "hidden widths of the SG models, '' for linear (default linear, the paper's cDNI choice, used for dni "
        "too: it fits the gradient faster than a 1024-128-1024 bottleneck and costs a quarter of a 4-layer "
        "block, where the paper's 1024,1024 costs as much as the block)"))
    bench.add_argument("--lr", type=float, help="Adam learning rate (default 0.001)")
    bench.add_argument("--sg-update", choices=[u for u in SG_UPDATES if u != "corrected"], help=(
        "how SG-driven stages step: gated, calibrated or paper, as for train (default gated); rows dni+RULE and "
        "cdni+RULE run another rule beside them"))
    bench.add_argument("--sg-update-lr", type=float,
                       help="SGD learning rate of SG-driven stages under calibrated (default 0.05)")
    add_delayed_flags(bench)
    bench.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every throughput cell (default 3)")
    bench.add_argument("--steps", type=int, default=60, help="training steps of each throughput run (default 60)")
    bench.add_argument("--link-latency-ms", type=_float_list, default=[0.0, 20.0],
                       help="latencies to sweep, ms per message, comma separated; the first is the baseline (default 0,20)")
    bench.add_argument("--target-accuracy", type=float, default=0.97,
                       help="test accuracy for the time-to-accuracy runs (default 0.97)")
    bench.add_argument("--target-bits", type=float,
                       help="a language model's target instead of accuracy: test bits per token at most this")
    bench.add_argument("--tta-epochs", type=int, default=3,
                       help="epochs after which a time-to-accuracy run gives up; 0 skips those runs (default 3)")
    bench.add_argument("--tta-steps", type=int, default=0,
                       help="steps after which a time-to-accuracy run gives up, if sooner than --tta-epochs (default 0: no cap)")
    bench.add_argument("--tta-reps", type=int, default=1,
                       help="time-to-accuracy runs per cell, interleaved; the table gives their median and range (default 1)")
    bench.add_argument("--resume", action="store_true", help=(
        "continue the unfinished bench in --out: the runs its journal (cells.jsonl) holds are not run again; give "
        "the flags it ran with (--data-dir and --address may differ, and the folder may have moved)"))
    bench.add_argument("--eval-every", type=int, default=25,
                       help="steps between evaluations and SG probes in time-to-accuracy runs (default 25)")
    add_common_flags(bench)
    bench.set_defaults(func=cmd_bench)



def add_commands(commands) -> None:
    """Register `train` and `bench`."""
    _add_train_command(commands)
    _add_bench_command(commands)


RESUME_FLAGS = ("data_dir", "address")  # where a resumed run finds its data and cluster may change; nothing else


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        changed = [k for k, v in vars(args).items() if v is not None and k in TrainConfig.__annotations__
                   and k not in RESUME_FLAGS] + (["config"] if args.config else [])
        if changed:
            raise UserError(f"--resume continues a run with its own config: drop --{changed[0].replace('_', '-')}")
        folder = RunFolder.existing(args.resume, checkpoint=RunFolder.MANIFEST)
        cfg = build_config(folder.read_manifest()["config"], {k: getattr(args, k) for k in RESUME_FLAGS})
    else:
        cfg = build_config(load_config_file(args.config) if args.config else {}, vars(args))
        folder = RunFolder(cfg.out or f"runs/{cfg.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    data = data_from_config(cfg)
    with connect_ray(cfg.address, cfg.stages * cfg.cpus_per_stage):
        check_capacity(cfg)
        summary = train_into_folder(cfg, data, folder, not args.no_progress, resume=bool(args.resume)).summary
    print(summary_table([summary]))
    print(f"results in {folder.path}/")


# The bench's reference configuration, under its config file and flags.
BENCH_DEFAULTS = {"dataset": "mnist", "arch": "fc1024*8", "batch_size": 256, "micro_batches": 4, "sg_hidden": [],
                  "lr": 1e-3, "sg_update": "gated", "sg_update_lr": 0.05}


def cmd_bench(args: argparse.Namespace) -> None:
    flags = {**vars(args), "stages": min(args.stages), "mode": "backprop", "link_latency_ms": 0.0,
             "target_accuracy": None, "target_bits": None,  # the targets are the time-to-target runs' (BenchConfig)
             "delay": None, "staleness": None}  # and these the delayed rows'

    file_values = load_config_file(args.config) if args.config else {}
    base = build_config({**BENCH_DEFAULTS, **file_values}, flags)
    bench = BenchConfig(base, modes=args.modes, stages=args.stages, reps=args.reps,
                        steps=args.steps, latencies=args.link_latency_ms, target_accuracy=args.target_accuracy,
                        tta_epochs=args.tta_epochs, eval_every=args.eval_every, sg_off_rows=args.sg_off_rows,
                        target_bits=args.target_bits, tta_steps=args.tta_steps, tta_reps=args.tta_reps, delay=args.delay,
                        staleness=args.staleness).validate()
    if args.resume and not args.out:
        raise UserError("--resume continues the bench in --out: give --out, the folder of the bench to continue")
    folder = bench_folder(args.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}", bench.resolved(),
                          args.resume)
    with connect_ray(bench.base.address, max(bench.stages) * bench.base.cpus_per_stage):
        for k in bench.stages:
            check_capacity(dataclasses.replace(bench.base, stages=k))
        data = place_data(data_from_config(bench.base))
        networks = {}  # built and checked for every K before the folder exists
        for k in bench.stages:
            networks[k] = network_from_config(dataclasses.replace(bench.base, stages=k), data)
            networks[k].prepare(data, "backprop")
        check_networks(bench, data, networks)
        folder.create()
        run_bench(bench, data, folder, progress=not args.no_progress, network_for=networks.get, resume=args.resume)
    print(folder.file("bench.md").read_text())
    print(f"results in {folder.path}/")
