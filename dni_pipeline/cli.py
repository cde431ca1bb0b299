"""`dni-pipeline`: the one root parser over every domain's commands, and the demo that runs them
together. Only the chosen command's domain is imported, so `dni-pipeline cluster stop` starts in a
blink without torch, scikit-learn or matplotlib."""

import argparse
import logging
import sys
import time
from pathlib import Path

from dni_pipeline.core.errors import JobFailed, JobInterrupted, UserError
from dni_pipeline.core.job_cli import Parser

__all__ = ["build_parser", "entry", "main"]

log = logging.getLogger("dni_pipeline")

# command -> (the domain that registers it, one line of help); only the chosen command's domain is imported.
COMMANDS = {
    "train": ("trainer", "train one pipeline run"),
    "bench": ("trainer", "throughput of modes side by side, with timelines and time to accuracy"),
    "demo": ("demo", "local multi-process demo: dni and backprop on the same stage actors, DDPM and KG tasks beside them"),
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
        "Start a local Ray, train a K-stage pipeline in dni mode and then in backprop mode with the same "
        "model and data, and print the comparison. Uses MNIST when found, else scikit-learn's digits. A DDPM "
        "(two moons) and a KG completion job (ComplEx on UMLS) run beside it as Ray tasks on the same cluster."))
    add_stages_and_epochs(demo)
    add_common_flags(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    """The demo is built when it runs: the trainer, a diffusion task and a KG task on one Ray."""
    import ray

    from diffusion.job import DIFFUSION_JOB, DiffusionJobConfig
    from dni_pipeline.core.datasets import find_mnist, load_dataset
    from dni_pipeline.core.jobs import submit_job
    from dni_pipeline.core.ray_session import Resources, connect_ray
    from dni_pipeline.core.run_folder import RunFolder
    from dni_pipeline.core.settings import DATA_DIR_ENV, resolve_data_dir
    from dni_pipeline.trainer.config import build_config
    from dni_pipeline.trainer.driver import check_capacity
    from dni_pipeline.trainer.report import summary_table
    from dni_pipeline.trainer.training import train_into_folder
    from kg.job import KG_JOB, KGJobConfig
    from kg.presets import preset
    from kg.training import KGTrainConfig

    data_dir = resolve_data_dir(args.data_dir)
    dataset = "mnist" if find_mnist(data_dir) else "digits"
    if dataset == "digits":
        log.info("MNIST not found (set --data-dir or $%s); the demo uses scikit-learn's bundled digits", DATA_DIR_ENV)
    flags = {k: v for k, v in vars(args).items() if k not in ("out", "address")}
    flags["epochs"] = args.epochs or (3 if dataset == "mnist" else 30)
    configs = [build_config({}, {**flags, "dataset": dataset, "mode": mode}) for mode in ("dni", "backprop")]
    root = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    folders = [RunFolder(root / cfg.mode) for cfg in configs]
    diffusion_folder, kg_folder = RunFolder(root / "diffusion-moons"), RunFolder(root / "kg-umls")
    data = load_dataset(dataset, args.data_dir, seed=configs[0].seed)
    kg_cfg = KGJobConfig(dataset="umls", train=KGTrainConfig(**preset("umls", "complex")))
    summaries = []
    # Two CPUs more than the stages need: the diffusion and KG tasks train beside the pipeline, on the same Ray.
    with connect_ray(args.address, configs[0].stages * configs[0].cpus_per_stage + 2):
        log.info("diffusion: DDPM on two moons as a Ray task beside the pipeline (%s)", diffusion_folder.path)
        diffusion = submit_job(DIFFUSION_JOB, DiffusionJobConfig(dataset="moons"), str(diffusion_folder.path), Resources())
        log.info("kg: ComplEx on UMLS as a Ray task beside the pipeline (%s)", kg_folder.path)
        kg = submit_job(KG_JOB, kg_cfg, str(kg_folder.path), Resources())
        for cfg, folder in zip(configs, folders):
            check_capacity(cfg)
            summaries.append(train_into_folder(cfg, data, folder, not args.no_progress))
        ddpm, kg_summary = ray.get([diffusion, kg])
    print(summary_table(summaries))
    dni, backprop = summaries
    print(f"dni / backprop throughput: {dni['samples_per_sec'] / backprop['samples_per_sec']:.2f}x; "
          f"test accuracy {100 * dni['test_accuracy']:.2f}% vs {100 * backprop['test_accuracy']:.2f}% "
          "(the diffusion and KG tasks shared the cores while they ran)")
    print(f"diffusion (two moons, {ddpm['steps']} steps): energy distance {ddpm['energy_distance']:.4f} "
          f"(floor {ddpm['energy_distance_floor']:.4f}, ceiling {ddpm['energy_distance_ceiling']:.4f})")
    print(f"kg (ComplEx on UMLS, {kg_summary['epochs']} epochs): filtered test MRR {kg_summary['test']['mrr']:.4f} "
          f"(random {kg_summary['test']['random_mrr']:.4f}), hits@10 {kg_summary['test']['hits@10']:.4f}")
    print(f"results in {root}/")


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
