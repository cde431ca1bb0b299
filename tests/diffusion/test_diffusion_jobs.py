"""`dni-pipeline diffusion ...`: runs as Ray tasks, resume, sweep, sampling, bad input."""

import json

import pytest
import torch

from dni_pipeline.cli import main

QUICK = ["--dataset", "8gaussians", "--steps", "40", "--batch-size", "64", "--width", "32", "--depth", "1",
         "--eval-samples", "200", "--sample-steps", "10", "--checkpoint-every", "20"]


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.slow
def test_train_as_a_ray_task_writes_the_run_folder(ray_session, tmp_path):
    out = tmp_path / "run"
    assert main(["diffusion", "train", *QUICK, "--out", str(out)]) == 0
    summary = _summary(out)
    assert summary["dataset"] == "8gaussians" and summary["steps"] == 40 and summary["train_seconds"] > 0
    assert summary["energy_distance_floor"] < summary["energy_distance_ceiling"]
    assert {"energy_distance", "mmd", "mmd_floor", "mmd_ceiling"} <= summary.keys()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [40]
    for name in ("loss.png", "samples.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_to_the_same_weights(ray_session, tmp_path):
    """A run that stopped at step 20 and is resumed to 40 ends where an uninterrupted 40-step run ends."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["diffusion", "train", *QUICK, "--out", str(straight)]) == 0
    assert main(["diffusion", "train", *QUICK, "--steps", "20", "--out", str(stopped)]) == 0
    assert main(["diffusion", "train", "--resume", str(stopped), "--steps", "40"]) == 0
    assert _summary(stopped)["resumed"] is True and _summary(stopped)["steps"] == 40
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(stopped / "checkpoint.pt", weights_only=True)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name


def test_a_run_killed_mid_way_resumes_with_no_step_lost_or_repeated(tmp_path):
    """Killed after step 30 (checkpoint at 20): the resumed run redoes 21-30 and ends as the whole run ends."""
    from diffusion.job import DiffusionJobConfig, train_diffusion
    from diffusion.trainer import DiffusionTrainConfig
    from dni_pipeline.core.run_folder import RunFolder

    cfg = DiffusionJobConfig(dataset="8gaussians", train=DiffusionTrainConfig(steps=40, batch_size=64), width=32, depth=1,
                             eval_samples=200, sample_steps=10, checkpoint_every=20, log_every=10)
    train_diffusion(cfg, RunFolder(tmp_path / "whole"))

    class KilledAtStep30:
        def __init__(self, **_):
            self.n = 0

        def update(self, k):
            self.n += k

        def set_description(self, _):
            if self.n == 30:
                raise KeyboardInterrupt

        def close(self):
            pass

    with pytest.raises(KeyboardInterrupt):
        train_diffusion(cfg, RunFolder(tmp_path / "killed"), progress=KilledAtStep30)
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"] == 20
    summary = train_diffusion(cfg, RunFolder.existing(tmp_path / "killed"), resume=True)
    assert summary["resumed"] and summary["steps"] == summary["planned_steps"] == 40
    logged = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [10, 20, 30, 40]
    whole, killed = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True) for name in ("whole", "killed"))
    for name in whole["model"]:
        assert torch.equal(whole["model"][name], killed["model"][name]), name


@pytest.mark.slow
def test_sweep_runs_parallel_tasks_and_ranks_them(ray_session, tmp_path):
    """Each trial reserves the GPUs asked for (the session's Ray has one logical GPU: two trials of 0.5 fit)."""
    out = tmp_path / "sweep"
    assert main(["diffusion", "sweep", *QUICK, "--grid", "lr=1e-3,3e-3", "--grid", "objective=eps,v",
                 "--num-gpus", "0.5", "--out", str(out)]) == 0
    report = json.loads((out / "sweep.json").read_text())
    trials = report["trials"]
    assert report["selected_on"] == "energy_distance" and report["best"] == trials[0]
    assert [t["resources"] for t in trials] == [{"CPU": 1.0, "GPU": 0.5}] * 4
    assert {(t["lr"], t["objective"]) for t in trials} == {(1e-3, "eps"), (1e-3, "v"), (3e-3, "eps"), (3e-3, "v")}
    scores = [t["energy_distance"] for t in trials]
    assert scores == sorted(scores)
    assert (out / "sweep.md").read_text().startswith("| trial | lr | objective | energy_distance")


def test_sample_from_a_trained_run(ray_session, tmp_path):
    out = tmp_path / "run"
    assert main(["diffusion", "train", *QUICK, "--out", str(out)]) == 0
    assert main(["diffusion", "sample", "--run", str(out), "--count", "50", "--sampler", "ddpm",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert torch.load(tmp_path / "s.pt").shape == (50, 2)


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["train", "--dataset", "moons", "--objective", "score"], "unknown objective 'score'"),
    (["train", "--resume", "/nonexistent/run"], "nothing to resume in /nonexistent/run"),
    (["sweep", "--grid", "colour=red"], "bad --grid 'colour=red'"),
    (["sweep", "--grid", "lr=fast"], "lr takes float values"),
])
def test_bad_input(tmp_path, capsys, argv, message):
    assert main(["diffusion", *argv, "--out", str(tmp_path / "x")] if argv[0] != "train" or "--resume" not in argv
                else ["diffusion", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_task_the_cluster_cannot_schedule_is_refused(ray_session, tmp_path, capsys):
    assert main(["diffusion", "train", *QUICK, "--num-gpus", "2", "--out", str(tmp_path / "x")]) == 2
    assert "the Ray cluster has 1 GPUs but this needs 2" in capsys.readouterr().err
    assert main(["diffusion", "train", *QUICK, "--device", "cuda", "--out", str(tmp_path / "x")]) == 2
    assert "--device cuda needs a GPU for the task: add --num-gpus 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_parse_grid_types():
    from diffusion.job import DiffusionJobConfig
    from dni_pipeline.core.sweeps import config_fields, parse_grid

    cfg = DiffusionJobConfig()
    assert parse_grid(["steps=10,20", "sampler=ddim,ddpm", "eta=0,0.5"], config_fields(cfg.train, cfg)) == {
        "steps": [10, 20], "sampler": ["ddim", "ddpm"], "eta": [0.0, 0.5]}


@pytest.mark.slow
def test_image_run_reports_frechet_distance_and_bits_per_dim(ray_session, tmp_path):
    out = tmp_path / "run"
    argv = ["diffusion", "train", "--dataset", "digits", "--steps", "10", "--batch-size", "16", "--unet-widths", "8,16",
            "--timesteps", "20", "--sample-steps", "5", "--eval-samples", "64", "--nll-images", "4", "--out", str(out)]
    assert main(argv) == 0
    summary = _summary(out)
    assert summary["fd_floor"] < summary["fd_ceiling"] and summary["fd"] > 0
    assert 0 < summary["bits_per_dim"] and summary["bits_per_dim_ceiling"] == 8.0
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
