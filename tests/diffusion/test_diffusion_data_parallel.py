"""DDPM on Ray Train (`--workers N`): the weights of one process, a killed worker costs time only."""

import dataclasses
import json
import threading
import time

import pytest
import torch
from helpers import kill_a_ray_train_worker

from diffusion.job import DIFFUSION_JOB, DiffusionJobConfig, train_diffusion
from diffusion.trainer import DiffusionTrainConfig
from dni_pipeline.cli import main
from dni_pipeline.core.data_parallel import run_data_parallel
from dni_pipeline.core.ray_session import Resources
from dni_pipeline.core.run_folder import RunFolder

# Weights of 2 replicas against one process: the same arithmetic but for the order of the gradient's sum
# (two half-batch sums, then their mean): float32 rounding only.
TOLERANCE = 1e-6


def _config(steps: int, batch_size: int = 63, width: int = 32, checkpoint_every: int = 3, log_every: int = 1):
    # 63: the replicas' shards differ in size (31 and 32), which the loss's scaling must absorb.
    return DiffusionJobConfig(dataset="8gaussians", train=DiffusionTrainConfig(steps=steps, batch_size=batch_size),
                              width=width, depth=2, eval_samples=200, sample_steps=10,
                              checkpoint_every=checkpoint_every, log_every=log_every)


def _assert_same_weights(a, b, tolerance=TOLERANCE):
    a, b = (torch.load(folder / "checkpoint.pt", weights_only=True) for folder in (a, b))
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], atol=tolerance, rtol=0, msg=f"{key}.{name}")


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_workers_train_the_weights_of_one_process(ray_session, tmp_path):
    cfg = _config(steps=6)
    one = train_diffusion(cfg, RunFolder(tmp_path / "one"))
    two = run_data_parallel(DIFFUSION_JOB, dataclasses.asdict(cfg), str(tmp_path / "two"), 2, Resources(num_cpus=1))
    _assert_same_weights(tmp_path / "one", tmp_path / "two")
    assert (one["workers"], two["workers"]) == (1, 2) and one.keys() == two.keys()
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]  # the batch's loss over both shards, logged once
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-6)
    for name in ("loss.png", "samples.png", "config.json"):
        assert (tmp_path / "two" / name).is_file()


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_ends_as_an_undisturbed_one(ray_session, tmp_path):
    """A worker SIGKILLed after step 60 (checkpoint at 50): Ray Train restarts the group from its latest
    checkpoint, steps 51.. are redone, each logged once, and the weights end exactly as those of the
    same run left alone (batches, noise and optimizer state all come back from the checkpoint)."""
    cfg = dataclasses.asdict(_config(steps=400, batch_size=64, width=256, checkpoint_every=50, log_every=10))
    run_data_parallel(DIFFUSION_JOB, cfg, str(tmp_path / "clean"), 2, Resources(num_cpus=1))
    result = {}
    thread = threading.Thread(target=lambda: result.update(run_data_parallel(
        DIFFUSION_JOB, cfg, str(tmp_path / "killed"), 2, Resources(num_cpus=1))))
    thread.start()
    metrics = tmp_path / "killed" / "metrics.jsonl"
    while not (metrics.is_file() and any(json.loads(line)["step"] >= 60 for line in metrics.read_text().splitlines())):
        assert thread.is_alive(), "the run ended before a worker could be killed"
        time.sleep(0.02)
    killed_at = max(r["step"] for r in _metrics(tmp_path / "killed"))
    kill_a_ray_train_worker()
    thread.join()
    assert killed_at < 400 and result["resumed"] is True and result["steps"] == 400
    assert [r["step"] for r in _metrics(tmp_path / "killed")] == list(range(10, 401, 10))
    _assert_same_weights(tmp_path / "clean", tmp_path / "killed", tolerance=0)


def test_workers_the_cluster_cannot_place_are_refused_in_one_line(ray_session, tmp_path, capsys):
    quick = ["diffusion", "train", "--dataset", "8gaussians", "--steps", "2"]
    cases = {("--workers", "0"): "--workers: 0: use at least 1",
             ("--workers", "9"): "--workers 9 x --num-cpus 1 needs 9 CPUs and the Ray cluster has 4",
             ("--workers", "2", "--device", "cuda"): "--workers 2 with --device cuda needs 2 GPUs (one per worker) and "
                                                     "the Ray cluster has 1"}
    for flags, message in cases.items():
        out = tmp_path / "-".join(flags)
        try:
            code = main([*quick, *flags, "--out", str(out)])
        except SystemExit as exit_info:  # refused by the parser
            code = exit_info.code
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert code == 2 and len(errors) == 1 and message in errors[0], errors
        assert not out.exists()


@pytest.mark.slow
def test_resume_on_ray_train_continues_to_the_weights_of_the_whole_run(ray_session, tmp_path, monkeypatch):
    """`train --resume RUN --workers 2` (a driver that stopped) continues from the run's checkpoint to the
    weights of one uninterrupted run. The folders are given relative to the driver's directory, which
    Ray Train's workers do not start in."""
    monkeypatch.chdir(tmp_path)
    quick = ["diffusion", "train", "--dataset", "8gaussians", "--batch-size", "63", "--width", "32", "--depth", "2",
             "--eval-samples", "200", "--sample-steps", "10", "--checkpoint-every", "3"]
    assert main([*quick, "--steps", "6", "--out", "whole"]) == 0
    assert main([*quick, "--steps", "3", "--workers", "2", "--out", "stopped"]) == 0
    assert main(["diffusion", "train", "--resume", "stopped", "--steps", "6", "--workers", "2"]) == 0
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["resumed"] is True and summary["steps"] == 6 and summary["workers"] == 2
    _assert_same_weights(tmp_path / "whole", tmp_path / "stopped")
