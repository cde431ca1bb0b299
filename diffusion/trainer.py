"""DDPM training: AdamW with linear warm-up, gradient clipping, an EMA of the weights, and checkpoints
that hold everything a run needs to continue bit-for-bit (model, EMA, optimizer, step, RNG state).

Batches, timesteps and noise all come from one seeded generator whose state is checkpointed, so a
resumed run draws exactly what the uninterrupted run would have drawn. Data-parallel replicas
(`Replica`) draw the same global batch and each computes its shard of it, DDP averaging the
gradients: a step equals one process's on the whole batch.
"""

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dni_pipeline.core.data_parallel import SINGLE, Replica
from dni_pipeline.core.files import atomic_path

from .likelihood import vlb_term
from .schedule import NoiseSchedule

__all__ = ["DiffusionTrainConfig", "Trainer"]


@dataclass
class DiffusionTrainConfig:
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100  # steps of linear learning-rate warm-up
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    objective: str = "eps"  # eps (L_simple), x0 or v
    learn_variance: bool = False  # Improved DDPM: the model also outputs its variance, trained by the VLB
    vlb_weight: float = 0.001  # lambda of the hybrid loss L_simple + lambda L_vlb (with learn_variance)
    schedule: str = "linear"
    timesteps: int = 1000
    seed: int = 0


class Trainer:
    """Trains `model` to denoise samples of `data` (a tensor of examples, first dimension the batch)."""

    def __init__(self, cfg: DiffusionTrainConfig, model: nn.Module, data: torch.Tensor, device: str = "cpu",
                 replica: Replica = SINGLE):
        self.device = torch.device(device)
        self.cfg, self.model, self.data, self.replica = cfg, model.to(self.device), data, replica
        self.forward = replica.wrap(self.model, device)  # the model, or DDP around it
        self.schedule = NoiseSchedule(cfg.schedule, cfg.timesteps)
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0

    def loss(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, scale: float) -> torch.Tensor:
        """`scale` times the sum over the batch of || target - model(x_t, t) ||^2 (averaged over
        coordinates), x_t from the closed-form q(x_t | x_0); with a learned variance, plus lambda
        L_vlb, which trains the variance only (the mean's gradient is stopped, as in Improved DDPM).
        One process uses scale 1 / batch; a replica world / global batch, as DDP averages."""
        s = self.schedule
        xt = s.q_sample(x0, t, noise)
        prediction, log_variance = s.split(self.forward(xt, t), t, self.cfg.learn_variance)
        loss = (prediction - s.target(self.cfg.objective, x0, noise, t)).square().flatten(1).mean(1).sum()
        if log_variance is not None:
            x0_hat = s.predict_x0(self.cfg.objective, xt, t, prediction.detach())
            mean, _, _ = s.q_posterior(x0_hat.clamp(-1, 1) if x0.dim() == 4 else x0_hat, xt, t)
            vlb = vlb_term(s, x0, xt, t, mean, log_variance).flatten(1).mean(1) / math.log(2.0)
            loss = loss + self.cfg.vlb_weight * vlb.sum()
        return loss * scale

    def train_step(self) -> float:
        """One step on the global batch (this replica's shard of it); returns the batch's mean loss."""
        size, timesteps = self.cfg.batch_size, self.schedule.timesteps
        # Drawn on the CPU from the checkpointed generator, whatever the device, so resume is exact;
        # every replica draws the whole global batch and keeps its rows.
        index = torch.randint(0, len(self.data), (size,), generator=self.generator)
        t = torch.randint(0, timesteps, (size,), generator=self.generator)
        noise = torch.randn((size, *self.data.shape[1:]), generator=self.generator)
        rows = self.replica.shard(size)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * min(1.0, (self.step + 1) / max(1, self.cfg.warmup))
        scale = self.replica.world / size
        loss = self.loss(*(x[rows].to(self.device) for x in (self.data[index], t, noise)), scale=scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            for ema, live in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
                if ema.dtype.is_floating_point:
                    ema.lerp_(live, 1.0 - self.cfg.ema_decay)
                else:
                    ema.copy_(live)
        self.step += 1
        return self.replica.sum(loss.item() / scale) / size

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "step": self.step, "model": self.model.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def save(self, path: Path) -> None:
        """Atomically: a crash never leaves half a checkpoint in place of the last good one."""
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)

    def load(self, path: Path) -> None:
        """Restore a checkpoint written by `save` (loaded with weights_only: no code is unpickled)."""
        state = torch.load(path, weights_only=True, map_location=self.device)
        ours = dataclasses.asdict(self.cfg)
        if {k: v for k, v in state["config"].items() if k != "steps"} != {k: v for k, v in ours.items() if k != "steps"}:
            raise ValueError(f"checkpoint {path} was written with another configuration: resume with the same one "
                             "(only the number of steps may change)")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.step = state["step"]
