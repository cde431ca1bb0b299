"""Tuned training defaults per model and per (dataset, model), as LibKGE ships configs: the plain
`dni-pipeline kg train --dataset D --model M` starts from these. Each dataset entry records the
validation-selected setting found by `dni-pipeline kg sweep` (README, Knowledge-graph results)."""

__all__ = ["preset"]

# Per model, for any dataset: ComplEx-N3 and DistMult as in Lacroix et al. 2018 (Adagrad, 1vsall);
# TransE and RotatE as in Sun et al. 2019 (Adam, self-adversarial negative sampling).
MODEL_DEFAULTS = {
    "complex": {"dim": 200, "optimizer": "adagrad", "lr": 0.1, "batch_size": 500, "n3": 0.01},
    "distmult": {"dim": 200, "optimizer": "adagrad", "lr": 0.1, "batch_size": 500, "n3": 0.01},
    "transe": {"dim": 200, "optimizer": "adam", "lr": 1e-3, "batch_size": 512, "negatives": 256,
               "adversarial_temperature": 1.0, "gamma": 12.0, "init_scale": 0.1},
    "rotate": {"dim": 200, "optimizer": "adam", "lr": 1e-3, "batch_size": 512, "negatives": 256,
               "adversarial_temperature": 1.0, "gamma": 12.0, "init_scale": 0.1},
}

DATASET_DEFAULTS = {
    ("nations", "complex"): {"dim": 1000, "batch_size": 100, "n3": 0.0},
    ("umls", "complex"): {"dim": 200, "batch_size": 100, "n3": 0.01},
    ("kinships", "complex"): {"dim": 1000, "batch_size": 100, "n3": 0.01},
    # The large benchmarks: Lacroix et al.'s regularisation at a rank that trains an epoch in minutes on a CPU.
    ("fb15k237", "complex"): {"dim": 200, "batch_size": 250, "n3": 0.05, "eval_every": 1, "patience": 3},
    ("wn18rr", "complex"): {"dim": 200, "batch_size": 250, "n3": 0.1, "eval_every": 1, "patience": 3},
}


def preset(dataset: str, model: str) -> dict:
    """KGTrainConfig values for this dataset and model (unknown names get the model's or none)."""
    return {"model": model, **MODEL_DEFAULTS.get(model, {}), **DATASET_DEFAULTS.get((dataset, model), {})}
