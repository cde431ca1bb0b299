"""Which SG model for sequence activations: the character GPT at K = 2 trained with each candidate
(per-position linear, per-position MLP with one hidden layer) in dni and cdni, beside backprop and the
SG-off ablation, same seed and data order; validation bits per character at equal steps.

Usage: python benchmarks/sequence_sg.py --data-dir ../shared/data [--steps 400] [--out FILE.json]
"""

import argparse
import json

import torch

import dni_pipeline

CANDIDATES = [  # (label, mode, sg_hidden, sg_off)
    ("backprop", "backprop", [], False),
    ("cdni sg-off", "cdni", [], True),
    ("dni linear", "dni", [], False),
    ("dni mlp 256", "dni", [256], False),
    ("cdni linear", "cdni", [], False),
    ("cdni mlp 256", "cdni", [256], False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default="sequence_sg.json")
    args = parser.parse_args()
    text = dni_pipeline.load_dataset("kjv", args.data_dir, context=64, test_windows=256)
    data = ((text.x_train, text.y_train), (text.x_test, text.y_test))
    results = {}
    for label, mode, hidden, sg_off in CANDIDATES:
        torch.manual_seed(0)  # the same initial model for every candidate
        model = dni_pipeline.gpt((64,), text.num_classes)
        result = dni_pipeline.train(model, data, mode=mode, stages=2, max_steps=args.steps, batch_size=32,
                                    eval_every=args.steps // 4, sg_hidden=hidden, sg_off=sg_off, progress=False)
        results[label] = {"bits": [[e["step"], round(e["test_bits"], 4)] for e in result.evals],
                          "samples_per_sec": result.summary["samples_per_sec"]}
        print(label, results[label], flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
