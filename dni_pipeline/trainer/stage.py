"""The update rules of one pipeline stage, in plain PyTorch: no Ray here, so every rule is testable.

A stage reacts to messages and emits messages through a `send` callback. Forward-going kinds carry
activations and labels (``forward``, ``eval``, ``probe``); backward-going kinds carry a gradient of the
batch-mean loss w.r.t. the receiver's output (``backward``, ``probe_backward``).

Modes:
- locked, exact (``backprop``, ``gpipe``, ``1f1b``): the mini-batch is cut into M micro-batches
  (M = 1 for backprop); a stage accumulates the true gradients of all M and then steps. GPipe runs all
  forwards before any backward; 1F1B lets stage i hold at most K - i forwards not yet backpropagated.
- synthetic gradients (``dni``, ``cdni``): a stage sends its output on, then at once backpropagates
  its SG model's prediction and steps; the gradient it computes for its input goes upstream as the
  regression target of the stage before (bootstrapping). Only the last stage sees the true loss.
  How an SG-driven stage steps is its update rule (update_rules.py, named by `sg_update`; see
  docs/training.md); every other stage steps on its exact gradient with Adam.
  An SG-off stage (the ablation) runs its block forward only: no SG model, no backward, no step.
- local losses (``dgl``): a stage trains an auxiliary classifier on its own output; nothing goes upstream.
- delayed true gradients (``delayed``): a stage steps on the true gradient of a batch it sent d steps before,
  never waiting for it unless it is late (`DelayedStage`, delayed.py).

Synthetic inputs (dni, cdni; the complete unlock): every stage after the first also owns an input model
I(x) of its input. Each stage updates as soon as the driver hands it the batch (`synthetic_step`: on I(x),
or on the data for stage 0), and the real inputs travel the pipeline as a stream of their own
(`real_input`): a stage regresses I(x) on the real input of the same batch, sends its output on it to the
next stage and the gradient at it back as the SG target of the stage before, and (after the first) steps
its block again on that gradient, so the block also learns the inputs evaluation gives it.
"""

import contextlib
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

from .objective import Objective
from .stage_config import StageConfig
from .synthetic_gradients import Calibration, StepTrust, SyntheticGradient
from .synthetic_inputs import SyntheticInputModel
from .update_rules import SG_UPDATES, UpdateRule, update_rule

__all__ = ["MODES", "LOCKED_MODES", "SG_MODES", "SG_UPDATES", "WORK_KINDS",
           "Message", "NonFiniteError", "Stage", "learning_rate"]

LOCKED_MODES = ("backprop", "gpipe", "1f1b")
SG_MODES = ("dni", "cdni")
MODES = LOCKED_MODES + SG_MODES + ("dgl", "delayed")
WORK_KINDS = ("forward", "backward", "synthetic")  # the messages a stage trains on (its busy time)


class NonFiniteError(RuntimeError):
    """A NaN or inf in a loss, an activation or a gradient: training cannot go on from it."""


@dataclass
class Message:
    kind: str
    step: int  # training step, or evaluation batch / probe id
    tensor: torch.Tensor
    labels: torch.Tensor | None = None
    micro: int = 0


def learning_rate(base: float, schedule: str, step: int, total_steps: int) -> float:
    """Constant, or cosine decay from `base` to 0 over the run."""
    if schedule == "constant":
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


@contextlib.contextmanager
def _buffers_kept(module: nn.Module):
    """Run the block and leave its buffers as they were: BatchNorm normalises a synthetic input with that batch's
    statistics but keeps its running ones for the real inputs, which evaluation sees."""
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    yield
    for buffer, value in saved:
        # Through .data, as BatchNorm's own update is: graphs kept for later backwards (which, in training mode,
        # do not read these values) must not see a new version of a buffer they saved.
        buffer.data.copy_(value)


def _frozen_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a module's parameters and buffers: a probe's graph then survives later
    in-place optimizer steps, and BatchNorm updates only the copied running statistics."""
    return {k: v.detach().clone() for k, v in (*module.named_parameters(), *module.named_buffers())}


class Stage:
    """One block of the network with its optimizer and, by mode, its SG model or auxiliary head."""

    def __init__(
        self,
        index: int,
        num_stages: int,
        module: nn.Module,
        mode: str,
        send: Callable[[Message], None],
        *,
        config: StageConfig | None = None,
        sg_model: SyntheticGradient | None = None,
        aux_head: nn.Module | None = None,
        objective: Objective | None = None,
        input_model: SyntheticInputModel | None = None,
        **settings,
    ):
        """`config` holds the stage's settings; without it, `settings` are StageConfig's fields (a shorthand)."""
        self.config = config = config or StageConfig(**settings)
        self.index, self.num_stages, self.mode = index, num_stages, mode
        self.objective = objective or Objective()
        self.is_last = index == num_stages - 1
        self.module, self.send = module, send
        self.lr_schedule, self.total_steps = config.lr_schedule, config.total_steps
        self.micro_batches = config.micro_batches
        self.batch_size = config.batch_size
        self.aux = aux_head
        self.sg = sg_model
        self.sg_off = config.sg_off and mode in SG_MODES  # the ablation: every stage but the last frozen, nothing sent back
        self.rule: UpdateRule = update_rule(config, sg_driven=sg_model is not None and not self.sg_off)
        params = list(module.parameters()) + (list(aux_head.parameters()) if aux_head else [])
        self.optimizer = self.rule.optimizer(params)
        self.sg_base_lr = config.sg_lr or config.lr
        self.sg_optimizer = torch.optim.Adam(sg_model.parameters(), lr=self.sg_base_lr) if sg_model else None
        self.input_model = input_model
        self.input_optimizer = torch.optim.Adam(input_model.parameters(), lr=self.sg_base_lr) if input_model else None
        # (step, micro) -> what a later backward needs: (input, output or loss) with graph in locked
        # modes, (detached output, labels, raw prediction) for SG regression. Bounded by the steps in flight.
        self.pending: dict[tuple[int, int], tuple] = {}
        self.backwards_done: dict[int, int] = {}  # step -> micro-batches backpropagated (locked modes)
        # Forwards that came early, in order. Locked modes: a next step's (fed while this one runs) until this step's
        # update is applied, and under 1F1B one waiting for a backward to free a slot. `corrected`: one whose weights
        # must first have the true gradients d steps back (`_corrected_for`).
        self.deferred: deque = deque()
        self.probes: dict[int, tuple] = {}
        # (step, micro) -> (input, output, the weights it was made with, the rule's keep)
        self.measuring: dict[tuple[int, int], tuple] = {}
        self.updates = 0
        self.corrected = 0  # `corrected`: the next step whose true gradient this stage has not applied

    @property
    def calibration(self) -> Calibration | None:
        """The `calibrated` rule's evidence (None under another rule)."""
        return getattr(self.rule, "calibration", None)

    @property
    def trust(self) -> StepTrust | None:
        """The `gated` rule's evidence (None under another rule)."""
        return getattr(self.rule, "trust", None)

    # -- training --------------------------------------------------------------------------------
    def forward(self, step: int, micro: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        """A training (micro-)batch from the stage before (or the data, for stage 0)."""
        if self.mode in LOCKED_MODES:
            return self._locked_forward(step, micro, h_in, labels)
        if self.sg_off and not self.is_last:
            return self._frozen_forward(step, micro, h_in, labels)
        if self.rule.sends_true_gradient and not self.is_last and (self.deferred or not self._corrected_for(step)):
            self.deferred.append((step, micro, h_in, labels))  # its weights must have the corrections d steps back
            return {}
        return self._unlocked_forward(step, micro, h_in, labels)

    def _unlocked_forward(self, step: int, micro: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        h_in = h_in.requires_grad_(self.index > 0 and not self.sg_off)
        measured = self.rule.measures(step)
        out, weights = self._block_forward(step, h_in, measured)
        if self.is_last:
            loss = self._check("loss", step, self.objective.loss(out, labels))
            loss.backward()
            self._send_input_grad(step, micro, h_in)
            self._step(step)
            return self._scores(loss, out, labels)
        self.send(Message("forward", step, out.detach(), labels, micro))  # the next stage starts now
        metrics = {}
        if self.mode == "dgl":
            aux_loss = self.objective.loss(self.aux(out), labels)
            aux_loss.backward()
            metrics["aux_loss"] = aux_loss.item()
        else:
            metrics.update(self._sg_backward(step, micro, out, weights, h_in, labels))
        self._step(step)
        if measured:
            self.measuring[(step, micro)] = (h_in, out, weights, self.rule.kept(self.optimizer, self.module, weights))
        return metrics

    def synthetic_step(self, step: int, x: torch.Tensor, labels: torch.Tensor) -> dict:
        """Synthetic inputs: compute on the input model's estimate of this step's input (stage 0: on the data) and
        update at once, from the SG (the true loss on the last stage), before any real input has arrived."""
        h_in = x if self.input_model is None else self._check("synthetic input", step, self.input_model.predict(x))
        with _buffers_kept(self.module):
            out = self._check("activation", step, self.module(h_in))
            if self.is_last:
                loss = self._check("loss", step, self.objective.loss(out, labels))
                loss.backward()
                metrics = {"synthetic_loss": loss.item()}
            else:
                predicted = self._check("synthetic gradient", step, self.sg.predict(out.detach(), labels))
                metrics = self.rule.step_metrics()
                out.backward(predicted * self.rule.prediction_scale)
        self._step(step)
        return metrics

    def real_input(self, step: int, micro: int, h_in: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> dict:
        """Synthetic inputs: the real input of a step (stage 0: its data), which this stage has usually updated on
        already. It is the input model's regression target for the same batch `x`; the block's output on it goes
        on to the next stage (whose input model's target it is) and the gradient at it goes back as the SG target
        of the stage before, from the true loss on the last stage and from this stage's SG elsewhere. A stage after
        the first then steps its block again, on that gradient: the inputs evaluation gives it are these, not I(x)
        (stepped on I(x) alone, FCN-6 cdni reached 82.1% on MNIST, seed 0; 93.7% with this step). Its BatchNorm running
        statistics move here too. This step is not counted in `updates`: the update that unlocks is the first."""
        metrics = {}
        if self.input_model is not None:
            input_loss = self.input_model.regression_loss(x, h_in)
            self._set_lr(self.input_optimizer, self.sg_base_lr, step)
            input_loss.backward()
            self.input_optimizer.step()
            self.input_optimizer.zero_grad(set_to_none=True)
            spread = float((h_in - h_in.mean(0)).pow(2).mean())
            metrics = {"input_loss": input_loss.item(), "input_r2": 1.0 - input_loss.item() / max(spread, 1e-30)}
            h_in = h_in.requires_grad_()
        measured = self.rule.measures(step)  # the step now against this target's
        with torch.set_grad_enabled(measured or self.index > 0):
            out, weights = self._block_forward(step, h_in, measured)
        if self.is_last:
            loss = self._check("loss", step, self.objective.loss(out, labels))
            loss.backward()
            self._send_input_grad(step, micro, h_in)
            self._apply_gradients(step)
            return {**metrics, **self._scores(loss, out, labels)}
        self.send(Message("forward", step, out.detach(), labels, micro))
        if self.index > 0:
            self._sg_backward(step, micro, out, weights, h_in, labels)
            self._apply_gradients(step)
        else:  # stage 0's input is the data its update was made on: its output only waits for the SG's target
            self._predict_and_hold(step, micro, out, labels)
        if measured:
            self.measuring[(step, micro)] = (h_in, out, weights, self.rule.kept(self.optimizer, self.module, weights))
        return metrics

    def backward(self, step: int, micro: int, grad: torch.Tensor) -> dict:
        """True gradient (locked modes) or synthetic-gradient regression target (dni, cdni)."""
        self._check("gradient (SG target)" if self.mode in SG_MODES else "gradient", step, grad)
        if self.mode in LOCKED_MODES:
            self._locked_backward(step, micro, grad)
            self._run_deferred()
            return {}
        h, labels, predicted = self.pending.pop((step, micro))
        metrics = {}
        if (step, micro) in self.measuring:
            h_in, out, weights, kept = self.measuring.pop((step, micro))
            sends = self.rule.sends_true_gradient and self.index > 0
            true = torch.autograd.grad(out, list(weights.values()) + ([h_in] if sends else []), grad, allow_unused=True,
                                       materialize_grads=True)
            if sends:  # the target upstream is this batch's true gradient, not one from this stage's SG
                self.send(Message("backward", step, true[-1], micro=micro))
                true = true[:-1]
            self._set_lr(self.optimizer, self.rule.base_lr * self.rule.lr_scale, step)  # a rule may step here
            metrics.update(self.rule.on_true_gradient(self.optimizer, list(self.module.parameters()), kept, list(true)))
            self.optimizer.zero_grad(set_to_none=True)  # (a step here is not counted in `updates`)
            self.corrected = step + 1
            while self.deferred and self._corrected_for(self.deferred[0][0]):
                self._unlocked_forward(*self.deferred.popleft())
        self.rule.on_target(predicted, grad)
        self._set_lr(self.sg_optimizer, self.sg_base_lr, step)
        loss = self.sg.regression_loss(h, labels, grad)
        loss.backward()
        self.sg_optimizer.step()
        self.sg_optimizer.zero_grad(set_to_none=True)
        # R^2 of the raw prediction (before any calibration) against the target that came back for it.
        r2 = 1.0 - float((predicted - grad).pow(2).sum()) / max(float(grad.pow(2).sum()), 1e-30)
        return {**metrics, "sg_loss": loss.item(), "sg_r2": r2}

    def _corrected_for(self, step: int) -> bool:
        """`corrected`: batch `step` may be computed once the true gradients of the batches d + 1 steps back and
        before are applied (d the stage's delay, as the delayed mode's), so no stage runs further from them."""
        return self.corrected >= step - self.config.delay

    def _frozen_forward(self, step: int, micro: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        """The SG-off ablation's stage: its block is never trained, so it only computes and sends its output."""
        with torch.no_grad():
            out = self._check("activation", step, self.module(h_in))
        self.send(Message("forward", step, out, labels, micro))
        self.updates += 1  # a step that changes nothing, counted so the pipeline paces as before
        return {}

    # -- locked modes ------------------------------------------------------------------------------
    def _locked_forward(self, step: int, micro: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        if not self.updates <= step <= self.updates + 1:  # replayed, or more than the one step the driver feeds ahead
            raise self._out_of_order(step)
        if self.deferred or not self._may_forward(step):
            self.deferred.append((step, micro, h_in, labels))
            return {}
        return self._locked_forward_now(step, micro, h_in, labels)

    def _may_forward(self, step: int) -> bool:
        """A locked forward sees every earlier step's update (exactness), and under 1F1B holds a free slot."""
        if step != self.updates:
            return False
        return not (self.mode == "1f1b" and not self.is_last and len(self.pending) >= self.num_stages - self.index)

    def _locked_forward_now(self, step: int, micro: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        h_in = h_in.requires_grad_(self.index > 0)
        out = self._check("activation", step, self.module(h_in))
        if not self.is_last:
            self.pending[(step, micro)] = (h_in, out)
            self.send(Message("forward", step, out.detach(), labels, micro))
            return {}
        # Weighted so the micro-batch losses sum to the mean loss of the whole mini-batch.
        weight = len(labels) / (self.batch_size or len(labels))
        loss = self._check("loss", step, self.objective.loss(out, labels) * weight)
        self.pending[(step, micro)] = (h_in, loss)
        if self.mode != "gpipe":
            self._locked_backward(step, micro, None)
        elif micro == self.micro_batches - 1:  # GPipe: every forward first, then backwards in reverse
            for m in reversed(range(self.micro_batches)):
                self._locked_backward(step, m, None)
        return self._scores(loss, out, labels)

    def _locked_backward(self, step: int, micro: int, grad: torch.Tensor | None) -> None:
        """Gradients accumulate over the micro-batches of the step. A stage with a stage before it computes
        its input gradient first and sends it, then its weight gradients (the split PyTorch's zero-bubble
        schedules make, with its functions): the stage before starts its backward one weight-gradient pass
        sooner, which on 1F1B's critical path hides part of a message's latency. Same gradients."""
        h_in, out = self.pending.pop((step, micro))
        if self.index == 0:
            out.backward(grad)
        else:
            params = [p for p in self.module.parameters() if p.requires_grad]
            _, param_groups = stage_backward_input([out], None if grad is None else [grad], [h_in], iter(params))
            self._send_input_grad(step, micro, h_in)
            stage_backward_weight(iter(params), param_groups)
        self.backwards_done[step] = self.backwards_done.get(step, 0) + 1
        if self.backwards_done[step] == self.micro_batches:
            del self.backwards_done[step]
            self._step(step)

    def _run_deferred(self) -> None:
        """After a backward: the early forwards it unblocked (a next step's reach only stage 0, which the driver
        feeds ahead; 1F1B's waits are on any stage before the last). A last stage never defers: its forwards
        come from a neighbour that has applied the step before, and 1F1B does not bound it; so no scores are
        lost here."""
        while self.deferred and self._may_forward(self.deferred[0][0]):
            self._locked_forward_now(*self.deferred.popleft())

    # -- evaluation and SG probes --------------------------------------------------------------------
    def evaluate(self, batch: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        """Inference with running BatchNorm statistics; the last stage scores the batch."""
        self.module.eval()
        with torch.no_grad():
            out = self.module(h_in)
        self.module.train()
        if not self.is_last:
            self.send(Message("eval", batch, out, labels))
            return {}
        with torch.no_grad():
            return self.objective.scores(out, labels)

    def probe(self, probe_id: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        """Forward a probe batch as training would, on a frozen copy of the block, keeping what the
        SG model predicts so the true gradient can be compared with it when it comes back."""
        h_in = h_in.requires_grad_(self.index > 0)
        out = torch.func.functional_call(self.module, _frozen_copy(self.module), (h_in,))
        if self.is_last:
            loss = self.objective.loss(out, labels)
            if self.index > 0:
                (grad,) = torch.autograd.grad(loss, h_in)
                self.send(Message("probe_backward", probe_id, grad))
            return {}
        predicted = self.sg.predict(out.detach(), labels)  # (its own BatchNorm always uses batch statistics)
        self.probes[probe_id] = (h_in, out, predicted)
        self.send(Message("probe", probe_id, out.detach(), labels))
        return {}

    def probe_backward(self, probe_id: int, grad: torch.Tensor) -> dict:
        """Cosine similarity between this stage's synthetic gradient and the true one, same batch."""
        h_in, out, predicted = self.probes.pop(probe_id)
        cosine = F.cosine_similarity(predicted.flatten(), grad.flatten(), dim=0).item()
        if self.index > 0:
            (grad_in,) = torch.autograd.grad(out, h_in, grad)
            self.send(Message("probe_backward", probe_id, grad_in))
        return {"sg_cosine": cosine}

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a restarted stage needs to go on exactly where this one stands: taken only between
        steps (nothing pending), and refused if a weight is no longer finite."""
        if any((self.pending, self.deferred, self.probes, self.backwards_done, self.measuring)):
            raise RuntimeError(f"stage {self.index} has work in flight: checkpoints are taken between steps")
        for name, value in self.module.state_dict().items():
            self._check(f"weight {name}", self.updates, value)
        return {"updates": self.updates, **{k: v.state_dict() for k, v in self._parts().items()}}

    def load_state_dict(self, state: dict) -> None:
        for key, part in self._parts().items():
            part.load_state_dict(state[key])
        self.updates = self.corrected = state["updates"]
        for held in (self.pending, self.deferred, self.probes, self.backwards_done, self.measuring):
            held.clear()  # steps begun but not finished: they are sent again after a rollback

    # -- internals -----------------------------------------------------------------------------
    def _parts(self) -> dict:
        parts = {"module": self.module, "optimizer": self.optimizer, "sg": self.sg, "sg_optimizer": self.sg_optimizer,
                 **self.rule.parts(), "aux": self.aux, "input_model": self.input_model,
                 "input_optimizer": self.input_optimizer}
        return {k: v for k, v in parts.items() if v is not None}

    def _block_forward(self, step: int, h_in: torch.Tensor, measured: bool) -> tuple[torch.Tensor, dict | None]:
        """The block's output, checked. On a `measured` batch it is computed on a copy of the weights (returned),
        so the true target can be backpropagated to them after the weights themselves have moved."""
        weights = None
        if measured:
            weights = {name: p.detach().clone().requires_grad_() for name, p in self.module.named_parameters()}
            out = torch.func.functional_call(self.module, weights, (h_in,))
        else:
            out = self.module(h_in)
        return self._check("activation", step, out), weights

    def _check(self, what: str, step: int, tensor: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(tensor).all():
            raise NonFiniteError(f"stage {self.index}: non-finite {what} at step {step}")
        return tensor

    def _send_input_grad(self, step: int, micro: int, h_in: torch.Tensor) -> None:
        if self.index > 0 and self.mode != "dgl" and not self.sg_off:
            self.send(Message("backward", step, h_in.grad, micro=micro))

    def _predict_and_hold(self, step: int, micro: int, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The SG's prediction at `out`, held with it until its regression target comes back."""
        h = out.detach()
        predicted = self._check("synthetic gradient", step, self.sg.predict(h, labels))
        self.pending[(step, micro)] = (h, labels, predicted)
        return predicted

    def _sg_backward(self, step: int, micro: int, out: torch.Tensor, weights: dict | None, h_in: torch.Tensor,
                     labels: torch.Tensor) -> dict:
        """Backpropagate the SG's prediction at `out` into the block (into the copy of its weights on a measured
        batch, whose graph is kept for the true target) and send the gradient at its input upstream."""
        predicted = self._predict_and_hold(step, micro, out, labels)
        metrics = self.rule.step_metrics()
        out.backward(predicted * self.rule.prediction_scale, retain_graph=weights is not None)
        if weights is not None:
            for name, param in self.module.named_parameters():
                param.grad = weights[name].grad
        if not self.rule.sends_true_gradient:
            self._send_input_grad(step, micro, h_in)
        return metrics

    def _set_lr(self, optimizer: torch.optim.Optimizer, base: float, step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(base, self.lr_schedule, step, self.total_steps)

    def _step(self, step: int) -> None:
        if step != self.updates:  # each step once, in order: a replayed or skipped step is a bug, not a result
            raise self._out_of_order(step)
        self._apply_gradients(step)
        self.updates += 1

    def _apply_gradients(self, step: int) -> None:
        self._set_lr(self.optimizer, self.rule.base_lr * self.rule.lr_scale, step)
        self.rule.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    def _out_of_order(self, step: int) -> RuntimeError:
        return RuntimeError(f"stage {self.index} was asked to apply step {step} after {self.updates} updates")

    def _scores(self, loss: torch.Tensor, out: torch.Tensor, labels: torch.Tensor) -> dict:
        """A training step's record: its (micro-batch weighted) loss and, for classifiers, correct predictions."""
        scores = {"loss": loss.item(), "count": len(labels)}
        if self.objective.classifies:
            with torch.no_grad():
                scores["correct"] = float((out.argmax(-1) == labels).float().mean()) * len(labels)
        return scores
