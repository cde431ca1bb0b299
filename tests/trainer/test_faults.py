"""Faults of the DNI pipeline: a killed or stuck stage, a killed or interrupted driver, a NaN, a broken
checkpoint write. Real stage actors on the session's local Ray (the CLI ones on their own Ray)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.errors import UserError
from dni_pipeline.core.run_folder import RunFolder
from dni_pipeline.trainer.checkpoints import CheckpointStore
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.network import build_stages, parse_arch
from dni_pipeline.trainer.recovery import PipelineError
from dni_pipeline.trainer.stage import Stage
from dni_pipeline.trainer.training import train_pipeline

TOLERANCE = 0.03  # test accuracy of a run that lost a dni stage, against the same run undisturbed (digits)


def _digits_config(**overrides) -> TrainConfig:
    values = dict(mode="dni", dataset="digits", arch="fcn3", stages=2, epochs=10, batch_size=64, checkpoint_every=20)
    return TrainConfig(**{**values, **overrides}).validate()


def _train(cfg: TrainConfig, folder: Path, fault=None) -> dict:
    """Train into `folder`; `fault(run_folder)` runs in a thread once the checkpoint of step 40 is written."""
    run = RunFolder(folder)
    if fault:
        def when_ready():
            while _manifest_step(folder) < 40:
                time.sleep(0.02)
            fault()
        threading.Thread(target=when_ready, daemon=True).start()
    return train_pipeline(cfg, load_dataset(cfg.dataset, None, seed=cfg.seed), run, progress=False).summary


def _manifest_step(folder: Path) -> int:
    try:
        return json.loads((folder / "checkpoint.json").read_text())["step"]
    except (OSError, ValueError):
        return -1


def _stage_actor(ray, index: int):
    return ray.get_actor(next(n for n in ray.util.list_named_actors() if n.endswith(f"-stage{index}")))


def _assert_every_step_once(folder: Path, summary: dict) -> None:
    """The stages applied exactly the planned steps, and metrics.jsonl logs each step and evaluation once."""
    planned = summary["planned_steps"]
    assert summary["steps"] == planned and summary["stage_updates"] == [planned] * summary["stages"]
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(planned))
    evals = [r["step"] for r in records if r["kind"] == "eval"]
    assert evals == sorted(set(evals)) and evals[-1] == planned


# -- checkpoint files -------------------------------------------------------------------------------
def test_an_interrupted_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path))
    sha = store.save("stage0.pt", {"w": torch.ones(1000)})
    real_open = store.fs.open

    def dying_open(path, mode="rb", **kwargs):
        f = real_open(path, mode, **kwargs)
        if "w" in mode:
            f.write(b"half a file")
            f.close()
            raise OSError("killed mid-write")
        return f

    monkeypatch.setattr(store.fs, "open", dying_open)
    with pytest.raises(OSError, match="mid-write"):
        store.save("stage0.pt", {"w": torch.zeros(1000)})
    monkeypatch.undo()
    assert torch.equal(store.load("stage0.pt", sha)["w"], torch.ones(1000))
    assert sorted(os.listdir(tmp_path)) == ["stage0.pt"]  # no temporary file left behind


def test_a_damaged_or_pickled_checkpoint_is_refused(tmp_path):
    store = CheckpointStore(f"file://{tmp_path}")
    sha = store.save("a.pt", {"w": torch.ones(3)})
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "a.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="does not match its recorded sha256"):
        store.load("a.pt", sha)
    torch.save({"w": UserError("arbitrary objects are pickled")}, tmp_path / "b.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        store.load("b.pt")


def test_a_stage_state_round_trips_and_a_replayed_step_is_refused(tmp_path):
    layers = parse_arch("fc16*2")
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def stage():
        module = build_stages(layers, (4,), 3, 1, seed=0)[0]
        return Stage(0, 1, module, "backprop", lambda m: None, lr=0.01, lr_schedule="cosine", total_steps=10)

    first, second = stage(), stage()
    for step in range(3):
        first.forward(step, 0, x, y)
    store = CheckpointStore(str(tmp_path))
    second.load_state_dict(store.load("s.pt", store.save("s.pt", first.state_dict())))
    for s in (first, second):
        s.forward(3, 0, x, y)
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="asked to apply step 3 after 4 updates"):
        first.forward(3, 0, x, y)
    with pytest.raises(RuntimeError, match="asked to apply step 6 after 4 updates"):  # one step ahead at most
        first.forward(6, 0, x, y)


# -- stage faults on real actors ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_stage_is_restarted_and_the_run_ends_as_an_undisturbed_one(ray_session, tmp_path):
    cfg = _digits_config()
    clean = _train(cfg, tmp_path / "clean")
    killed = _train(cfg, tmp_path / "killed", lambda: ray_session.kill(_stage_actor(ray_session, 1), no_restart=False))
    (recovery,) = killed["recoveries"]
    assert recovery["stage"] == 1 and recovery["reason"].startswith(("its actor died", "its actor was restarted"))
    assert 40 <= recovery["rolled_back_to"] <= recovery["detected_near_step"]
    _assert_every_step_once(tmp_path / "killed", killed)
    assert abs(killed["test_accuracy"] - clean["test_accuracy"]) <= TOLERANCE
    assert clean["test_accuracy"] > 0.9
    assert sorted(os.listdir(tmp_path / "killed" / "checkpoints")) == ["stage0-step00000220.pt", "stage1-step00000220.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"mode": "backprop"}, {"mode": "delayed", "staleness": "lookahead", "stages": 3}])
def test_locked_training_after_a_lost_stage_equals_the_undisturbed_run_exactly(ray_session, tmp_path, options):
    """Backprop is deterministic: the rollback loses nothing and repeats nothing, so the result is identical. So is the
    delayed mode, whose segments end (and flush) at the same checkpoints; under lookahead its last update is state."""
    cfg = _digits_config(epochs=3, **options)
    clean = _train(cfg, tmp_path / "clean")
    killed = _train(cfg, tmp_path / "killed", lambda: ray_session.kill(_stage_actor(ray_session, 0), no_restart=False))
    assert len(killed["recoveries"]) == 1 and killed["recoveries"][0]["stage"] == 0
    _assert_every_step_once(tmp_path / "killed", killed)
    assert (killed["test_accuracy"], killed["test_loss"]) == (clean["test_accuracy"], clean["test_loss"])


@pytest.mark.slow
def test_a_stuck_stage_is_killed_restarted_and_the_run_completes(ray_session, tmp_path):
    cfg = _digits_config(epochs=4, stall_timeout=3.0)
    stopped = {}

    def freeze():
        stopped["pid"] = ray_session.get(_stage_actor(ray_session, 1).ping.remote())["pid"]
        os.kill(stopped["pid"], signal.SIGSTOP)

    summary = _train(cfg, tmp_path / "run", freeze)
    (recovery,) = summary["recoveries"]
    # Killed by PID on its node: Ray's own kill cannot reach a stopped process and retries for minutes.
    assert recovery["stage"] == 1 and recovery["reason"] == f"it answered no ping for 3 s (process {stopped['pid']} killed)"
    assert summary["placement"][1]["pid"] != stopped["pid"]
    _assert_every_step_once(tmp_path / "run", summary)


@pytest.mark.slow
def test_a_stage_lost_more_often_than_max_restarts_allows_stops_the_run(ray_session, tmp_path):
    cfg = _digits_config(epochs=4, max_restarts=0)
    with pytest.raises(PipelineError, match=r"^stage 1 lost: its actor died \(\w+\), and --max-restarts 0 allows no more"):
        _train(cfg, tmp_path / "run", lambda: ray_session.kill(_stage_actor(ray_session, 1), no_restart=False))
    assert _manifest_step(tmp_path / "run") >= 40  # the last good checkpoint stays for --resume


@pytest.mark.slow
def test_resuming_a_finished_run_changes_nothing_but_the_resume_count(ray_session, tmp_path):
    cfg = _digits_config(epochs=1)
    first = _train(cfg, tmp_path / "run")
    data = load_dataset(cfg.dataset, None, seed=cfg.seed)
    again = train_pipeline(cfg, data, RunFolder.existing(tmp_path / "run", checkpoint=RunFolder.MANIFEST), resume=True,
                           progress=False).summary
    assert again["resumes"] == 1 and again["steps"] == first["steps"] == again["planned_steps"]
    assert again["test_accuracy"] == first["test_accuracy"]
    _assert_every_step_once(tmp_path / "run", again)


@pytest.mark.slow
def test_a_nan_at_a_stage_stops_the_run_naming_it_and_keeps_the_last_good_checkpoint(ray_session, tmp_path):
    cfg = _digits_config(epochs=2, checkpoint_every=10, inject_nan=[1, 33])
    with pytest.raises(PipelineError, match=r"^stage 1: non-finite activation at step 33$"):
        _train(cfg, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert manifest["step"] == 30
    store = CheckpointStore(str(tmp_path / "run" / "checkpoints"))
    for entry in manifest["stages"]:
        state = store.load(entry["file"], entry["sha256"])
        assert state["updates"] == 30 and all(torch.isfinite(v).all() for v in state["module"].values())


# -- the driver: Ctrl-C, then killed, then resumed ----------------------------------------------------
def _start_cli(log: Path, *args: str) -> subprocess.Popen:
    """`dni-pipeline` in its own process group, so the Ray processes of a killed driver can be ended too;
    its output goes to `log` (a pipe nobody reads while it runs could fill and stall it)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "dni_pipeline", *args, "--no-progress"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_step(folder: Path, step: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 300
    while _manifest_step(folder) < step:
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


@pytest.mark.slow
def test_interrupted_then_killed_driver_resumes_with_no_step_lost_or_repeated(tmp_path):
    run = tmp_path / "run"
    train = ["train", "--mode", "dni", "--stages", "2", "--dataset", "digits", "--batch-size", "64", "--epochs", "8",
             "--checkpoint-every", "20", "--out", str(run)]
    first_log = tmp_path / "first.log"
    first = _start_cli(first_log, *train)
    _wait_for_step(run, 20, first, first_log)
    first.send_signal(signal.SIGINT)
    first.wait(timeout=120)
    err = first_log.read_text()
    assert first.returncode == 130, err
    interrupted = json.loads((run / "summary.json").read_text())
    assert interrupted["stopped_by"] == "interrupt" and f"--resume {run}" in err
    assert _manifest_step(run) == interrupted["steps"] >= 20 and interrupted["stage_updates"][0] == interrupted["steps"]
    run = run.rename(tmp_path / "moved")  # the default checkpoint folder moves with its run folder

    second_log = tmp_path / "second.log"
    second = _start_cli(second_log, "train", "--resume", str(run))
    _wait_for_step(run, interrupted["steps"] + 40, second, second_log)
    os.killpg(second.pid, signal.SIGKILL)  # the driver and the local Ray it started
    second.wait()

    third = subprocess.run([sys.executable, "-m", "dni_pipeline", "train", "--resume", str(run), "--no-progress"],
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] and summary["resumes"] == 2 and summary["stopped_by"] == "completed"
    _assert_every_step_once(run, summary)
    assert summary["test_accuracy"] > 0.85


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "3"], "--resume continues a run with its own config: drop --epochs"),
    ([], "nothing to resume in"),
])
def test_resume_refuses_a_changed_config_or_a_folder_without_a_manifest(tmp_path, capsys, flags, message):
    from dni_pipeline.cli import main

    (tmp_path / "checkpoint.json").write_text("{}") if flags else None
    assert main(["train", "--resume", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


# -- a lost node ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_removed_node_moves_its_stage_to_a_surviving_node_and_the_run_completes(tmp_path):
    """In its own process: a `ray.cluster_utils.Cluster` cannot share this session's Ray."""
    script = Path(__file__).parents[2] / "benchmarks" / "faults" / "node_loss.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    (recovery,) = summary["recoveries"]
    assert recovery["stage"] == 1 and recovery["node_before"] == summary["removed_node"] != recovery["node_after"]
    assert summary["placement"][1]["node_id"] == recovery["node_after"]
    _assert_every_step_once(tmp_path / "run", summary)
    assert summary["test_accuracy"] > 0.85


def test_a_checkpoint_dir_that_cannot_be_used_is_refused_before_the_run_folder_exists(ray_session, tmp_path, capsys):
    from dni_pipeline.cli import main

    assert main(["train", "--dataset", "digits", "--stages", "2", "--checkpoint-dir", "nosuchscheme://x",
                 "--out", str(tmp_path / "run")]) == 2
    assert "checkpoint_dir nosuchscheme://x cannot be used (Protocol not known" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_manifest_whose_checkpoint_files_are_gone(ray_session, tmp_path, capsys):
    from dni_pipeline.cli import main

    manifest = {"format": 1, "step": 20, "stages": [{"stage": 0, "file": "stage0-step00000020.pt", "sha256": "0"}],
                "config": dataclasses.asdict(_digits_config(stages=1))}
    (tmp_path / "checkpoint.json").write_text(json.dumps(manifest))
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert f"checkpoint {tmp_path}/checkpoints/stage0-step00000020.pt named by" in capsys.readouterr().err
