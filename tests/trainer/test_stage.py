"""The update rules of one stage, checked against autograd directly (no Ray)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import wired_by_calls

from dni_pipeline.trainer.model import default_aux_head
from dni_pipeline.trainer.models.gpt import Block, Head
from dni_pipeline.trainer.network import build_stages, parse_arch
from dni_pipeline.trainer.stage import Stage, learning_rate
from dni_pipeline.trainer.synthetic_gradients import SyntheticGradient


def _randomize_last_layer(sg: SyntheticGradient) -> None:
    torch.nn.init.normal_(sg.net[-1].weight, std=0.3)
    torch.nn.init.normal_(sg.net[-1].bias, std=0.3)


def _stage(index, num_stages, module, mode, sg=None, sent=None, sg_update="paper"):
    return Stage(index, num_stages, module, mode, (sent if sent is not None else []).append,
                 lr=1e-2, lr_schedule="constant", total_steps=10, sg_model=sg, sg_update=sg_update)


@pytest.mark.parametrize("shape, classes", [((16,), None), ((16,), 5), ((3, 4, 4), None), ((3, 4, 4), 5)])
def test_sg_final_layer_starts_at_zero(shape, classes):
    sg = SyntheticGradient(shape, [8], classes)
    assert not sg.net[-1].weight.any() and not sg.net[-1].bias.any()
    h = torch.randn(6, *shape)
    assert torch.equal(sg.predict(h, torch.arange(6) % 5), torch.zeros_like(h))


@pytest.mark.parametrize("mode, sg_update", [("dni", "paper"), ("cdni", "paper"), ("dni", "calibrated"),
                                             ("cdni", "calibrated"), ("dni", "gated"), ("cdni", "gated")])
def test_sg_target_sent_upstream_is_the_gradient_of_block_output_dot_prediction(mode, sg_update):
    torch.manual_seed(0)
    block = build_stages(parse_arch("fc16*3"), (16,), 5, 3, seed=1)[1]
    sg = SyntheticGradient((16,), [32] if mode == "dni" else [], 5 if mode == "cdni" else None)
    _randomize_last_layer(sg)
    block_before, sg_before = copy.deepcopy(block), copy.deepcopy(sg)
    sent = []
    stage = _stage(1, 3, block, mode, sg, sent, sg_update)
    scale = 1.0
    if sg_update == "calibrated":  # alpha = 0.5 / 1 and rho = 0.5 / sqrt(1 * 4): a quarter of alpha
        stage.calibration.load_state_dict({"cross": 0.5, "energy": 1.0, "target_energy": 4.0})
        scale = 0.5 * 0.25
    h_in, labels = torch.randn(8, 16), torch.arange(8) % 5
    stage.forward(0, 0, h_in.clone(), labels)

    # What the test computes itself: d/dh_in <block(h_in), scale * M(h)> with M(h) held constant.
    x = h_in.clone().requires_grad_()
    out = block_before(x)
    prediction = scale * sg_before.predict(out.detach(), labels)
    (expected,) = torch.autograd.grad((out * prediction).sum(), x)

    assert [m.kind for m in sent] == ["forward", "backward"]  # activations leave before the update
    torch.testing.assert_close(sent[0].tensor, out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(sent[1].tensor, expected, rtol=1e-6, atol=1e-7)
    assert expected.abs().sum() > 0
    assert stage.updates == 1  # updated at once, without waiting for anything downstream


@pytest.mark.parametrize("mode", ["dni", "cdni"])
def test_sg_target_for_sequences_is_the_gradient_of_the_downstream_loss(mode):
    """(B, T, D) activations: stage 1 (a transformer block) sends upstream d/dh_in <block(h_in), M(h)>, M
    predicting per position (cDNI: conditioned on each position's target token); the last stage (a block
    and the head) sends the true gradient of the mean cross-entropy over every position."""
    torch.manual_seed(0)
    batch, context, width, vocab = 4, 6, 8, 5
    block, last = Block(width, 2, 0.0), torch.nn.Sequential(Block(width, 2, 0.0), Head(width, vocab))
    sg = SyntheticGradient((context, width), [16] if mode == "dni" else [], vocab if mode == "cdni" else None)
    _randomize_last_layer(sg)
    block_before, last_before, sg_before = copy.deepcopy(block), copy.deepcopy(last), copy.deepcopy(sg)
    sent, sent_last = [], []
    middle = _stage(1, 3, block, mode, sg, sent)
    final = _stage(2, 3, last, mode, sent=sent_last)
    h_in, labels = torch.randn(batch, context, width), torch.randint(0, vocab, (batch, context))
    middle.forward(0, 0, h_in.clone(), labels)
    final.forward(0, 0, sent[0].tensor.clone(), labels)

    x = h_in.clone().requires_grad_()
    out = block_before(x)
    prediction = sg_before.predict(out.detach(), labels)
    (expected,) = torch.autograd.grad((out * prediction).sum(), x)
    torch.testing.assert_close(sent[1].tensor, expected, rtol=1e-5, atol=1e-8)
    assert expected.abs().sum() > 0 and prediction.shape == (batch, context, width)

    h = out.detach().requires_grad_()
    loss = F.cross_entropy(last_before(h).flatten(0, 1), labels.flatten())
    (true_grad,) = torch.autograd.grad(loss, h)
    torch.testing.assert_close(sent_last[0].tensor, true_grad, rtol=1e-5, atol=1e-8)
    # That true gradient is what the SG of stage 1 regresses on, at per-term scale (B x T terms).
    middle.backward(0, 0, true_grad)
    torch.testing.assert_close(sg_before.regression_loss(out.detach(), labels, true_grad),
                               F.mse_loss(sg_before(out.detach(), labels), true_grad * batch * context))


def test_last_stage_sends_the_true_input_gradient():
    block = build_stages(parse_arch("fc16*2"), (16,), 5, 2, seed=1)[1]
    block_before = copy.deepcopy(block)
    sent = []
    stage = _stage(1, 2, block, "dni", sent=sent)
    h_in, labels = torch.randn(8, 16), torch.arange(8) % 5
    metrics = stage.forward(0, 0, h_in.clone(), labels)
    x = h_in.clone().requires_grad_()
    loss = F.cross_entropy(block_before(x), labels)
    (expected,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(sent[0].tensor, expected, rtol=1e-6, atol=1e-8)
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-6) and metrics["count"] == 8


@pytest.mark.parametrize("mode", ["backprop", "1f1b"])
def test_a_locked_stage_sends_its_input_gradient_before_its_weight_gradients(mode):
    """The stage before starts its backward sooner; the update that follows is one full backward's Adam step."""
    block = build_stages(parse_arch("fc16*2"), (16,), 5, 2, seed=1)[1]
    reference = copy.deepcopy(block)
    sent = []
    stage = Stage(1, 2, block, mode, lambda m: sent.append((m, [p.grad for p in block.parameters()])), lr=1e-2,
                  lr_schedule="constant", total_steps=1)
    h_in, labels = torch.randn(8, 16), torch.arange(8) % 5
    stage.forward(0, 0, h_in.clone(), labels)
    x = h_in.clone().requires_grad_()
    F.cross_entropy(reference(x), labels).backward()
    (message, grads_when_sent), = sent
    assert all(g is None for g in grads_when_sent)
    torch.testing.assert_close(message.tensor, x.grad, rtol=1e-6, atol=1e-8)
    torch.optim.Adam(reference.parameters(), lr=1e-2).step()
    for got, want in zip(block.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_conditioned_sg_depends_on_the_label():
    sg = SyntheticGradient((16,), [], num_classes=5)
    _randomize_last_layer(sg)
    h = torch.randn(1, 16).repeat(2, 1)
    prediction = sg.predict(h, torch.tensor([0, 1]))
    assert not torch.allclose(prediction[0], prediction[1])


def test_sg_regression_learns_its_target():
    torch.manual_seed(0)
    sg = SyntheticGradient((16,), [], None)
    stage = _stage(0, 2, torch.nn.Linear(16, 16), "dni", sg)
    mapping = torch.randn(16, 16) * 0.1
    losses = []
    for step in range(300):
        h = torch.rand(32, 16)
        stage.pending[(step, 0)] = (h, torch.zeros(32, dtype=torch.long), torch.zeros(32, 16))
        target = (h @ mapping) / 32  # a gradient of the batch-mean loss
        losses.append(stage.backward(step, 0, target)["sg_loss"])
    assert losses[-1] < losses[0] / 20


def test_backprop_chain_equals_one_module():
    """Three backprop stages wired by plain function calls train exactly like the whole network."""
    layers, seed = parse_arch("fc32*3"), 3
    reference = torch.nn.Sequential(*build_stages(layers, (12,), 4, 3, seed))
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    parts = build_stages(layers, (12,), 4, 3, seed)

    stages: list[Stage] = []
    stages += [Stage(i, 3, parts[i], "backprop", wired_by_calls(stages, i), lr=1e-2, lr_schedule="cosine", total_steps=5)
               for i in range(3)]
    generator = torch.Generator().manual_seed(0)
    for step in range(5):
        x, y = torch.rand(16, 12, generator=generator), torch.randint(0, 4, (16,), generator=generator)
        stages[0].forward(step, 0, x, y)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(1e-2, "cosine", step, 5)
        optimizer.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        optimizer.step()
    flat = [t for s in parts for t in s.state_dict().values()]
    for got, want in zip(flat, reference.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_cosine_schedule():
    assert learning_rate(0.1, "cosine", 0, 100) == pytest.approx(0.1)
    assert learning_rate(0.1, "cosine", 50, 100) == pytest.approx(0.05)
    assert learning_rate(0.1, "cosine", 100, 100) == pytest.approx(0.0)
    assert learning_rate(0.1, "constant", 99, 100) == 0.1


def _simulate(mode: str, num_stages: int, micro_batches: int, steps: int = 1):
    """Deliver messages first-in first-out between pure Stage objects, as actors would, with every step fed to
    stage 0 up front (two at most: the driver feeds a locked step while the one before runs); return each stage's order
    of forwards ("F", micro) and backwards ("B", micro), the stages and the batches."""
    from collections import deque

    layers = parse_arch(f"fc8*{num_stages}")
    parts = build_stages(layers, (6,), 3, num_stages, seed=0)
    inbox: deque = deque()
    trace: list[list] = [[] for _ in range(num_stages)]
    stages: list[Stage] = []

    def make_send(i):
        def send(message):
            target = i + 1 if message.kind == "forward" else i - 1
            inbox.append((target, message))
        return send

    for i in range(num_stages):
        stage = Stage(i, num_stages, parts[i], mode, make_send(i), lr=1e-2, lr_schedule="constant",
                      total_steps=steps, micro_batches=micro_batches, batch_size=4 * micro_batches)
        original_forward, original_backward = stage.module.forward, stage._locked_backward
        stage.module.forward = lambda x, i=i, f=original_forward: (trace[i].append(("F", None)), f(x))[1]
        stage._locked_backward = lambda step, micro, grad, i=i, b=original_backward: (
            trace[i].append(("B", micro)), b(step, micro, grad))[1]
        stages.append(stage)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(4 * micro_batches, 6, generator=generator), torch.arange(4 * micro_batches) % 3)
               for _ in range(steps)]
    for step, (x, y) in enumerate(batches):
        for micro in range(micro_batches):
            inbox.append((0, ("feed", step, micro, x[4 * micro:4 * micro + 4], y[4 * micro:4 * micro + 4])))
    while inbox:
        target, message = inbox.popleft()
        if isinstance(message, tuple):
            stages[0].forward(*message[1:])
        elif message.kind == "forward":
            stages[target].forward(message.step, message.micro, message.tensor, message.labels)
        else:
            stages[target].backward(message.step, message.micro, message.tensor)
    return [["F" if op == "F" else f"B{m}" for op, m in ops] for ops in trace], stages, batches


def test_gpipe_schedule_runs_all_forwards_then_backwards_in_reverse():
    trace, stages, _ = _simulate("gpipe", num_stages=2, micro_batches=4)
    assert trace[0] == ["F", "F", "F", "F", "B3", "B2", "B1", "B0"]
    assert trace[1] == ["F", "F", "F", "F", "B3", "B2", "B1", "B0"]
    assert [s.updates for s in stages] == [1, 1]


def test_1f1b_schedule_alternates_and_bounds_activations():
    trace, stages, _ = _simulate("1f1b", num_stages=3, micro_batches=4)
    assert trace[0] == ["F", "F", "F", "B0", "F", "B1", "B2", "B3"]  # at most K - 0 = 3 in flight
    assert trace[1] == ["F", "F", "B0", "F", "B1", "F", "B2", "B3"]  # at most K - 1 = 2 in flight
    assert trace[2] == ["F", "B0", "F", "B1", "F", "B2", "F", "B3"]
    assert [s.updates for s in stages] == [1, 1, 1] and not any(s.pending for s in stages)


@pytest.mark.parametrize("mode, num_stages", [("gpipe", 2), ("1f1b", 3), ("backprop", 2)])
def test_a_step_fed_early_waits_for_the_update_before_it(mode, num_stages):
    """Two steps fed to stage 0 at once (the driver feeds one step ahead): the second step's forwards run
    only after the first is applied (the same schedule twice over), and the weights and BatchNorm
    statistics are those of one module trained on the same micro-batches (gradients accumulated to the
    mini-batch mean, then Adam)."""
    micro = 1 if mode == "backprop" else 4
    trace, stages, batches = _simulate(mode, num_stages, micro, steps=2)
    one_step, _, _ = _simulate(mode, num_stages, micro)
    assert all(t == one * 2 for t, one in zip(trace, one_step))
    reference = torch.nn.Sequential(*build_stages(parse_arch(f"fc8*{num_stages}"), (6,), 3, num_stages, seed=0))
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    for x, y in batches:
        optimizer.zero_grad()
        for part_x, part_y in zip(x.chunk(micro), y.chunk(micro)):
            (F.cross_entropy(reference(part_x), part_y) / micro).backward()
        optimizer.step()
    for got, want in zip([t for s in stages for t in s.module.state_dict().values()], reference.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert [s.updates for s in stages] == [2] * num_stages and not any(s.deferred for s in stages)


def test_dgl_trains_an_auxiliary_head_and_sends_nothing_upstream():
    block = build_stages(parse_arch("fc16*2"), (16,), 5, 2, seed=1)[0]
    head = default_aux_head((16,), 5, [])
    head_before = copy.deepcopy(head)
    sent = []
    stage = Stage(0, 2, block, "dgl", sent.append, lr=1e-2, lr_schedule="constant", total_steps=1, aux_head=head)
    metrics = stage.forward(0, 0, torch.randn(8, 16), torch.arange(8) % 5)
    assert [m.kind for m in sent] == ["forward"] and metrics["aux_loss"] > 0
    assert not torch.equal(head[-1].weight, head_before[-1].weight) and stage.updates == 1
    sent.clear()
    last = Stage(1, 2, build_stages(parse_arch("fc16*2"), (16,), 5, 2, seed=1)[1], "dgl", sent.append,
                 lr=1e-2, lr_schedule="constant", total_steps=1)
    last.forward(0, 0, torch.randn(8, 16), torch.arange(8) % 5)
    assert sent == []


def test_probe_compares_sg_with_the_true_gradient_and_changes_nothing():
    """Two stages: the probe's cosine at stage 0 equals the cosine between the SG prediction and
    autograd's gradient of the last stage's loss, and no weight or statistic moves."""
    parts = build_stages(parse_arch("fc16*2"), (16,), 5, 2, seed=1)
    sg = SyntheticGradient((16,), [], 5)
    _randomize_last_layer(sg)
    inbox = []
    first = Stage(0, 2, parts[0], "cdni", inbox.append, lr=1e-2, lr_schedule="constant", total_steps=1, sg_model=sg)
    last = Stage(1, 2, parts[1], "cdni", inbox.append, lr=1e-2, lr_schedule="constant", total_steps=1)
    before = [copy.deepcopy(p.state_dict()) for p in parts]
    x, y = torch.rand(8, 16), torch.arange(8) % 5
    first.probe(7, x, y)
    last.probe(7, inbox[0].tensor, inbox[0].labels)
    cosine = first.probe_backward(7, inbox[1].tensor)["sg_cosine"]
    for part, state in zip(parts, before):
        for name, value in part.state_dict().items():
            assert torch.equal(value, state[name]), name

    h = parts[0](x).detach().requires_grad_()
    (true_grad,) = torch.autograd.grad(F.cross_entropy(parts[1](h), y), h)
    expected = F.cosine_similarity(sg.predict(h.detach(), y).flatten(), true_grad.flatten(), dim=0).item()
    assert cosine == pytest.approx(expected, abs=1e-5)


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def test_gated_trust_is_the_cosine_of_adams_step_to_the_true_gradient_and_scales_the_step():
    """Step 0 is measured: when its target comes back, the cosine recorded is the one between the step
    Adam takes after the prediction's weight gradient (its bias-corrected moments, per unit of learning
    rate) and the weight gradient of <block(h_in), target> at the weights the batch was computed with, and
    beside it the same cosine for Adam's step on the measured true gradients alone. The trust starts
    at 0, so step 0 leaves the weights where they were; step 1 is Adam's step at lr x trust, with Adam's
    moments fed by both steps' gradients."""
    torch.manual_seed(0)
    block = build_stages(parse_arch("fc16*3"), (16,), 5, 3, seed=1)[1]
    sg = SyntheticGradient((16,), [], 5)
    _randomize_last_layer(sg)
    reference, sg_before = copy.deepcopy(block), copy.deepcopy(sg)
    adam = torch.optim.Adam(reference.parameters(), lr=0.0)
    stage = _stage(1, 3, block, "cdni", sg, sg_update="gated")
    batches = [(torch.randn(8, 16), torch.arange(8) % 5, torch.randn(8, 16) / 8) for _ in range(2)]

    def adam_step(lr, h_in, labels, sg_model, target=None):
        """Adam's step along the SG's weight gradient; returns the true one the target gives, if any."""
        out = reference(h_in)
        params = list(reference.parameters())
        grads = torch.autograd.grad(out, params, sg_model.predict(out.detach(), labels), retain_graph=True)
        true = torch.autograd.grad(out, params, target) if target is not None else None
        for param, grad in zip(params, grads):
            param.grad = grad
        adam.param_groups[0]["lr"] = lr
        adam.step()
        return true

    h_in, labels, target = batches[0]
    stage.forward(0, 0, h_in.clone(), labels)
    for name, param in block.named_parameters():
        assert torch.equal(param, dict(reference.named_parameters())[name]), name  # trust 0: no step
    measured = stage.backward(0, 0, target)
    true = adam_step(0.0, h_in, labels, sg_before, target)
    moments = [(adam.state[p]["exp_avg"], adam.state[p]["exp_avg_sq"]) for p in reference.parameters()]
    direction = [m / 0.1 / ((v / 0.001).sqrt() + 1e-8) for m, v in moments]
    expected = F.cosine_similarity(_flat(direction), _flat(true), dim=0).item()
    assert measured["sg_step_cosine"] == pytest.approx(expected, abs=1e-5) and abs(expected) > 0.01
    assert stage.trust.cosine == pytest.approx(0.3 * expected, abs=1e-6)
    # The reference: Adam's first step on the measured true gradients alone, g / |g| element by element.
    expected = F.cosine_similarity(_flat([g / (g.abs() + 1e-8) for g in true]), _flat(true), dim=0).item()
    assert measured["sg_true_step_cosine"] == pytest.approx(expected, abs=1e-5) and expected > measured["sg_step_cosine"]

    # many batches at cosine 0.5, the true gradient's own steps at 1: half as sure, half the learning rate
    stage.trust.load_state_dict({"cosine": 0.5, "square": 0.25, "reference": 1 - 0.7**60, "measured": 60,
                                 "true_moments": None})
    sg_now = copy.deepcopy(sg)
    h_in, labels, _ = batches[1]
    stage.forward(1, 0, h_in.clone(), labels)
    adam_step(1e-2 * 0.5, h_in, labels, sg_now)
    for name, param in block.named_parameters():
        torch.testing.assert_close(param, dict(reference.named_parameters())[name], rtol=1e-6, atol=1e-7)
    assert stage.updates == 2 and not stage.measuring  # step 1 is not measured (every 4th is)


class _Unusable(SyntheticGradient):
    def forward(self, h, labels):
        raise AssertionError("an SG-off stage must not run its SG model")


def test_sg_off_stage_only_forwards_and_the_last_stage_sends_nothing_back():
    parts = build_stages(parse_arch("fc16*2"), (16,), 5, 2, seed=1)
    before = {name: param.detach().clone() for name, param in parts[0].named_parameters()}
    sent, sent_last = [], []
    first = Stage(0, 2, parts[0], "dni", sent.append, lr=1e-2, lr_schedule="constant", total_steps=2,
                  sg_model=_Unusable((16,), [], None), sg_off=True)
    last = Stage(1, 2, parts[1], "dni", sent_last.append, lr=1e-2, lr_schedule="constant", total_steps=2, sg_off=True)
    for step in range(2):
        first.forward(step, 0, torch.randn(8, 16), torch.arange(8) % 5)
        last.forward(step, 0, sent[-1].tensor, sent[-1].labels)
    assert [m.kind for m in sent] == ["forward", "forward"] and sent_last == []
    assert not sent[0].tensor.requires_grad and first.updates == last.updates == 2
    for name, param in parts[0].named_parameters():  # (BatchNorm's running statistics move, as in training)
        assert torch.equal(param, before[name]), name


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_corrected_sg_step_plus_its_correction_is_the_true_gradients_step(optimizer):
    """The stage's step on its prediction moves the weights at once; when the true target comes back, the two steps
    add up to the optimizer's own step on the true weight gradient at the weights the batch was computed with
    (under plain SGD: a step on the true gradient less the prediction's), and Adam's state is that of the true
    gradient alone. What goes upstream is the true gradient at the batch's input, once its target is back."""
    torch.manual_seed(0)
    block = build_stages(parse_arch("fc16*3"), (16,), 5, 3, seed=1)[1]
    sg = SyntheticGradient((16,), [], 5)
    _randomize_last_layer(sg)
    reference = copy.deepcopy(block)
    sent = []
    stage = _stage(1, 3, block, "cdni", sg, sent, sg_update="corrected")
    if optimizer == "sgd":
        stage.optimizer = torch.optim.SGD(block.parameters(), lr=1e-2)  # the stage sets its learning rate, 1e-2
    h_in, labels, target = torch.randn(8, 16), torch.arange(8) % 5, torch.randn(8, 16) / 8
    stage.forward(0, 0, h_in.clone(), labels)
    moved = {name: param.detach().clone() for name, param in block.named_parameters()}
    assert not stage.optimizer.state or optimizer == "sgd"  # the advance left Adam's state untouched
    assert [m.kind for m in sent] == ["forward"]
    stage.backward(0, 0, target)
    x = h_in.clone().requires_grad_()
    *true, upstream = torch.autograd.grad(reference(x), [*reference.parameters(), x], target)
    assert [m.kind for m in sent] == ["forward", "backward"]
    torch.testing.assert_close(sent[1].tensor, upstream, rtol=1e-6, atol=1e-8)
    for param, grad in zip(reference.parameters(), true):
        param.grad = grad
    expected = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(reference.parameters(), lr=1e-2)
    start = {name: param.detach().clone() for name, param in reference.named_parameters()}
    expected.step()
    for (name, param), want in zip(block.named_parameters(), reference.parameters()):
        assert not torch.equal(moved[name], start[name])  # the SG step moved the weights first
        torch.testing.assert_close(param, want, rtol=0, atol=1e-6)  # (to float rounding)
    if optimizer == "adam":
        for mine, theirs in zip(block.parameters(), reference.parameters()):
            torch.testing.assert_close(stage.optimizer.state[mine]["exp_avg"], expected.state[theirs]["exp_avg"])
    assert stage.updates == 1 and not stage.measuring
