"""KG runs end to end: the protocol on a trained model, completion, resume, Ray tasks and bad input."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import kill_task_after_epoch

from dni_pipeline.cli import main
from dni_pipeline.core.jobs import run_sweep, submit_job
from dni_pipeline.core.ray_session import Resources
from dni_pipeline.core.run_folder import RunFolder
from kg.complete import complete
from kg.datasets import load_kg
from kg.evaluate import answer_index, evaluate, random_mrr, region_auc_pr
from kg.job import KG_JOB, KGJobConfig, load_trained, train_kg
from kg.models import build_model
from kg.presets import preset
from kg.training import KGTrainConfig


def _config(dataset="nations", **train):
    values = {**preset(dataset, train.get("model", "complex")), "dim": 32, "epochs": 10, "eval_every": 2, **train}
    return KGJobConfig(dataset=dataset, train=KGTrainConfig(**values))


@pytest.fixture(scope="module")
def nations_run(tmp_path_factory):
    run = RunFolder(tmp_path_factory.mktemp("kg") / "nations")
    summary = train_kg(_config(), run)
    return run, summary


def test_training_on_nations_beats_the_random_floor_by_far(nations_run):
    run, summary = nations_run
    assert summary["test"]["random_mrr"] == pytest.approx(0.38, abs=0.02)  # the published floor (0.37)
    assert summary["test"]["mrr"] > 0.65 and summary["test"]["hits@10"] > 0.95
    assert summary["test"]["pessimistic"]["mrr"] <= summary["test"]["mrr"]
    assert set(summary["valid"]) >= {"mrr", "hits@1", "hits@3", "hits@10"} and summary["eval_seconds"] >= 0
    records = [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, summary["epochs"] + 1))
    assert run.file("curves.png").stat().st_size > 0


def test_evaluation_equals_brute_force_ranks_in_both_directions(nations_run):
    run, _ = nations_run
    _, data, model = load_trained(run)
    known = {tuple(x) for x in data.all_known().tolist()}
    e, r = data.num_entities, data.num_relations
    reciprocal_rr, by_direction = [], {"tail": [], "head": []}
    with torch.no_grad():
        for h, rel, t in data.splits["test"].tolist():
            for direction, query, answer, relation in (("tail", h, t, rel), ("head", t, h, rel + r)):
                scores = model.score_tails(torch.tensor([query]), torch.tensor([relation]))[0]
                true = model.score_triples(torch.tensor([query]), torch.tensor([relation]), torch.tensor([answer]))[0]
                others = [x for x in range(e) if x != answer and
                          ((query, rel, x) if direction == "tail" else (x, rel, query)) not in known]
                above = sum(bool(scores[x] > true) for x in others)
                equal = sum(bool(scores[x] == true) for x in others)
                rank = above + 1 + equal / 2
                reciprocal_rr.append(1 / rank)
                by_direction[direction].append(1 / rank)
        metrics = evaluate(model, data, "test", answer_index(data), batch_size=7, chunk_size=5)
    assert metrics["mrr"] == pytest.approx(np.mean(reciprocal_rr), abs=1e-9)
    assert metrics["tail_mrr"] == pytest.approx(np.mean(by_direction["tail"]), abs=1e-9)
    assert metrics["head_mrr"] == pytest.approx(np.mean(by_direction["head"]), abs=1e-9)


def test_random_floor_is_the_expected_reciprocal_rank():
    data = load_kg("nations")
    index = answer_index(data)
    rng = np.random.default_rng(0)
    h, r, t = data.splits["test"][0]
    candidates = data.num_entities - len(index.of(h, r)) + 1
    draws = rng.integers(1, candidates + 1, 200_000)
    single = dataclasses.replace(data, splits={**data.splits, "test": data.splits["test"][:1]})
    head_candidates = data.num_entities - len(index.of(t, r + data.num_relations)) + 1
    head_draws = rng.integers(1, head_candidates + 1, 200_000)
    expected = (np.mean(1 / draws) + np.mean(1 / head_draws)) / 2
    assert random_mrr(single, "test", index) == pytest.approx(expected, abs=3e-3)


def test_completion_excludes_known_triples_and_ranks_by_score(nations_run):
    run, _ = nations_run
    _, data, model = load_trained(run)
    index = answer_index(data)
    known = {(data.entities[h], data.relations[r], data.entities[t]) for h, r, t in data.all_known().tolist()}
    whole = complete(model, data, index, top_k=40, batch_size=50)
    assert len(whole) == 40 and not {(h, r, t) for h, r, t, _ in whole} & known
    scores = [s for *_, s in whole]
    assert scores == sorted(scores, reverse=True)
    # One query: the same answers as sorting that query's own scores with the known ones removed.
    head, relation = data.entities[0], data.relations[0]
    answers = complete(model, data, index, head=head, relation=relation, top_k=5)
    with torch.no_grad():
        scores = model.score_tails(torch.tensor([0]), torch.tensor([0]))[0]
    ranked = [data.entities[x] for x in scores.argsort(descending=True).tolist()
              if (head, relation, data.entities[x]) not in known]
    assert [t for _, _, t, _ in answers] == ranked[:5]
    heads = complete(model, data, index, tail=head, relation=relation, top_k=3)
    assert all(t == head and (h, r, t) not in known for h, r, t, _ in heads)


def test_resume_after_a_crash_ends_where_the_whole_run_ends(tmp_path):
    cfg = _config(epochs=6)
    whole = train_kg(cfg, RunFolder(tmp_path / "whole"))

    class CrashAfterThreeEpochs:
        """A progress bar that stops the run once the third epoch is checkpointed (and described)."""

        def __init__(self, **_):
            self.epochs, self.n = 0, 0.0

        def update(self, fraction):
            self.n += fraction

        def set_description(self, _):
            self.epochs += 1
            if self.epochs == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_kg(cfg, RunFolder(tmp_path / "crashed"), progress=CrashAfterThreeEpochs)
    saved = torch.load(tmp_path / "crashed" / "checkpoint.pt", weights_only=True)
    assert saved["state"]["epoch"] == 3
    resumed = train_kg(cfg, RunFolder.existing(tmp_path / "crashed"), resume=True)
    assert resumed["resumed"] and resumed["epochs"] == whole["epochs"] == 6
    assert resumed["test"] == {**whole["test"], "eval_seconds": resumed["test"]["eval_seconds"]}
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 7))


def test_countries_reports_auc_pr_over_the_regions(tmp_path):
    summary = train_kg(_config("countries_s1", dim=64, epochs=30, eval_every=10), RunFolder(tmp_path / "c"))
    assert summary["test"]["auc_pr"] > 0.8 and summary["valid"]["auc_pr"] > 0.8
    cfg, data, model = load_trained(RunFolder.existing(tmp_path / "c"))
    assert region_auc_pr(model, data, "valid") == summary["valid"]["auc_pr"]
    t = cfg.train
    untrained = build_model(t.model, data.num_entities, data.num_relations, dim=t.dim, init_scale=t.init_scale,
                            gamma=t.gamma, p_norm=t.p_norm, seed=t.seed + 1)
    assert region_auc_pr(untrained, data, "valid") < 0.5  # five regions, one true: random scores give about 0.3


@pytest.mark.slow
def test_sweep_runs_trials_as_ray_tasks_and_selects_on_validation(ray_session, tmp_path):
    base = _config(epochs=4)
    trials = run_sweep(KG_JOB, base, {"dim": [2, 32]}, RunFolder(tmp_path / "sweep"), Resources())
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert report["selected_on"] == "valid_mrr" and report["best"] == trials[0]
    assert trials[0]["valid_mrr"] >= trials[1]["valid_mrr"] and {t["dim"] for t in trials} == {2, 32}
    for trial in trials:
        assert (tmp_path / "sweep" / trial["trial"] / "summary.json").is_file()


def test_cli_train_and_complete(ray_session, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["kg", "train", "--dataset", "nations", "--dim", "16", "--epochs", "4", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "complex" and summary["config"]["train"]["dim"] == 16
    assert "test" in capsys.readouterr().out
    out = tmp_path / "predicted.tsv"
    assert main(["kg", "complete", "--run", str(run), "--top-k", "7", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "head\trelation\ttail\tscore" and len(lines) == 8
    capsys.readouterr()
    assert main(["kg", "complete", "--run", str(run), "--out", str(tmp_path / "no" / "such.tsv")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--model", "tucker"], "unknown model 'tucker'"),
    (["--dataset", "fb15k237", "--data-dir", "{tmp}/nowhere"], "dataset 'fb15k237' not found"),
    (["--dataset", "bad", "--data-dir", "{tmp}"], "bad/train.txt:2 is not head<TAB>relation<TAB>tail"),
    (["--dataset", "empty", "--data-dir", "{tmp}"], "empty/test.txt holds no triples"),
    (["--dataset", "unseen", "--data-dir", "{tmp}", "--unseen", "error"], "whose entity or relation never occurs in"),
    (["--lr", "-1"], "--lr and --init-scale must be positive"),
    (["--config", "{tmp}/bad.yaml"], "unknown config key(s) learning_rate"),
])
def test_bad_input_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys, argv, message):
    for name, lines in {"bad": ["a\tr\tb", "a r b"], "empty": ["a\tr\tb"], "unseen": ["a\tr\tb"]}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.txt").write_text("\n".join(lines) + "\n")
        (tmp_path / name / "valid.txt").write_text("a\tr\tb\n")
        (tmp_path / name / "test.txt").write_text("" if name == "empty" else "a\tr\tz\n" if name == "unseen" else "a\tr\tb\n")
    (tmp_path / "bad.yaml").write_text("learning_rate: 0.1\n")
    out = tmp_path / "run"
    code = main(["kg", "train", *[a.replace("{tmp}", str(tmp_path)) for a in argv], "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unseen_test_triples_are_dropped_and_counted_by_default(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "train.txt").write_text("a\tr\tb\nb\tr\tc\n")
    (tmp_path / "toy" / "valid.txt").write_text("a\tr\tc\n")
    (tmp_path / "toy" / "test.txt").write_text("c\tr\ta\nc\tq\ta\nz\tr\ta\n")
    data = load_kg("toy", str(tmp_path))
    assert data.unseen == {"train": 0, "valid": 0, "test": 2} and len(data.splits["test"]) == 1


@pytest.mark.slow
def test_a_killed_task_is_retried_by_ray_and_resumes_from_its_checkpoint(ray_session, tmp_path):
    cfg = _config(epochs=120, eval_every=40, patience=100)
    whole = ray_session.get(submit_job(KG_JOB, cfg, str(tmp_path / "whole"), Resources()))
    ref = submit_job(KG_JOB, cfg, str(tmp_path / "killed"), Resources())
    kill_task_after_epoch(tmp_path / "killed" / "checkpoint.pt", 10)
    summary = ray_session.get(ref)
    assert summary["resumed"] and summary["epochs"] == 120 and summary["steps"] == summary["planned_steps"]
    assert summary["test"]["mrr"] == whole["test"]["mrr"]  # the same run as the one never interrupted
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 121))


def test_a_run_its_time_budget_stopped_trains_on_when_resumed_with_more(tmp_path, capsys):
    run = tmp_path / "budget"
    cfg = _config(epochs=6, eval_every=2, patience=100, time_budget=1e-6)
    first = train_kg(cfg, RunFolder(run))
    assert first["stopped_by"] == "time budget" and first["epochs"] == 2
    assert main(["kg", "train", "--resume", str(run), "--time-budget", "10"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] and summary["epochs"] == 6 and summary["stopped_by"] is None


