"""`dni-pipeline`: the one root parser over every domain's commands, and the demo that runs them
together. Only the chosen command's domain is imported, so `dni-pipeline cluster stop` starts in a
blink without torch, scikit-learn or matplotlib."""

import argparse
import logging
import sys
import time

from dni_pipeline.core.errors import JobFailed, JobInterrupted, UserError
from dni_pipeline.core.job_cli import Parser

__all__ = ["build_parser", "entry", "main"]

log = logging.getLogger("dni_pipeline")

# command -> (the domain that registers it, one line of help); only the chosen command's domain is imported.
COMMANDS = {
    "train": ("trainer", "train one pipeline run"),
    "bench": ("trainer", "throughput of modes side by side, with timelines and time to accuracy"),
    "demo": ("demo", "local demo: one process, locked backprop and unlocked stages race to one accuracy; then DDPM and KG tasks"),
    "diffusion": ("diffusion", "DDPM training jobs as Ray tasks"),
    "kg": ("kg", "knowledge-graph completion jobs as Ray tasks"),
    "cluster": ("ops", "a multi-node Ray cluster on this machine; check deploy files"),
}


def _register(domain: str, commands) -> None:
    """Let `domain` add the full parsers of its commands."""
    if domain == "trainer":
        from dni_pipeline.trainer.commands import add_commands
    elif domain == "diffusion":
        from diffusion.commands import add_commands
    elif domain == "kg":
        from kg.commands import add_commands
    elif domain == "ops":
        from dni_pipeline.ops.commands import add_commands
    else:
        add_commands = _add_demo_command
    add_commands(commands)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The root parser: every command listed, and the full parsers of the domain of the one `argv` names
    (of every domain when `argv` is None, as for tests of every flag)."""
    parser = Parser(prog="dni-pipeline", description=(
        "Unlocked (DNI) training of a network split over Ray actors, with locked baselines on the same actors; "
        "DDPM and knowledge-graph completion jobs as Ray tasks on the same cluster."))
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for domain in dict.fromkeys(domain for name, (domain, _) in COMMANDS.items() if argv is None or name == chosen):
        _register(domain, commands)
    for name, (_, text) in COMMANDS.items():
        if name not in commands.choices:
            commands.add_parser(name, help=text)
    return parser


def _add_demo_command(commands) -> None:
    from dni_pipeline.trainer.commands import add_common_flags, add_stages_and_epochs

    demo = commands.add_parser("demo", help=COMMANDS["demo"][1], description=(
        "Start a local Ray and race, to the same test accuracy on the same model, data order and cores: one "
        "PyTorch process with all the cores, locked backprop on the stage actors, and the unlocked modes dgl "
        "and cdni; print time to accuracy and samples/s and say which won. Then a DDPM (two moons) and a KG "
        "completion job (ComplEx on UMLS) run as Ray tasks on the same cluster, after the race so every mode "
        "had the same machine. Uses MNIST when found, else downloads it (md5-checked, into the cache); offline, "
        "it says so and races scikit-learn's digits with 20 ms per message between stages, the slow link "
        "unlocking is for."))
    add_stages_and_epochs(demo)
    add_common_flags(demo)
    demo.add_argument("--no-download", action="store_true",
                      help="never download MNIST: without it in --data-dir or the cache, race the digits")
    demo.set_defaults(func=cmd_demo)


DEMO_UNLOCKED = ("dgl", "cdni")
DEMO_SETTINGS = {  # the bench's reference model on MNIST; a small one on the 1,437 training digits, which every mode
    # fits in under a second on one machine, so there the stages talk over an emulated slow link (one process has none)
    "mnist": {"arch": "fc1024*8", "batch_size": 256, "target": 0.97, "epochs": 3, "eval_every": 25, "latency_ms": 0.0},
    "digits": {"arch": "fc256*4", "batch_size": 64, "target": 0.95, "epochs": 30, "eval_every": 11, "latency_ms": 20.0},
}


def demo_dataset(data_dir, download: bool) -> str:
    """mnist where its files are found or can be fetched into the cache; digits otherwise, saying why."""
    from dni_pipeline.core.datasets import download_mnist, find_mnist
    from dni_pipeline.core.settings import CACHE_DIR, DATA_DIR_ENV

    if find_mnist(data_dir):
        return "mnist"
    if download:
        log.info("MNIST not found in %s: downloading it (11 MB, md5-checked) into %s", data_dir or f"${DATA_DIR_ENV}",
                 CACHE_DIR / "mnist")
        try:
            download_mnist(CACHE_DIR / "mnist")
            return "mnist"
        except UserError as exc:
            log.warning("%s", exc)
    log.warning("no MNIST (give --data-dir or $%s, or let the demo download it): the race runs on scikit-learn's "
                "digits, with %g ms per message between stages", DATA_DIR_ENV, DEMO_SETTINGS["digits"]["latency_ms"])
    return "digits"


def cmd_demo(args: argparse.Namespace) -> None:
    """The demo is built when it runs: a small bench of the trainer, then a diffusion task and a KG task."""
    import ray

    from diffusion.job import DIFFUSION_JOB, DiffusionJobConfig
    from dni_pipeline.core.datasets import load_dataset
    from dni_pipeline.core.jobs import submit_job
    from dni_pipeline.core.ray_session import Resources, connect_ray
    from dni_pipeline.core.run_folder import RunFolder
    from dni_pipeline.core.settings import resolve_data_dir
    from dni_pipeline.trainer.bench import BenchConfig, run_bench
    from dni_pipeline.trainer.config import build_config
    from dni_pipeline.trainer.driver import check_capacity
    from kg.job import KG_JOB, KGJobConfig
    from kg.presets import preset
    from kg.training import KGTrainConfig

    dataset = demo_dataset(resolve_data_dir(args.data_dir), download=not args.no_download)
    s = DEMO_SETTINGS[dataset]
    flags = {k: v for k, v in vars(args).items() if k not in ("out", "address", "epochs", "no_download")}
    base = build_config({}, {**flags, "dataset": dataset, "mode": "backprop", "arch": s["arch"],
                             "batch_size": s["batch_size"], "sg_hidden": [], "stages": args.stages or 2})
    bench = BenchConfig(base, modes=["single", "backprop", *DEMO_UNLOCKED], stages=[base.stages], reps=1, steps=40,
                        latencies=[s["latency_ms"]], target_accuracy=s["target"], tta_epochs=args.epochs or s["epochs"],
                        eval_every=s["eval_every"]).validate()
    root = RunFolder(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    diffusion_folder, kg_folder = RunFolder(root.path / "diffusion-moons"), RunFolder(root.path / "kg-umls")
    data = load_dataset(dataset, args.data_dir, seed=base.seed)
    kg_cfg = KGJobConfig(dataset="umls", train=KGTrainConfig(**preset("umls", "complex")))
    with connect_ray(args.address, base.stages * base.cpus_per_stage):
        check_capacity(base)
        root.create()
        log.info("race to %g%% test accuracy on %s: %s, %d stages of %s, %g ms per message", 100 * s["target"], dataset,
                 ", ".join(bench.modes), base.stages, s["arch"], s["latency_ms"])
        entries = {e["mode"]: e for e in run_bench(bench, data, root, progress=not args.no_progress)}
        log.info("diffusion: DDPM on two moons and kg: ComplEx on UMLS, as Ray tasks side by side")
        ddpm, kg_summary = ray.get([
            submit_job(DIFFUSION_JOB, DiffusionJobConfig(dataset="moons"), str(diffusion_folder.path), Resources()),
            submit_job(KG_JOB, kg_cfg, str(kg_folder.path), Resources()),
        ])
    print(root.file("bench.md").read_text())
    print(demo_verdict(entries, s["target"], base.stages * base.cpus_per_stage))
    print(f"diffusion (two moons, {ddpm['steps']} steps): energy distance {ddpm['energy_distance']:.4f} "
          f"(floor {ddpm['energy_distance_floor']:.4f}, ceiling {ddpm['energy_distance_ceiling']:.4f})")
    print(f"kg (ComplEx on UMLS, {kg_summary['epochs']} epochs): filtered test MRR {kg_summary['test']['mrr']:.4f} "
          f"(random {kg_summary['test']['random_mrr']:.4f}), hits@10 {kg_summary['test']['hits@10']:.4f}")
    print(f"results in {root.path}/")


def demo_verdict(entries: dict[str, dict], target: float, cores: float) -> str:
    """Time to accuracy and samples/s of one process, locked backprop and the fastest unlocked mode, and
    one sentence that says which reached the target first."""
    seconds = lambda mode: entries[mode]["time_to_accuracy_seconds"] or float("inf")  # noqa: E731
    best = min(DEMO_UNLOCKED, key=seconds)
    lines = [f"time to {100 * target:g}% test accuracy (training seconds) and samples/s:"]
    for mode, what in [("single", f"one process, {cores:g} cores"), ("backprop", "locked backprop on the actors"),
                       (best, "the fastest unlocked mode")]:
        reached = f"{seconds(mode):.1f} s" if seconds(mode) < float("inf") else "not reached"
        lines.append(f"  {mode:9s} {reached:>12s}  {entries[mode]['samples_per_sec']['median']:7.0f}/s  ({what})")
    if seconds(best) < min(seconds("single"), seconds("backprop")):
        verdict = f"{best} reached {100 * target:g}% first: {seconds('single') / seconds(best):.2f}x sooner than one process."
    elif seconds(best) < seconds("backprop"):
        verdict = (f"{best} beat locked backprop ({seconds('backprop') / seconds(best):.2f}x sooner) but not one process "
                   "with all the cores: on one machine unlocking does not pay yet; it is for stages on separate machines.")
    else:
        verdict = f"Unlocking did not pay here: {best} was not faster to {100 * target:g}% than locked backprop or one process."
    return "\n".join(lines + [verdict])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="[%(name)s] %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except UserError as exc:
        print(f"dni-pipeline: error: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"dni-pipeline: training failed: {exc}", file=sys.stderr)
        return 1
    except (JobInterrupted, KeyboardInterrupt) as exc:
        print(f"dni-pipeline: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    sys.exit(main())
