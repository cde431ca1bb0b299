"""The command-line skeleton every job shares: the parser whose errors are one line and exit 2, the
Ray flags, and a job's `train` (new or `--resume`, one Ray task or `--workers N` on Ray Train) and
`sweep` commands."""

import argparse
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from .configs import with_values
from .data_parallel import check_workers, run_data_parallel
from .jobs import Job, run_sweep, submit_job
from .ray_session import Resources, check_task_resources, connect_ray
from .run_folder import RunFolder
from .sweeps import config_fields, parse_grid

__all__ = ["JobCommands", "Parser", "add_job_commands", "add_ray_flags", "add_sweep_command", "add_train_command",
           "resources_from"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line and exit code 2, like every other bad input."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="join the Ray cluster at host:port instead of starting a local Ray")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs each training task reserves (and torch threads) (default 1)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs each training task reserves (default 0)")


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"{workers}: use at least 1 (1 trains in one Ray task, N > 1 on Ray Train)")
    return workers


def resources_from(args: argparse.Namespace) -> Resources:
    return Resources(num_cpus=args.num_cpus, num_gpus=args.num_gpus)


@dataclass(frozen=True)
class JobCommands:
    """What a job adds to the skeleton: its flags, how they make a config, and how its results read."""

    job: Job
    help: str
    train_description: str
    add_flags: Callable[[argparse.ArgumentParser], None]  # the flags of the job's config
    config_from_args: Callable[[argparse.Namespace], object]  # defaults, config file, flags -> a validated config
    check_data: Callable[[object], None]  # bad data fails before any work
    extendable: tuple[str, ...]  # fields a resumed run may change: how far it goes
    default_out: Callable[[object], str]  # a run folder name for a config
    show_summary: Callable[[dict], None]


def _train(spec: JobCommands, args: argparse.Namespace) -> None:
    import ray

    resume = args.resume is not None
    if resume:
        folder = RunFolder.existing(args.resume)
        cfg = folder.read_config(spec.job.config_class)
        extended = {k: getattr(args, k) for k in spec.extendable if getattr(args, k) is not None}
        if extended:
            cfg = with_values(cfg, extended)
            folder.write_config(cfg)
    else:
        cfg = spec.config_from_args(args)
        folder = RunFolder(args.out or f"runs/{spec.default_out(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}")
        spec.check_data(cfg)
    resources = resources_from(args)
    # A local Ray the machine's size: the workers must fit it.
    with connect_ray(args.address, resources.num_cpus, dashboard=args.workers > 1):
        if args.workers == 1:
            check_task_resources(cfg.device, resources)
            summary = ray.get(submit_job(spec.job, cfg, str(folder.path), resources, resume=resume))
        else:
            check_workers(args.workers, cfg.device, resources)
            summary = run_data_parallel(spec.job, dataclasses.asdict(cfg), str(folder.path), args.workers, resources,
                                        resume=resume)
    spec.show_summary(summary)
    print(f"results in {folder.path}/")


def _sweep(spec: JobCommands, args: argparse.Namespace) -> None:
    base = spec.config_from_args(args)
    grid = parse_grid(args.grid, config_fields(base.train, base))
    out = RunFolder(args.out or f"runs/{spec.job.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    spec.check_data(base)
    resources = resources_from(args)
    with connect_ray(args.address, resources.num_cpus):
        check_task_resources(base.device, resources)
        trials = run_sweep(spec.job, base, grid, out, resources, samples=args.samples, seed=base.train.seed)
    print(out.file("sweep.md").read_text())
    metric = spec.job.selection(base)[0]
    print(f"selected on {metric}: {trials[0]['trial']} ({metric} {trials[0][metric]}); results in {out.path}/")


def add_train_command(group, spec: JobCommands, name: str = "train", data_parallel: bool = True) -> None:
    """`NAME train` (or `name`): one run as a Ray task, new or `--resume`d; `--workers N` on Ray Train where the job
    trains data-parallel."""
    train = group.add_parser(name, help=f"train one {spec.job.name} run as a Ray task", description=spec.train_description)
    spec.add_flags(train)
    train.add_argument("--out", help="run folder to create (must be new or empty)")
    train.add_argument("--resume", metavar="RUN", help=(
        f"continue the run in folder RUN from its last checkpoint, with its own config "
        f"({', '.join('--' + k.replace('_', '-') for k in spec.extendable)} may extend it)"))
    add_ray_flags(train)
    if data_parallel:
        train.add_argument("--workers", type=_workers, default=1, help=(
            "data-parallel replicas on Ray Train (TorchTrainer, DDP on gloo or NCCL), each reserving --num-cpus CPUs "
            "and, with --device cuda, one GPU, and computing its shard of every batch; 1 (the default) trains in one "
            "Ray task. The cluster must place them all at once"))
    else:
        train.set_defaults(workers=1)
    train.set_defaults(func=lambda args: _train(spec, args))


def add_sweep_command(group, spec: JobCommands, name: str = "sweep") -> None:
    """`NAME sweep` (or `name`): a grid or random search of the job's configurations as parallel Ray tasks."""
    sweep = group.add_parser(name, help=f"a grid or random search of {spec.job.name} configurations as parallel Ray "
                                        "tasks, ranked")
    spec.add_flags(sweep)
    sweep.add_argument("--grid", action="append", required=True,
                       help="name=v1,v2 (repeatable): a field of the config and the values it takes, e.g. --grid lr=1e-3,2e-3")
    sweep.add_argument("--samples", type=int, help="random search: run this many combinations drawn from the grid (default: all)")
    sweep.add_argument("--out", help="folder for the trials, sweep.json and sweep.md (must be new or empty)")
    add_ray_flags(sweep)
    sweep.set_defaults(func=lambda args: _sweep(spec, args))


def add_job_commands(commands, spec: JobCommands):
    """Register `NAME train|sweep`; returns the job's command group, for commands of its own."""
    group = commands.add_parser(spec.job.name, help=spec.help).add_subparsers(
        dest=f"{spec.job.name}_command", required=True, parser_class=Parser)
    add_train_command(group, spec)
    add_sweep_command(group, spec)
    return group
