"""What an SG-driven first stage does to a built-in model, and why the default update is `gated`
(docs/results.md, "The gated update").

One process, K = 2 (the model's stage 0 | the rest), the same seed and data order for every run. Stage 0
is driven by one of:

- `frozen`: never trained (the SG-off ablation);
- `true-adam`, `true-sgd`: the true dL/dh (this is backprop), stepped with Adam at the model's learning
  rate, or with the calibrated rule's SGD (0.05, momentum 0.9);
- `paper`, `calibrated`, `gated`: the cDNI prediction, stepped by that rule (stage.py).

A linear cDNI model is trained on the true targets in every run, so its fit can be read in all of them.
Targets arrive at once (no pipeline staleness). Every 25 steps it prints the cosine between the
prediction and the true dL/dh (activation space) and between the gradients the two give stage 0's
weights (weight space); the cosine of the step Adam then takes to the true weight gradient of the same
batch (what `gated` measures) and of 512 held-out validation samples (data the step was not made from),
with their means over those steps at the end; the share of the prediction's energy in its batch mean, the RMS of h, and every
50 steps the validation loss (bits per character for the GPT, accuracy for the MNIST models).

    python benchmarks/sg_update_diagnosis.py --model gpt --data-dir ../shared/data --steps 300 \\
        --drive frozen true-adam true-sgd calibrated gated
"""

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.text import load_kjv
from dni_pipeline.trainer.models.gpt import gpt
from dni_pipeline.trainer.models.resnet import resnet
from dni_pipeline.trainer.network import build_stages, parse_arch
from dni_pipeline.trainer.stage import learning_rate
from dni_pipeline.trainer.synthetic_gradients import Calibration, StepTrust, SyntheticGradient
from dni_pipeline.trainer.update_rules import SG_MOMENTUM, adam_step_direction

DRIVES = ("frozen", "true-adam", "true-sgd", "paper", "calibrated", "gated")
SGD_LR, LR, TRUST_EVERY = 0.05, 1e-3, 4


def _setup(model: str, data_dir: Path):
    """(data, stage 0, the rest, batch size) as the bench configurations cut them."""
    torch.manual_seed(0)
    if model == "gpt":
        data = load_kjv(data_dir, context=64, test_windows=256)
        net = gpt((64,), data.num_classes)
        return data, net[:3], net[3:], 32
    data = load_dataset("mnist", data_dir)
    if model == "resnet":
        net = resnet(data.input_shape, data.num_classes)
        return data, net[:2], net[2:], 128
    first, rest = build_stages(parse_arch("fc1024*8"), data.input_shape, data.num_classes, 2, seed=0)
    return data, first, rest, 256


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.flatten(0, -2), y.flatten()) if out.dim() == 3 else F.cross_entropy(out, y)


def _cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    return float((u * v).sum() / (u.norm() * v.norm() + 1e-30))


def _batch_mean(t: torch.Tensor) -> torch.Tensor:
    dims = {2: (0,), 3: (0, 1), 4: (0, 2, 3)}[t.dim()]
    return t.mean(dims, keepdim=True).expand_as(t)


def _weight_grads(h: torch.Tensor, params: list, direction: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(h, params, direction, retain_graph=True, allow_unused=True, materialize_grads=True)
    return torch.cat([g.flatten() for g in grads])


def _validation(stages, data, model: str) -> str:
    x, y = torch.from_numpy(data.x_test[:2048]), torch.from_numpy(data.y_test[:2048])
    for s in stages:
        s.eval()
    with torch.no_grad():
        out = torch.cat([stages[1](stages[0](x[i:i + 512])) for i in range(0, len(x), 512)])
    for s in stages:
        s.train()
    if model == "gpt":
        return f"val {float(_loss(out, y)) / math.log(2):.3f} bits"
    return f"val accuracy {float((out.argmax(-1) == y).float().mean()):.4f}"


def _held_out_gradient(first, rest, params: list, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The true gradient of the validation loss on stage 0's weights (BatchNorm in eval mode, so the
    probe leaves the running statistics alone)."""
    for s in (first, rest):
        s.eval()
    grads = torch.autograd.grad(_loss(rest(first(x)), y), params, allow_unused=True, materialize_grads=True)
    for s in (first, rest):
        s.train()
    return torch.cat([g.flatten() for g in grads])


def run(model: str, drive: str, data_dir: Path, steps: int) -> None:
    data, first, rest, batch = _setup(model, data_dir)
    x_held, y_held = torch.from_numpy(data.x_test[:512]), torch.from_numpy(data.y_test[:512])
    step_cosines = []  # (same batch, held out) for the step Adam takes, on reported steps
    shape = tuple(first(torch.from_numpy(data.x_train[:2])).shape[1:])
    sg = SyntheticGradient(shape, [], data.num_classes)
    sg_optimizer, rest_optimizer = torch.optim.Adam(sg.parameters(), LR), torch.optim.Adam(rest.parameters(), LR)
    sgd = drive in ("true-sgd", "calibrated")
    first_optimizer = (torch.optim.SGD(first.parameters(), SGD_LR, momentum=SG_MOMENTUM) if sgd
                       else torch.optim.Adam(first.parameters(), LR))
    calibration, trust = Calibration(), StepTrust(TRUST_EVERY)
    params = list(first.parameters())
    order = np.random.default_rng(0).permutation(len(data.x_train))
    print(f"== {model}, stage 0 driven by {drive}")
    for step in range(steps):
        indices = order[step * batch:(step + 1) * batch]
        x, y = torch.from_numpy(data.x_train[indices]), torch.from_numpy(data.y_train[indices])
        gate = trust.scale if drive == "gated" else 1.0
        for optimizer, base in ((rest_optimizer, LR), (first_optimizer, SGD_LR if sgd else LR * gate)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(base, "cosine", step, steps)
        h = first(x)
        h_in = h.detach().requires_grad_()
        _loss(rest(h_in), y).backward()
        rest_optimizer.step()
        rest_optimizer.zero_grad()
        true, predicted = h_in.grad, sg.predict(h.detach(), y)
        report = step % 25 == 0 or step == steps - 1
        measured = drive == "gated" and step % TRUST_EVERY == 0
        if report or measured:
            predicted_weights, true_weights = _weight_grads(h, params, predicted), _weight_grads(h, params, true)
        if report and drive != "frozen":
            held_out = _held_out_gradient(first, rest, params, x_held, y_held)
        if drive != "frozen":
            direction = {"true-adam": true, "true-sgd": true, "calibrated": predicted * calibration.scale}.get(drive, predicted)
            h.backward(direction)
            first_optimizer.step()
            first_optimizer.zero_grad()
        if measured:  # the cosine of the step Adam now takes to the true weight gradient, as stage.py measures it
            trust.update(adam_step_direction(first_optimizer, params), [true_weights])
        calibration.update(predicted, true)
        sg.regression_loss(h.detach(), y, true).backward()
        sg_optimizer.step()
        sg_optimizer.zero_grad()
        if report:
            line = (f"step {step:4d}  cosine activations {_cosine(predicted, true):+.3f} weights "
                    f"{_cosine(predicted_weights, true_weights):+.3f}  ")
            if drive != "frozen":
                adam = torch.cat([d.flatten() for d in adam_step_direction(first_optimizer, params)])
                step_cosines.append((_cosine(adam, true_weights), _cosine(adam, held_out)))
                line += f"Adam's step to same batch {step_cosines[-1][0]:+.3f} held out {step_cosines[-1][1]:+.3f}  "
            line += (f"batch-mean share of prediction "
                     f"{float(_batch_mean(predicted).pow(2).sum() / (predicted.pow(2).sum() + 1e-30)):.3f} "
                     f"(true {float(_batch_mean(true).pow(2).sum() / true.pow(2).sum()):.3f})  "
                     f"rms h {float(h.detach().pow(2).mean().sqrt()):.3f}")
            if drive in ("calibrated", "gated"):
                line += f"  scale {calibration.scale if drive == 'calibrated' else gate:.3f}"
            if step % 50 == 0 or step == steps - 1:
                line += "  " + _validation((first, rest), data, model)
            print(line, flush=True)
    if step_cosines:
        same, held = np.mean(step_cosines, axis=0)
        print(f"== {drive}: mean cosine of Adam's step to the same batch's true gradient {same:+.3f}, "
              f"to the held-out one {held:+.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("gpt", "resnet", "mlp"), default="gpt")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding text/kjv.txt.gz and the MNIST files")
    parser.add_argument("--drive", nargs="+", choices=DRIVES, default=list(DRIVES))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    for drive in args.drive:
        run(args.model, drive, args.data_dir, args.steps)


if __name__ == "__main__":
    main()
