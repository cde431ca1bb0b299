"""Two measurements behind the calibrated SG update (docs/results.md, "Synthetic gradients that help").

`oracle`: train the bench model (K = 2) for one epoch in one process, stage 0 driven not by an SG model
but by the true dL/dh mixed with isotropic noise to a chosen cosine and shrunk to the length a
least-squares predictor with that cosine would have. It answers: how good must a synthetic gradient
be before following it beats leaving stage 0 untrained (cosine 0, the SG-off ablation)?

`fit`: train an SG model on the true gradients of a network that does not change (its random
initialisation) and report the cosine it reaches: how much of dL/dh the inputs (h, and the label
for cDNI) can predict at all.

    python benchmarks/diagnoses/sg_diagnosis.py oracle --data-dir ../shared/data --cosine 0 0.1 0.3 1
    python benchmarks/diagnoses/sg_diagnosis.py fit --data-dir ../shared/data --mode cdni --sg-hidden '' --steps 700
"""

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.trainer.data import batch_order
from dni_pipeline.trainer.network import build_stages, parse_arch, stage_output_shapes
from dni_pipeline.trainer.stage import learning_rate
from dni_pipeline.trainer.synthetic_gradients import SyntheticGradient

ARCH, BATCH = "fc1024*8", 256


def _batches(data, epochs: int = 1):
    for epoch in range(epochs):
        for indices in batch_order(len(data.x_train), BATCH, epoch, 0):
            yield torch.from_numpy(data.x_train[indices]), torch.from_numpy(data.y_train[indices])


def _noisy(g: torch.Tensor, cosine: float) -> torch.Tensor:
    """A vector at `cosine` to g, of length cosine * |g| (a calibrated predictor's length)."""
    noise = torch.randn_like(g)
    noise -= (noise * g).sum() / (g * g).sum() * g
    noise *= g.norm() / noise.norm()
    return cosine * (cosine * g + math.sqrt(1 - cosine**2) * noise)


def oracle(data, cosine: float, optimizer: str) -> float:
    stages = build_stages(parse_arch(ARCH), data.input_shape, data.num_classes, 2, seed=0)
    first = (torch.optim.SGD(stages[0].parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd"
             else torch.optim.Adam(stages[0].parameters(), lr=1e-3))
    last = torch.optim.Adam(stages[1].parameters(), lr=1e-3)
    total = len(data.x_train) // BATCH
    for step, (x, y) in enumerate(_batches(data)):
        for opt in (first, last):
            for group in opt.param_groups:
                group["lr"] = learning_rate(group.setdefault("base", group["lr"]), "cosine", step, total)
        h = stages[0](x)
        h_in = h.detach().requires_grad_()
        F.cross_entropy(stages[1](h_in), y).backward()
        if cosine > 0:
            h.backward(h_in.grad if cosine == 1 else _noisy(h_in.grad, cosine))
            first.step()
        last.step()
        for opt in (first, last):
            opt.zero_grad()
    model = torch.nn.Sequential(*stages).eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean())


def fit(data, mode: str, hidden: list[int], steps: int) -> None:
    layers = parse_arch(ARCH)
    stages = build_stages(layers, data.input_shape, data.num_classes, 2, seed=0)
    torch.manual_seed(1)
    sg = SyntheticGradient(stage_output_shapes(layers, data.input_shape, 2)[0], hidden,
                           data.num_classes if mode == "cdni" else None)
    optimizer = torch.optim.Adam(sg.parameters(), lr=1e-3)
    cosines = []
    for step, (x, y) in enumerate(_batches(data, epochs=math.ceil(steps * BATCH / len(data.x_train)))):
        if step == steps:
            break
        h = stages[0](x).detach()
        h_in = h.clone().requires_grad_()
        F.cross_entropy(stages[1](h_in), y).backward()
        cosines.append(F.cosine_similarity(sg.predict(h, y).flatten(), h_in.grad.flatten(), dim=0).item())
        sg.regression_loss(h, y, h_in.grad).backward()
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: median cosine of the last 100 predictions {np.median(cosines[-100:]):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["oracle", "fit"], help="which measurement")
    parser.add_argument("--data-dir", required=True, help="folder holding the MNIST IDX files")
    parser.add_argument("--cosine", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0], help="oracle: cosines to try")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                        help="oracle: stage 0's optimizer (SGD lr 0.05 momentum 0.9, or Adam 1e-3)")
    parser.add_argument("--mode", choices=["dni", "cdni"], default="cdni", help="fit: with or without the label")
    parser.add_argument("--sg-hidden", default="", help="fit: hidden widths of the SG model, comma separated")
    parser.add_argument("--steps", type=int, default=700, help="fit: regression steps")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("mnist", args.data_dir)
    if args.what == "oracle":
        for cosine in args.cosine:
            print(f"cosine {cosine:g} ({args.optimizer}): test accuracy after 1 epoch {oracle(data, cosine, args.optimizer):.4f}",
                  flush=True)
    else:
        fit(data, args.mode, [int(w) for w in args.sg_hidden.split(",") if w], args.steps)


if __name__ == "__main__":
    main()
