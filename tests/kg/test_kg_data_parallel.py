"""KG completion on Ray Train (`--workers N`): the weights of one process for both losses."""

import dataclasses
import json

import pytest
import torch

from dni_pipeline.core.data_parallel import run_data_parallel
from dni_pipeline.core.ray_session import Resources
from dni_pipeline.core.run_folder import RunFolder
from kg.job import KG_JOB, KGJobConfig, train_kg
from kg.presets import preset
from kg.training import KGTrainConfig


# Two replicas against one process: the same arithmetic but for the order of the gradient's sum (two
# shard sums, then their mean), so float32 rounding only. Adam (RotatE) keeps the weights within 1e-6 of
# one process's. Adagrad (ComplEx) divides each coordinate's gradient by the root of its own summed
# squares, so a coordinate whose gradient is a near-cancellation (rounding-sized) still takes a step of
# order lr: measured 1.1e-5 after 8 steps on weights of order 0.7; the bound leaves a margin of 10.
@pytest.mark.slow
@pytest.mark.parametrize("model, batch_size, tolerance", [("complex", 1001, 1e-4), ("rotate", 101, 1e-5)])
def test_two_workers_train_the_weights_of_one_process(ray_session, tmp_path, model, batch_size, tolerance):
    """ComplEx 1vsall with N3 and RotatE with negative sampling, 2 epochs; odd batches, so the replicas'
    shards differ in size, which the loss's scaling must absorb."""
    epochs = 2
    train = KGTrainConfig(**{**preset("nations", model), "dim": 16, "batch_size": batch_size, "epochs": epochs,
                             "eval_every": 1, "negatives": 8})
    cfg = KGJobConfig(dataset="nations", train=train)
    one = train_kg(cfg, RunFolder(tmp_path / "one"))
    two = run_data_parallel(KG_JOB, dataclasses.asdict(cfg), str(tmp_path / "two"), 2, Resources(num_cpus=1))
    a, b = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True) for name in ("one", "two"))
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=tolerance, rtol=0, msg=name)
    assert (one["workers"], two["workers"]) == (1, 2) and one.keys() == two.keys()
    assert two["test"]["mrr"] == pytest.approx(one["test"]["mrr"], abs=1e-3)
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    one_records = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in one_records], rel=1e-5)
