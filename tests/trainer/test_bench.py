"""`dni-pipeline bench`: its output files, ratios and bad input."""

import json

import pytest
import user_models

import dni_pipeline
from dni_pipeline.cli import main
from dni_pipeline.core.errors import UserError
from dni_pipeline.trainer.bench import BenchConfig, _add_ratios, _time_range, time_spread
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.report import bubble_formula

TINY = ["--dataset", "synthetic", "--arch", "fc16*2", "--batch-size", "64", "--no-progress"]


def test_bubble_formula():
    assert bubble_formula(TrainConfig(mode="gpipe", stages=2, micro_batches=4)) == pytest.approx(1 / 5)
    assert bubble_formula(TrainConfig(mode="1f1b", stages=3, micro_batches=6)) == pytest.approx(2 / 8)
    assert bubble_formula(TrainConfig(mode="backprop", stages=3)) == pytest.approx(2 / 3)
    assert bubble_formula(TrainConfig(mode="dni", stages=3)) == 0.0


def test_a_cell_repeated_gives_the_median_time_and_its_range_and_a_majority_that_missed_is_never():
    assert time_spread([30.0, 20.0, 25.0]) == {"median": 25.0, "min": 20.0, "max": 30.0, "values": [30.0, 20.0, 25.0]}
    assert time_spread([20.0, None, 25.0])["median"] == 25.0 and time_spread([20.0, None, 25.0])["max"] is None
    assert time_spread([None, None, 25.0])["median"] is None
    assert _time_range(time_spread([20.0, None, 25.0])) == "25.0 [20.0, never]"


def test_ratios_are_against_the_same_stage_count():
    entries = [{"mode": m, "stages": k, "samples_per_sec": {"median": v}}
               for m, k, v in [("backprop", 2, 100.0), ("gpipe", 2, 150.0), ("dni", 2, 180.0), ("dni", 3, 240.0)]]
    _add_ratios(entries)
    assert [(e["vs_backprop"], e["vs_gpipe"]) for e in entries] == [(1.0, 0.667), (1.5, 1.0), (1.8, 1.2), (None, None)]


@pytest.mark.slow
def test_bench_writes_json_markdown_and_plots(ray_session, tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--modes", "backprop,dni,single,cdni+si", "--sg-off-rows", "--stages", "2", "--reps", "2", "--steps", "8",
            "--link-latency-ms", "0,5", "--target-accuracy", "0.3", "--tta-epochs", "1", "--tta-reps", "2", "--eval-every", "4",
            *TINY, "--out", str(out)]
    assert main(argv) == 0
    entries = json.loads((out / "bench.json").read_text())
    assert [(e["mode"], e["stages"]) for e in entries] == [("backprop", 2), ("dni", 2), ("dni sg-off", 2), ("single", 2),
                                                           ("cdni+si", 2)]
    for e in entries:
        assert len(e["samples_per_sec"]["values"]) == 2 and e["samples_per_sec"]["min"] <= e["samples_per_sec"]["median"]
        assert "bubble_measured" in e and "time_to_accuracy_seconds" in e
    for e in entries[:3] + entries[4:]:
        assert len(e["stage_utilization"]) == 2 and len(e["transport_fraction"]) == 2
        assert len(e["stage_update_rate"]) == 2 and min(e["stage_update_rate"]) > 0
        assert set(e["samples_per_sec_by_latency"]) == set(e["time_to_accuracy_by_latency"]) == {"0", "5"}
        assert all(len(v["values"]) == 2 for v in e["time_to_accuracy_spread_by_latency"].values())
    single = entries[3]  # one process: no stages to measure, and no link to delay
    assert single["stage_utilization"] is None and set(single["time_to_accuracy_by_latency"]) == {"0"}
    assert entries[0]["bubble_formula"] == pytest.approx(0.5) and entries[0]["vs_backprop"] == 1.0
    assert single["vs_single"] == 1.0 and entries[1]["vs_single"] > 0
    table = (out / "bench.md").read_text()
    assert table.startswith("| mode | K |") and "| dni sg-off | 2 |" in table and "kept at 5 ms" in table
    record = json.loads((out / "provenance.json").read_text())
    assert table.rstrip().endswith(f"load average {record['load_average'][0]:g} at the start.")
    assert record["config"]["base"]["sg_update"] == "gated" and record["config"]["modes"][0] == "backprop"
    assert 0 < record["host_cpu_busy"] <= 1 and len(record["commit"]) == 40
    assert "s to 30% test accuracy at 5 ms" in table and "2 interleaved runs per cell (median [min, max])" in table
    for name in ("throughput.png", "timeline_backprop_K2.png", "timeline_dni_K2.png", "timeline_dni_sg-off_K2.png",
                 "latency.png", "accuracy_vs_time.png", "time_to_accuracy.png", "sg_cosine.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


@pytest.mark.parametrize("extra, message", [
    (["--modes", "backprop,warp"], "unknown bench mode 'warp': choose from backprop, gpipe, 1f1b, dni, cdni, dgl, "
                                   "delayed, single, torch-gpipe, torch-1f1b, torch-zb"),
    (["--modes", "dgl+corrected"], "--sg-update corrected corrects a synthetic gradient: use --mode dni or cdni"),
    (["--modes", "backprop+paper"], "bench mode 'backprop+paper': a +RULE row names an SG mode's update rule"),
    (["--modes", "delayed", "--delay", "-2"], "--delay must be 0 or more"),
    (["--stages", "2,5"], "--stages 5 is more than the 2 hidden layers and the head"),
    (["--link-latency-ms", "-1"], "--link-latency-ms needs"),
    (["--modes", "backprop+si"], "--synthetic-inputs needs synthetic gradients"),
    (["--reps", "0"], "--reps, --steps, --eval-every and --tta-reps must be at least 1"),
    (["--tta-reps", "0"], "--reps, --steps, --eval-every and --tta-reps must be at least 1"),
    (["--modes", "torch-gpipe", "--micro-batches", "5"], "is not a multiple of --micro-batches 5"),
    (["--modes", "torch-zb", "--model", "user_models:two_stages"], "torch-zb holds two stages per process: the model "
                                                                   "cannot be cut into 4 stages"),
])
def test_bench_bad_input(tmp_path, capsys, extra, message):
    assert main(["bench", *TINY, *extra, "--out", str(tmp_path / "b")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_bench_resumes_only_what_it_can_continue(tmp_path, capsys):
    finished, empty = tmp_path / "finished", tmp_path / "empty"
    finished.mkdir(), empty.mkdir()
    (finished / "bench.md").write_text("| mode |\n")
    for argv, message in [([], "--resume continues the bench in --out: give --out"),
                          (["--out", str(empty)], f"nothing to resume in {empty} (no cells.jsonl)"),
                          (["--out", str(finished)], f"{finished} holds a finished bench (bench.md): nothing to resume")]:
        assert main(["bench", *TINY, "--resume", *argv]) == 2
        assert message in capsys.readouterr().err
    assert list(empty.iterdir()) == []


@pytest.mark.slow
def test_a_killed_bench_resumes_without_rerunning_its_finished_runs(ray_session, tmp_path, capsys):
    argv = ["bench", "--modes", "backprop,dgl", "--reps", "1", "--steps", "4", "--link-latency-ms", "0",
            "--target-accuracy", "0.3", "--tta-epochs", "1", "--tta-reps", "2", "--eval-every", "4", *TINY]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    journal = (tmp_path / "whole" / "cells.jsonl").read_text().splitlines(keepends=True)
    assert len(journal) == 1 + 2 + 4  # the config, 2 throughput runs, 2 x 2 time-to-target runs
    killed = tmp_path / "killed"  # as a bench killed while writing its fourth run: three runs and half a line
    killed.mkdir()
    (killed / "cells.jsonl").write_text("".join(journal[:4]) + journal[4][:40])
    assert main([*argv, "--steps", "5", "--out", str(killed), "--resume"]) == 2
    assert f"--resume: the bench in {killed} ran with another steps: give the flags it ran with" in capsys.readouterr().err
    assert main([*argv, "--out", str(killed), "--resume"]) == 0
    resumed = (killed / "cells.jsonl").read_text().splitlines(keepends=True)
    assert resumed[1:4] == journal[1:4] and len(resumed) == len(journal)  # the three not rerun, the other four once
    assert len(json.loads(resumed[0])["parts"]) == 2  # the header: the config and each part's provenance
    record = json.loads((killed / "provenance.json").read_text())
    assert record["resumed_runs"] == 3 and [len(p["commit"]) for p in record["parts"]] == [40, 40]
    whole, again = (json.loads((d / "bench.json").read_text()) for d in (tmp_path / "whole", killed))
    assert again[0]["samples_per_sec"] == whole[0]["samples_per_sec"]  # taken from the journal, not measured again
    assert again[0]["time_to_accuracy_spread_by_latency"]["0"]["values"][0] == \
        whole[0]["time_to_accuracy_spread_by_latency"]["0"]["values"][0]
    assert "Resumed: 3 runs from earlier parts" in (killed / "bench.md").read_text()
    assert (killed / "timeline_backprop_K2.png").is_file()


def test_bench_config_validates_every_mode_and_stage_count():
    base = TrainConfig(dataset="synthetic", arch="fc16*3", stages=2)
    bench = BenchConfig(base, modes=["single", "gpipe", "cdni", "dgl"], stages=[2, 3], sg_off_rows=True).validate()
    assert bench.rows() == ["single", "gpipe", "cdni", "cdni sg-off", "dgl"]
    with pytest.raises(Exception, match="more than the 3 hidden layers"):
        BenchConfig(base, stages=[5]).validate()


@pytest.mark.slow
def test_a_language_model_needs_its_target_in_bits(ray_session, tmp_path):
    model, data = dni_pipeline.gpt((16,), 12, layers=2, heads=2, width=16), user_models.markov_text_data(windows=120)
    with pytest.raises(UserError, match="scored in bits per token: give --target-bits"):
        dni_pipeline.bench(model, data, out=str(tmp_path / "b"), modes=["single"], steps=2, reps=1)
    assert not (tmp_path / "b").exists()
    entries = dni_pipeline.bench(model, data, out=str(tmp_path / "b"), modes=["single", "dni"], steps=2, reps=1,
                                 latencies=[0.0], target_bits=9.0, tta_steps=4, eval_every=2, batch_size=16,
                                 progress=False)
    assert all(e["time_to_accuracy_seconds"] is not None for e in entries)  # 9 bits: met at the first evaluation
