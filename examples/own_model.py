"""Your own PyTorch model and data, cut into 2 stage actors that train unlocked (cDNI), then checked
against locked backprop on the same split. Run: python examples/own_model.py [steps]"""

import sys

import torch
from torch import nn

import dni_pipeline

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
digits = dni_pipeline.load_dataset("digits", None)  # any arrays or tensors will do: (N, ...) inputs, (N,) labels
data = ((digits.x_train, digits.y_train), (digits.x_test, digits.y_test))


def build() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.LayerNorm(256), nn.GELU(),  # stage 0: children 0-3
        nn.Linear(256, 256), nn.LayerNorm(256), nn.GELU(), nn.Linear(256, 10),  # stage 1: children 4-7
    )


for mode in ("backprop", "cdni"):
    model = build()
    result = dni_pipeline.train(model, data, mode=mode, stages=2, split=[4], max_steps=steps, batch_size=64,
                                eval_every=max(1, steps // 4), progress=False)
    model.load_state_dict(result.state_dict())  # the trained weights, keyed as your whole model's
    print(f"{mode:8s} test accuracy {result.summary['test_accuracy']:.4f}, "
          f"{result.summary['samples_per_sec']:.0f} samples/s")
