"""The Python API: train (or bench) your own PyTorch model on your own data with stages on Ray actors.

    import dni_pipeline
    result = dni_pipeline.train(nn.Sequential(...), ((x_train, y_train), (x_test, y_test)),
                                stages=2, mode="cdni", epochs=1)
    model.load_state_dict(result.state_dict())

The command line goes through the same functions: ``--model`` and ``--arch`` build the model that is passed
here as `model`, ``--data`` and ``--dataset`` the `data`. Every bad input is a `UserError` raised before
any actor starts or any run folder is made.
"""

import dataclasses
from collections.abc import Callable, Sequence

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.ray_session import connect_ray
from dni_pipeline.core.run_folder import RunFolder

from .bench import BenchConfig, check_networks, run_bench
from .bench_journal import bench_folder
from .config import TrainConfig, build_config
from .data import place_data
from .driver import check_capacity
from .model import Network, as_network
from .objective import Objective
from .report import TrainResult
from .training import train_into_folder, train_pipeline

__all__ = ["bench", "train"]

# Fields of TrainConfig that the API takes as its own arguments (or that name the command line's model and data).
NOT_OPTIONS = {"mode", "stages", "split", "model", "model_options", "data", "data_options", "dataset", "arch", "out",
               "address", "download"}


def _config(options: dict, **given) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    wrong = sorted(set(options) - (fields - NOT_OPTIONS))
    if wrong:
        raise UserError(f"unknown option(s) {', '.join(wrong)}: the options are TrainConfig's fields "
                        f"({', '.join(sorted(fields - NOT_OPTIONS))})")
    return build_config({}, {**options, **given}, own_model=True)


def _network(model, stages: int, split, seed: int, loss, metrics, local_models: dict) -> Network:
    objective = Objective(loss, dict(metrics or {}))
    return as_network(model, stages, split=split, seed=seed, objective=objective, **local_models)


def train(model, data, *, mode: str = "dni", stages: int = 3, split: Sequence[int] | None = None,
          loss: Callable | None = None, metrics: dict[str, Callable] | None = None,
          synthetic_gradient: Callable | None = None, aux_head: Callable | None = None,
          synthetic_input: Callable | None = None, out: str | None = None, resume: str | None = None,
          address: str | None = None, progress: bool = True,
          **options) -> TrainResult:
    """Train `model` cut into `stages` stage actors, in `mode` (backprop, gpipe, 1f1b, dni, cdni, dgl, delayed).

    - model: a list of stage modules, an nn.Sequential (cut at `split`, the first child of each stage after
      the first; default balanced by parameter count), or a picklable factory ``build_stage(index, K)``.
    - data: ``((x_train, y_train), (x_test, y_test))`` as arrays or tensors, a dict of those four, a
      (train, test) pair of torch Datasets, or a picklable factory returning one (run on the cluster).
    - loss, metrics: ``fn(output, target)`` giving the batch mean; default cross-entropy (per position for
      (B, T, V) outputs) with accuracy, and bits per token for sequences.
    - synthetic_gradient, aux_head: factories ``fn(shape, num_classes)`` of each stage's SG model (called
      ``module(h, labels)``, returning dL/dh per loss term) or DGL head; default chosen by the shape.
    - synthetic_input: with ``synthetic_inputs=True``, a factory ``fn(x_shape, h_shape)`` of each later stage's
      input model (called ``module(x)`` on the batch's data, returning its estimate of the stage's input).
    - out: a run folder (metrics.jsonl, summary.json, checkpoints, model.pt, curves.png); `resume`
      continues one from its last checkpoint with its own config.
    - options: any field of `TrainConfig` (epochs, batch_size, lr, seed, eval_every, link_latency_ms, ...).

    Returns the run's TrainResult: `summary`, step and evaluation records, and `state_dict()`, the trained
    weights keyed as the whole model's.
    """
    if resume:
        if options or out:
            raise UserError("resume continues a run with its own config: drop the other options")
        folder = RunFolder.existing(resume, checkpoint=RunFolder.MANIFEST)
        cfg = build_config(folder.read_manifest()["config"], {"address": address}, own_model=True)
    else:
        cfg = _config(options, mode=mode, stages=stages, out=out, address=address)
        folder = RunFolder(out) if out else None
    local_models = {"synthetic_gradient": synthetic_gradient, "aux_head": aux_head, "synthetic_input": synthetic_input}
    network = _network(model, cfg.stages, split, cfg.seed, loss, metrics, local_models)
    with connect_ray(cfg.address, cfg.stages * cfg.cpus_per_stage):
        check_capacity(cfg)
        placed = place_data(data)
        if folder is None:
            return train_pipeline(cfg, placed, progress=progress, network=network)
        return train_into_folder(cfg, placed, folder, progress, resume=bool(resume), network=network)


def bench(model, data, *, out: str, modes: Sequence[str] = ("backprop", "gpipe", "dni"), stages: Sequence[int] = (2,),
          split: Sequence[int] | None = None, loss: Callable | None = None, metrics: dict[str, Callable] | None = None,
          synthetic_gradient: Callable | None = None, aux_head: Callable | None = None,
          synthetic_input: Callable | None = None, sg_off_rows: bool = False,
          reps: int = 3, steps: int = 60, latencies: Sequence[float] = (0.0, 20.0), target_accuracy: float = 0.97,
          target_bits: float | None = None, tta_epochs: int = 3, tta_steps: int = 0, tta_reps: int = 1, eval_every: int = 25,
          resume: bool = False, address: str | None = None, progress: bool = True, **options) -> list[dict]:
    """`dni-pipeline bench` on your model: the `modes` (and the peers single, torch-gpipe, torch-1f1b, torch-zb) side
    by side at every stage count and latency, into the folder `out` (bench.json, bench.md, plots).

    Each of the command's flags is an argument here: `reps` throughput runs of `steps` steps per row and latency,
    then one time-to-target run per row and latency until `target_accuracy` (or, for a language model,
    `target_bits`: test bits per token at most this), `tta_epochs` or `tta_steps` (0: no step limit), `tta_reps`
    times per cell, interleaved (the table gives their median and range). With `resume`, an unfinished bench in
    `out` continues: the runs its journal holds are not run again (the same arguments, else a UserError).
    Other arguments as for `train`; `split` applies when `stages` has one count."""
    if split is not None and len(stages) > 1:
        raise UserError("a split fits one stage count: give one value in stages, or drop split")
    delayed = {key: options.pop(key, None) for key in ("delay", "staleness")}  # the delayed rows' settings
    base = _config(options, mode="backprop", stages=min(stages), address=address)
    config = BenchConfig(base, modes=list(modes), stages=list(stages), reps=reps, steps=steps, latencies=list(latencies),
                         target_accuracy=target_accuracy, target_bits=target_bits, tta_epochs=tta_epochs,
                         tta_steps=tta_steps, tta_reps=tta_reps, eval_every=eval_every,
                         sg_off_rows=sg_off_rows, own_model=True, **delayed).validate()
    folder = bench_folder(out, config.resolved(), resume)
    local_models = {"synthetic_gradient": synthetic_gradient, "aux_head": aux_head, "synthetic_input": synthetic_input}
    networks = {k: _network(model, k, split, base.seed, loss, metrics, local_models) for k in stages}
    with connect_ray(base.address, max(stages) * base.cpus_per_stage):
        for k in stages:
            check_capacity(dataclasses.replace(base, stages=k))
        placed = place_data(data)
        for network in networks.values():
            network.prepare(placed, "backprop")
        check_networks(config, placed, networks)
        folder.create()
        return run_bench(config, placed, folder, progress=progress, network_for=networks.get, resume=resume)
