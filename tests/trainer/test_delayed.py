"""The delayed-gradient mode: its stages against locked backprop and against a one-process reference of the same
delayed algorithm, wired by plain calls and on real actors; what it stores; its bad input."""


import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import user_models
from helpers import wired_by_calls

import dni_pipeline
from dni_pipeline.trainer.data import batch_order
from dni_pipeline.trainer.delayed import STALENESS, DelayedStage
from dni_pipeline.trainer.model import as_network
from dni_pipeline.trainer.network import build_stages, parse_arch
from dni_pipeline.trainer.stage import Stage

LR = 1e-2


def delayed_reference(parts: list, batches: list, delays: list[int], lr: float = LR) -> list[dict]:
    """One process, the delayed algorithm written plainly: stage k computes batch t with the weights after the
    gradients of batches 0 .. t - delays[k] - 1, each gradient the true one at the weights its batch was computed
    with; the last stage steps on its loss at once; what is held at the end is applied in order."""
    torch.set_num_threads(1)  # as a one-CPU stage actor computes
    optimizers = [torch.optim.Adam(p.parameters(), lr=lr) for p in parts]
    held = [{} for _ in parts]  # stage -> step -> weight gradients
    applied = [0] * len(parts)

    def apply(k: int) -> None:
        for param, grad in zip(parts[k].parameters(), held[k].pop(applied[k])):
            param.grad = grad
        optimizers[k].step()
        optimizers[k].zero_grad(set_to_none=True)
        applied[k] += 1

    for t, (x, y) in enumerate(batches):
        graphs, h = [], x
        for k, part in enumerate(parts[:-1]):
            while applied[k] < t - delays[k]:
                apply(k)
            weights = {n: p.detach().clone().requires_grad_() for n, p in part.named_parameters()}
            h_in = h.detach().requires_grad_(k > 0)
            h = torch.func.functional_call(part, weights, (h_in,))
            graphs.append((h_in, h, weights))
        h_in = h.detach().requires_grad_()
        out = parts[-1](h_in)
        F.cross_entropy(out.flatten(0, -2), y.flatten()).backward()
        optimizers[-1].step()
        optimizers[-1].zero_grad(set_to_none=True)
        grad = h_in.grad
        for k in reversed(range(len(parts) - 1)):
            h_in, out, weights = graphs[k]
            grads = torch.autograd.grad(out, [*weights.values()] + ([h_in] if k else []), grad)
            held[k][t] = grads[:len(weights)]
            grad = grads[-1] if k else None
    for k in range(len(parts) - 1):
        while held[k]:
            apply(k)
    return [p.state_dict() for p in parts]


def _chain(parts, delays, staleness):
    """Delayed stages wired by plain function calls: each message is handled the moment it is sent."""
    stages: list[Stage] = []
    stages += [DelayedStage(i, len(parts), part, "delayed", wired_by_calls(stages, i), lr=LR, lr_schedule="constant",
                            total_steps=10, delay=delays[i], staleness=staleness) for i, part in enumerate(parts)]
    return stages


def _batches(steps=6, width=12):
    torch.manual_seed(5)
    return [(torch.rand(16, width), torch.randint(0, 4, (16,))) for _ in range(steps)]


def _assert_same(got: list[dict], want: list[dict]) -> None:
    for g, w in zip(got, want):
        for name in w:
            np.testing.assert_allclose(g[name].numpy(), w[name].numpy(), rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("staleness", STALENESS)
def test_with_no_delay_every_treatment_is_locked_backprop(staleness):
    layers = parse_arch("fc32*3")
    parts, reference = build_stages(layers, (12,), 4, 3, seed=2), build_stages(layers, (12,), 4, 3, seed=2)
    stages = _chain(parts, [0, 0, 0], staleness)
    batches = _batches()
    model = torch.nn.Sequential(*reference)
    adam = torch.optim.Adam(model.parameters(), lr=LR)
    for step, (x, y) in enumerate(batches):
        stages[0].forward(step, 0, x, y)
        adam.zero_grad()
        F.cross_entropy(model(x), y).backward()
        adam.step()
    for stage in stages:
        stage.flush(len(batches))
    assert [s.updates for s in stages] == [len(batches)] * 3
    _assert_same([p.state_dict() for p in parts], [p.state_dict() for p in reference])


@pytest.mark.parametrize("delays", [[1, 1, 0], [2, 1, 0], [2, 2, 0]])
def test_delayed_stages_equal_the_one_process_delayed_algorithm(delays):
    layers = parse_arch("fc32*3")
    parts, reference = build_stages(layers, (12,), 4, 3, seed=2), build_stages(layers, (12,), 4, 3, seed=2)
    stages = _chain(parts, delays, "none")
    batches = _batches()
    peaks = [0] * 3
    for step, (x, y) in enumerate(batches):
        stages[0].forward(step, 0, x, y)
        peaks = [max(p, len(s.stored)) for p, s in zip(peaks, stages)]
    for stage in stages:
        stage.flush(len(batches))
    assert [s.updates for s in stages] == [len(batches)] * 3 and not any(s.stored for s in stages)
    assert all(peak <= d + 1 for peak, d in zip(peaks, delays))  # the stated bound: d + 1 batches held
    _assert_same([p.state_dict() for p in parts], delayed_reference(reference, batches, delays))


def test_a_forward_waits_for_the_gradient_it_must_see():
    """Stage 0 with d = 1 may compute batch 1 before batch 0's gradient is back, but not batch 2."""
    parts = build_stages(parse_arch("fc16*2"), (12,), 4, 2, seed=1)
    sent = []
    first = DelayedStage(0, 2, parts[0], "delayed", sent.append, lr=LR, lr_schedule="constant", total_steps=4,
                         delay=1, staleness="none")
    batches = _batches(3)
    for step, (x, y) in enumerate(batches):
        first.forward(step, 0, x, y)
    assert [m.step for m in sent] == [0, 1] and first.updates == 0  # batch 2 waits
    first.backward(0, 0, torch.randn(16, 16) / 16)
    assert first.updates == 1 and [m.step for m in sent] == [0, 1, 2]  # applied after forward 1, then forward 2 ran
    first.backward(1, 0, torch.randn(16, 16) / 16)
    assert first.updates == 2  # forward 2 has run
    first.backward(2, 0, torch.randn(16, 16) / 16)
    assert first.updates == 2  # forward 3 has not: held
    first.flush(3)
    assert first.updates == 3 and not first.stored


STEPS, BATCH = 6, 32


def _mlp_and_data():
    torch.manual_seed(0)
    return user_models.small_mlp((12,), 4), user_models.teacher_data()


def _gpt_and_text():
    torch.manual_seed(0)
    return dni_pipeline.gpt((16,), 12, layers=3, heads=2, width=16), user_models.markov_text_data()


def _arrays(data):
    if isinstance(data, dict):
        return data["x_train"], data["y_train"]
    (x, y), _ = data
    return np.asarray(x), np.asarray(y)


@pytest.mark.slow
@pytest.mark.parametrize("family, stages, delay", [
    ("mlp", 3, None), ("gpt", 2, 1), ("mlp", 2, 0), ("mlp", 2, 2), ("gpt", 3, None), ("gpt", 3, 2)])
def test_delayed_actors_equal_the_one_process_delayed_algorithm(ray_session, family, stages, delay):
    """On real actors, in the run's data order: the stages' weights are the reference's (delay None: K - 1 - k; delay 0:
    locked backprop's, as the reference is then)."""
    model, data = {"mlp": _mlp_and_data, "gpt": _gpt_and_text}[family]()
    network = as_network(copy.deepcopy(model), stages)
    parts = network.build_all()
    result = dni_pipeline.train(copy.deepcopy(model), data, mode="delayed", stages=stages, delay=delay, staleness="none",
                                max_steps=STEPS, batch_size=BATCH, lr=LR, lr_schedule="constant", progress=False)
    x, y = _arrays(data)
    order = batch_order(len(x), BATCH, 0, 0)[:STEPS]
    batches = [(torch.from_numpy(x[i]), torch.from_numpy(y[i])) for i in order]
    delays = [stages - 1 - k if delay is None else delay for k in range(stages - 1)] + [0]
    want, got = network.whole_state_dict(delayed_reference(parts, batches, delays)), result.state_dict()
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_allclose(got[name].numpy(), value.numpy(), rtol=0, atol=1e-5, err_msg=name)
    assert result.summary["stage_updates"] == [STEPS] * stages
    peaks = result.summary["peak_stored_bytes"]
    assert all(p > 0 for p in peaks[:-1]) and peaks[-1] is None
