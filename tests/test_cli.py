"""The command line: a full run's files, and every bad input giving one line, exit 2 and no run folder."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import idx_bytes

from dni_pipeline.cli import build_parser, main
from dni_pipeline.core.datasets import MNIST_FILES

FAST = ["--dataset", "synthetic", "--arch", "fc16*2", "--stages", "2", "--epochs", "2", "--no-progress"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dni_pipeline", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_train_writes_summary_metrics_and_plot(ray_session, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--mode", "cdni", *FAST, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cdni" and summary["stages"] == 2 and summary["epochs"] == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["samples_per_sec"] > 0
    assert len(summary["stage_utilization"]) == 2 and all(0 < u <= 1.0 for u in summary["stage_utilization"])
    assert summary["wall_seconds"] >= summary["train_seconds"] > 0
    assert [p["stage"] for p in summary["placement"]] == [0, 1] and all(p["node_id"] for p in summary["placement"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(summary["steps"]))
    assert all(len(r["sg_loss"]) == 1 and r["loss"] > 0 for r in steps)
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "test acc" in table and "cdni" in table


@pytest.mark.slow
def test_config_file_with_flags_overriding(ray_session, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("mode: backprop\nbatch-size: 128\nepochs: 5\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), *FAST, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["mode"], summary["batch_size"], summary["epochs"]) == ("backprop", 128, 2)


BAD_INPUTS = [
    (["--mode", "sideways"], "invalid mode 'sideways'"),
    (["--stages", "4"], "--stages 4 is more than the 2 hidden layers and the head"),
    (["--batch-size", "1"], "--batch-size must be at least 2"),
    (["--arch", "fc16,conv8"], "conv layer after an fc layer"),
    (["--stages", "abc"], "invalid int value"),
    (["--stage-delay-ms", "5"], "one value per stage"),
    (["--mode", "backprop", "--delay", "1"], "use --mode delayed"),
    (["--mode", "dgl", "--staleness", "recompute"], "use --mode delayed"),
    (["--mode", "delayed", "--staleness", "stale"], "invalid choice"),
    (["--mode", "delayed", "--delay", "3", "--max-in-flight", "3"], "use at least 4"),
    (["--mode", "delayed", "--delay", "-1"], "--delay must be 0 or more"),
]


def _exit_code(argv: list[str]) -> int:
    """main's return value, or the code of the SystemExit that argparse raises."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_flags(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert _exit_code(["train", *FAST, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def _write_mnist(folder, damage_images=None):
    """A copy of the four MNIST file names with tiny valid IDX content (so the md5 check fails)."""
    folder.mkdir()
    for name, (magic, _) in MNIST_FILES.items():
        raw = idx_bytes(np.zeros((2, 28, 28) if magic == 2051 else (2,)), magic)
        if damage_images and name.startswith("train-images"):
            raw = damage_images(raw)
        (folder / name).write_bytes(raw)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\0\0\0\0" + raw[4:], "has magic 0, expected 2051"),
    (lambda raw: raw[:100], "bytes but its header"),
    (None, "fails its md5 check"),
])
def test_corrupt_mnist_files(tmp_path, capsys, damage, message):
    _write_mnist(tmp_path / "data", damage)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "train-images-idx3-ubyte" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_mnist_names_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dni_pipeline.core.datasets.CACHE_DIR", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2
    assert "MNIST files not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_out_that_cannot_be_a_folder_or_holds_files(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(["train", *FAST, "--out", str(blocker / "run")]) == 2
    assert "is not a writable folder" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "summary.json").write_text("{}")
    assert main(["train", *FAST, "--out", str(full)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (full / "summary.json").read_text() == "{}" and blocker.read_text() == "keep me"


@pytest.mark.parametrize("text, message", [
    ("mode: dni\nlearning_rate: 0.1\n", "unknown config key(s) learning_rate"),
    ("stages: two\n", "config key 'stages' has value 'two'"),
    ("mode: [dni\n", "is not valid YAML/JSON"),
    ("- dni\n", "must hold a mapping"),
])
def test_bad_config_files(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cluster_too_small_for_the_stages(ray_session, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--cpus-per-stage", "3", "--out", str(out)]) == 2
    assert "the Ray cluster has 4 CPUs but this needs 6: 2 stages need them" in capsys.readouterr().err
    assert not out.exists()


def test_unreachable_address_fails_fast_with_exit_2(tmp_path):
    result = _cli("train", *FAST, "--address", "127.0.0.1:1", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "no Ray cluster reachable at 127.0.0.1:1" in result.stderr and "ray start --head" in result.stderr
    assert not (tmp_path / "run").exists()


def _every_parser(parser: argparse.ArgumentParser, path=()):
    """(command path, parser) for the root parser and every sub-command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_parser(sub, (*path, name))


def test_help_explains_every_flag_of_every_command():
    parsers = dict(_every_parser(build_parser()))
    assert {"train", "bench", "demo", "diffusion train", "diffusion sweep", "diffusion sample", "kg train", "kg sweep",
            "kg complete", "cluster start", "cluster validate"} <= {" ".join(p) for p in parsers}
    flags = 0
    for path, parser in parsers.items():
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, (path, action.option_strings)
                assert action.option_strings[-1] in text, (path, action.option_strings)
                flags += 1
    assert flags > 150
    result = _cli("train", "--help")
    assert result.returncode == 0 and "--sg-hidden" in result.stdout and "(default 3)" in result.stdout


def test_a_cluster_command_starts_without_torch_sklearn_or_matplotlib(tmp_path):
    code = ("import sys; from dni_pipeline.cli import main; code = main(['cluster', 'status', '--dir', sys.argv[1]]); "
            "print(code, sorted(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.stdout.split("\n")[-2] == "2 []", result.stderr


def test_the_demo_fetches_mnist_where_it_can_and_says_so_where_it_cannot(tmp_path, monkeypatch, caplog, mnist_dir):
    from helpers import http_mirror

    from dni_pipeline.cli import demo_dataset

    for module in ("dni_pipeline.core.settings", "dni_pipeline.core.datasets"):
        monkeypatch.setattr(f"{module}.CACHE_DIR", tmp_path / "cache")
    assert demo_dataset(tmp_path, download=False) == "digits"
    assert "no MNIST" in caplog.text and not (tmp_path / "cache").exists()
    monkeypatch.setattr("dni_pipeline.core.datasets.MNIST_MIRRORS", ("http://127.0.0.1:9/",))  # nothing listens there
    assert demo_dataset(tmp_path, download=True) == "digits"
    assert "could not download train-images-idx3-ubyte.gz" in caplog.text
    with http_mirror(mnist_dir) as url:
        monkeypatch.setattr("dni_pipeline.core.datasets.MNIST_MIRRORS", (url,))
        assert demo_dataset(tmp_path, download=True) == "mnist"
    assert demo_dataset(tmp_path, download=False) == "mnist"  # from the cache now
