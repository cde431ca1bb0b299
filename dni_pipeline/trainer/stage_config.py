"""What one stage knows of its run: the settings its update rules read, each default kept here once."""

from dataclasses import dataclass

__all__ = ["StageConfig"]


@dataclass(frozen=True)
class StageConfig:
    """One stage's settings. `TrainConfig` takes its defaults for these fields from here, and
    `TrainConfig.stage_config` fills one per stage."""

    lr: float
    lr_schedule: str
    total_steps: int
    micro_batches: int = 1
    batch_size: int | None = None  # the mini-batch that micro-batches make up (locked modes)
    sg_lr: float | None = None  # the SG and input models' learning rate; None: lr
    sg_off: bool = False
    sg_update: str = "corrected"  # how an SG-driven stage steps (update_rules.SG_UPDATES); at least the better of gated
    # and paper on every FCN row of the paper's tables and in early training (docs/results.md)
    sg_update_lr: float = 0.05  # SGD learning rate of SG-driven stages under `calibrated`
    sg_trust_every: int = 4  # `gated`: steps between measurements of the SG step against the true one
    delay: int = 0  # `delayed`: steps between a batch's forward and the update on its gradient
    staleness: str = "lookahead"  # `delayed`: what a batch in flight keeps (delayed.STALENESS); the best of the three on
    # the MLP, the GPT and the ResNet at K = 2 (benchmarks/time-to-accuracy/delayed_staleness.sh, docs/results.md)
