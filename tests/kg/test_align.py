"""Entity alignment: the loader, the metrics and inferences against their formulas, the models on a graph with a
known answer, the job's run folder, resume and bad input."""

import json

import numpy as np
import pytest
import torch
from helpers import kill_task_after_epoch

from dni_pipeline.cli import main
from dni_pipeline.core.jobs import submit_job
from dni_pipeline.core.ray_session import Resources
from dni_pipeline.core.run_folder import RunFolder
from kg.align.data import load_alignment
from kg.align.inference import csls, evaluate_alignment, ranking_metrics, sinkhorn, true_ranks
from kg.align.job import ALIGN_JOB, AlignJobConfig, train_align
from kg.align.training import AlignTrainConfig, build_align_model, embeddings, make_align_optimizer, train_align_epoch


def write_pair(folder, n=300, relations=6, triples=2400, drop=0.1, seed=0, shared_ids=False):
    """A random graph (ids 0..n-1) and a relabelled copy of it with `drop` of its triples left out (ids n..2n-1, or
    the same ids with `shared_ids`), every entity's partner the reference alignment."""
    rng = np.random.default_rng(seed)
    h, r, t = rng.integers(0, n, triples), rng.integers(0, relations, triples), rng.integers(0, n, triples)
    keep = h != t
    first = np.unique(np.stack([h[keep], r[keep], t[keep]], axis=1), axis=0)
    partner = rng.permutation(n) + (0 if shared_ids else n)
    kept = first[rng.random(len(first)) >= drop]
    second = np.stack([partner[kept[:, 0]], kept[:, 1] + relations, partner[kept[:, 2]]], axis=1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ent_ids_1").write_text("".join(f"{i}\thttp://a.org/e{i}\n" for i in range(n)))
    (folder / "ent_ids_2").write_text("".join(f"{p}\thttp://b.org/x{p}\n" for p in sorted(partner)))
    for name, rows in (("triples_1", first), ("triples_2", second)):
        (folder / name).write_text("".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows.tolist()))
    order = rng.permutation(n)
    (folder / "ref_ent_ids").write_text("".join(f"{i}\t{partner[i]}\n" for i in order))
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("align") / "toy")


def test_the_loader_renumbers_both_graphs_and_splits_the_seeds_by_a_seed(pair):
    data = load_alignment(str(pair), seed_fraction=0.3, split_seed=1)
    assert data.graph1_size == 300 and data.num_entities == 600 and data.num_relations == 12
    assert data.uris[0] == "http://a.org/e0" and data.uris[300].startswith("http://b.org/x")
    assert len(data.train_pairs) == 90 and len(data.test_pairs) == 210
    pairs = np.concatenate([data.train_pairs, data.test_pairs])
    assert (pairs[:, 0] < 300).all() and (pairs[:, 1] >= 300).all()
    # Every reference pair, as URIs, pairs e{i} with the x{partner} the files name.
    files = dict(line.split("\t") for line in (pair / "ref_ent_ids").read_text().splitlines())
    assert all(files[data.uris[a].rsplit("e", 1)[1]] == data.uris[b].rsplit("x", 1)[1] for a, b in pairs)
    assert (data.triples1[:, 0] < 300).all() and (data.triples2[:, 0] >= 300).all()
    again, other = load_alignment(str(pair), split_seed=1), load_alignment(str(pair), split_seed=2)
    assert (again.train_pairs == data.train_pairs).all() and not (other.train_pairs == data.train_pairs).all()


def test_a_missing_or_malformed_file_is_one_error_naming_it(tmp_path, pair):
    broken = write_pair(tmp_path / "broken")
    (broken / "triples_2").unlink()
    with pytest.raises(Exception, match="triples_2 is missing"):
        load_alignment(str(broken))
    bad = write_pair(tmp_path / "bad")
    (bad / "ref_ent_ids").write_text("0\t300\n1 301\n")
    with pytest.raises(Exception, match="ref_ent_ids:2 should hold 2 tab-separated fields"):
        load_alignment(str(bad))


def test_hits_and_mrr_equal_a_brute_force_ranking():
    torch.manual_seed(0)
    scores = torch.randn(40, 40).round(decimals=1)  # ties on purpose
    truth = torch.randperm(40)
    ranks = []
    for i in range(40):
        true = scores[i, truth[i]]
        others = [scores[i, j] for j in range(40) if j != truth[i]]
        ranks.append(1 + sum(float(s > true) for s in others) + sum(float(s == true) for s in others) / 2)
    assert true_ranks(scores, truth).tolist() == ranks
    metrics = ranking_metrics(torch.tensor(ranks))
    assert metrics["hits@1"] == pytest.approx(np.mean([r <= 1 for r in ranks]))
    assert metrics["hits@10"] == pytest.approx(np.mean([r <= 10 for r in ranks]))
    assert metrics["mrr"] == pytest.approx(np.mean([1 / r for r in ranks]))


def test_csls_is_its_formula_and_sinkhorn_is_doubly_stochastic():
    torch.manual_seed(0)
    sim = torch.rand(7, 9) * 2 - 1
    k = 3
    for i in range(7):
        for j in range(9):
            r_x = sorted(sim[i].tolist(), reverse=True)[:k]
            r_y = sorted(sim[:, j].tolist(), reverse=True)[:k]
            assert float(csls(sim, k)[i, j]) == pytest.approx(2 * float(sim[i, j]) - np.mean(r_x) - np.mean(r_y), abs=1e-6)
    p = sinkhorn(torch.rand(6, 6), tau=0.1, iterations=200).exp()
    torch.testing.assert_close(p.sum(dim=0), torch.ones(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(6), atol=1e-4, rtol=0)


def _hits_after_training(folder, model, **options):
    data = load_alignment(str(folder))
    cfg = AlignTrainConfig(model=model, **options)
    net = build_align_model(cfg, data)
    optimizer = make_align_optimizer(cfg, net)
    for epoch in range(cfg.resolved().epochs):
        train_align_epoch(cfg, net, optimizer, data.train_pairs, epoch)
    return evaluate_alignment(embeddings(net), data.test_pairs, data.graph1_size)


@pytest.mark.parametrize("model, options", [("gcn-align", {"epochs": 400}), ("dual-amn", {"dim": 32, "epochs": 40,
                                                                                            "batch_size": 0})])
def test_graph_networks_align_a_graph_with_a_relabelled_copy_missing_a_tenth_of_its_edges(pair, model, options):
    results = _hits_after_training(pair, model, **options)
    assert results["csls"]["hits@1"] > 0.9, results["csls"]


def test_the_translational_baseline_on_the_same_graph_is_reported(pair):
    results = _hits_after_training(pair, "mtranse", epochs=300)
    print("mtranse on the relabelled copy:", results["csls"])
    assert results["csls"]["hits@1"] > 0.05  # chance: 1 / 210


def _job(pair, **train):
    return AlignJobConfig(dataset=str(pair), train=AlignTrainConfig(model="gcn-align", epochs=60, **train))


def test_a_run_writes_its_folder_and_bootstraps_between_rounds(pair, tmp_path):
    summary = train_align(_job(pair, rounds=2, round_epochs=20), RunFolder(tmp_path / "run"))
    assert summary["epochs"] == 100 and [r["after_epoch"] for r in summary["rounds"]] == [60, 80]
    first, second = summary["rounds"]
    assert first["added"] > 100 and first["precision"] > 0.9  # mutual nearest neighbours of a well-aligned model
    assert first["added"] + second["added"] <= 210 and second["seeds"] == 90 + first["added"] + second["added"]
    assert set(summary["test"]) == {"cosine", "csls", "sinkhorn", "all_cosine", "all_csls"}
    assert summary["hits@1"] == summary["test"]["sinkhorn"]["hits@1"]
    rows = (tmp_path / "run" / "alignments.tsv").read_text().splitlines()
    assert len(rows) == 210 and all(r.startswith("http://a.org/e") and "\thttp://b.org/x" in r for r in rows)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 101))
    assert [r["seeds"] for r in records][60] == summary["rounds"][0]["seeds"]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    # The found alignment merges graph 2 into graph 1 for completion: the seeds and the run's 210 pairs.
    assert main(["kg", "merge", "--alignment", str(tmp_path / "run"), "--out", str(tmp_path / "found")]) == 0
    assert len((tmp_path / "found" / "train.txt").read_text().splitlines()) > 0


@pytest.mark.parametrize("flags, message", [
    (["--seed-fraction", "1.5"], "--seed-fraction must lie in (0, 1)"),
    (["--model", "bert"], "unknown alignment model 'bert'"),
    (["--inference", "nearest"], "invalid inference 'nearest'"),
])
def test_bad_flags_are_one_line_and_exit_2_with_no_run_folder(pair, tmp_path, capsys, flags, message):
    out = tmp_path / "never"
    code = main(["kg", "align", "--dataset", str(pair), "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_pairs_and_shared_ids_are_refused_in_one_line(tmp_path, capsys):
    shared = write_pair(tmp_path / "shared", shared_ids=True)
    unknown = write_pair(tmp_path / "unknown")
    (unknown / "ref_ent_ids").write_text("0\t300\n5\t9999\n")
    for folder, message in ((shared, "share entity id"), (unknown, "pairs 5 with 9999")):
        out = tmp_path / f"never-{folder.name}"
        code = main(["kg", "align", "--dataset", str(folder), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert message in err and len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_a_killed_alignment_task_resumes_to_the_uninterrupted_run(ray_session, pair, tmp_path):
    cfg = _job(pair, rounds=1, round_epochs=200)
    cfg.train.epochs = 400
    whole = ray_session.get(submit_job(ALIGN_JOB, cfg, str(tmp_path / "whole"), Resources()))
    ref = submit_job(ALIGN_JOB, cfg, str(tmp_path / "killed"), Resources())
    kill_task_after_epoch(tmp_path / "killed" / "checkpoint.pt", 100)
    summary = ray_session.get(ref)
    assert summary["resumed"] and summary["epochs"] == 600
    assert summary["test"] == whole["test"] and summary["rounds"] == whole["rounds"]
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 601))


def test_the_merge_keeps_every_triple_of_both_graphs_mapped_through_the_alignment_exactly_once(pair, tmp_path):
    from kg.align.merge import write_completion_dataset
    from kg.datasets import load_kg

    data = load_alignment(str(pair))
    partner = {int(b): data.uris[a] for a, b in np.concatenate([data.train_pairs, data.test_pairs])}
    counts = write_completion_dataset(data, "reference", tmp_path / "merged")
    lines = {s: (tmp_path / "merged" / f"{s}.txt").read_text().splitlines() for s in ("train", "valid", "test")}
    held = round(0.05 * len(data.triples1))
    assert counts == {s: len(v) for s, v in lines.items()} and counts["valid"] == counts["test"] == held
    first = {f"{data.uris[h]}\tg1:{r}\t{data.uris[t]}" for h, r, t in data.triples1.tolist()}
    second = [f"{partner[h]}\tg2:{r}\t{partner[t]}" for h, r, t in data.triples2.tolist()]
    train = lines["train"]
    assert len(train) == len(set(train))  # each once
    assert sorted(t for t in train if "\tg2:" in t) == sorted(second)
    assert set(t for t in train if "\tg1:" in t) | set(lines["valid"]) | set(lines["test"]) == first
    assert not set(train) & (set(lines["valid"]) | set(lines["test"]))
    load_kg("merged", str(tmp_path), unseen_policy="error")  # every held-out entity and relation occurs in train
    alone = write_completion_dataset(data, "none", tmp_path / "alone")
    assert alone == {"train": len(first) - 2 * held, "valid": held, "test": held}
    assert (tmp_path / "alone" / "test.txt").read_text() == (tmp_path / "merged" / "test.txt").read_text()


@pytest.mark.slow
def test_a_sweep_selects_on_held_out_seeds_and_refuses_to_select_on_test(ray_session, pair, tmp_path, capsys):
    base = ["--dataset", str(pair), "--model", "gcn-align", "--epochs", "40", "--grid", "lr=5,20"]
    assert main(["kg", "align-sweep", *base, "--out", str(tmp_path / "refused")]) == 2
    assert "selects on held-out seeds, never on the test pairs" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main(["kg", "align-sweep", *base, "--valid-fraction", "0.2", "--out", str(tmp_path / "sweep")]) == 0
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sweep["selected_on"] == "valid_hits@1" and len(sweep["trials"]) == 2
    assert sweep["best"]["valid_hits@1"] == max(t["valid_hits@1"] for t in sweep["trials"])
    summary = json.loads((tmp_path / "sweep" / sweep["best"]["trial"] / "summary.json").read_text())
    assert summary["seed_pairs"] == 72 and summary["valid_pairs"] == 18  # 90 seeds, a fifth held out


def test_resuming_a_finished_run_from_the_command_line_changes_nothing_but_the_resumed_flag(pair, tmp_path):
    first = train_align(_job(pair), RunFolder(tmp_path / "run"))
    assert main(["kg", "align", "--resume", str(tmp_path / "run")]) == 0
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert resumed["resumed"] and resumed["epochs"] == first["epochs"] and resumed["test"] == first["test"]
