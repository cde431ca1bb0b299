"""Training configuration: one dataclass, filled from a YAML/JSON file and then from flags, validated once."""

import dataclasses
from dataclasses import dataclass, field

from dni_pipeline.core.configs import check_file_values
from dni_pipeline.core.datasets import DATASETS
from dni_pipeline.core.errors import UserError

from .delayed import STALENESS
from .network import parse_arch
from .stage import LOCKED_MODES, MODES, SG_MODES, SG_UPDATES
from .stage_config import StageConfig
from .synthetic_inputs import default_input_hidden

__all__ = ["DEFAULT_SG_HIDDEN", "TrainConfig", "build_config"]

# The paper's choices for flat activations: a 2x1024 MLP synthetic gradient for DNI, a linear one for cDNI.
DEFAULT_SG_HIDDEN = {"dni": [1024, 1024], "cdni": []}


@dataclass
class TrainConfig:
    mode: str = "dni"
    stages: int = 3
    epochs: int = 10
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = False
    arch: str = "fcn3"
    model: str | None = None  # a built-in model (gpt, resnet, emulated) or an import path package.module:function; None: arch
    model_options: dict = field(default_factory=dict)  # keyword arguments of the model function
    split: list[int] | None = None  # first child of each stage after the first; None: arch's, or balanced by parameters
    data: str | None = None  # import path of a data function (run on the cluster); None: dataset
    data_options: dict = field(default_factory=dict)  # keyword arguments of the data function, or the built-in dataset
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    sg_hidden: list[int] | None = None  # None: the mode's default for the activation's shape (resolved_sg_hidden)
    sg_lr: float | None = None  # None: same as lr
    sg_off: bool = False
    sg_update: str | None = None  # how an SG-driven stage steps: corrected, gated, calibrated, paper (update_rules.py);
    # None: StageConfig's default (corrected), or gated under synthetic_inputs, which corrected does not take
    sg_update_lr: float = StageConfig.sg_update_lr  # SGD learning rate of SG-driven stages under sg_update calibrated
    sg_trust_every: int = StageConfig.sg_trust_every  # gated: steps between measurements of the SG step's cosine to the true one
    delay: int | None = None  # delayed: steps a stage's gradient is applied late; None: K - 1 - k for stage k (DDG)
    staleness: str | None = None  # delayed: none, recompute or lookahead; None: StageConfig's default
    synthetic_inputs: bool = False  # dni, cdni: every stage after the first also predicts its input (complete unlock)
    input_hidden: list[int] | None = None  # hidden widths of the input models; None: two as wide as the activation
    sg_probe_every: int = 100  # steps between SG-vs-true-gradient probes (dni, cdni); 0: never
    aux_hidden: list[int] = field(default_factory=list)  # DGL auxiliary classifier; empty: linear
    micro_batches: int = 4  # gpipe and 1f1b
    seed: int = 0
    max_in_flight: int = 0  # 0: 2 x stages for unlocked modes; locked modes always run 1
    max_steps: int = 0  # 0: epochs x steps per epoch
    eval_every: int = 0  # steps between test evaluations; 0: once per epoch
    target_accuracy: float | None = None  # stop once the test accuracy reaches it
    target_bits: float | None = None  # stop once the test bits per token fall to it (language models)
    link_latency_ms: float = 0.0
    cpus_per_stage: float = 1.0
    device: str = "cpu"
    address: str | None = None
    stage_delay_ms: list[float] = field(default_factory=list)
    out: str | None = None
    checkpoint_dir: str | None = None  # path or URI every node can reach; None: the run folder's checkpoints/
    checkpoint_every: int = 0  # steps between stage checkpoints; 0: at each evaluation
    max_restarts: int = 3  # restarts of each stage actor before the run gives up
    stall_timeout: float = 300.0  # seconds a stage may leave a ping unanswered before it is declared stuck
    inject_nan: list[int] = field(default_factory=list)  # fault injection: [stage, step] gets a NaN input

    def resolved_sg_hidden(self, shape: tuple[int, ...]) -> list[int]:
        """The SG model's hidden widths for an activation of per-sample `shape`: as given, or the mode's
        default. cdni: linear. dni: the paper's 1024, 1024 for a flat activation; for an image or a
        sequence two hidden layers as wide as its channels or features (the paper's CNN choice, 128
        filters for 128 channels), since 1024 channels of 5x5 convolutions, or 1024 units at every
        position, cost tens of times the block they serve."""
        if self.sg_hidden is not None:
            return self.sg_hidden
        if self.mode != "dni" or len(shape) == 1:
            return DEFAULT_SG_HIDDEN.get(self.mode, [])
        width = shape[0] if len(shape) == 3 else shape[-1]
        return [width, width]

    def resolved_input_hidden(self, shape: tuple[int, ...]) -> list[int]:
        return default_input_hidden(shape) if self.input_hidden is None else self.input_hidden

    def stage_config(self, index: int, total_steps: int) -> StageConfig:
        """What stage `index` needs of this run's settings."""
        return StageConfig(lr=self.lr, lr_schedule=self.lr_schedule, total_steps=total_steps,
                           micro_batches=self.resolved_micro_batches(), batch_size=self.batch_size, sg_lr=self.sg_lr,
                           sg_off=self.sg_off, sg_update=self.resolved_sg_update(), sg_update_lr=self.sg_update_lr,
                           sg_trust_every=self.sg_trust_every, delay=self.stage_delay(index),
                           staleness=self.staleness or StageConfig.staleness)

    def stage_delay(self, index: int) -> int:
        """Delayed mode and corrected SGs: the steps stage `index` applies its true gradients late at most (the last
        stage: none, its loss is its own)."""
        if not self.true_gradient_late() or index == self.stages - 1:
            return 0
        return self.stages - 1 - index if self.delay is None else self.delay

    def true_gradient_late(self) -> bool:
        """Whether stages step on the true gradient d steps late: the delayed mode, and SGs under `corrected`."""
        return self.mode == "delayed" or self.mode in SG_MODES and not self.sg_off and self.resolved_sg_update() == "corrected"

    def resolved_sg_update(self) -> str:
        if self.sg_update is not None:
            return self.sg_update
        return "gated" if self.synthetic_inputs else StageConfig.sg_update

    def resolved_micro_batches(self) -> int:
        return self.micro_batches if self.mode in ("gpipe", "1f1b") else 1

    def target_reached(self, record: dict) -> bool:
        """Whether an evaluation record meets the run's target (accuracy at least, or bits at most)."""
        if self.target_accuracy is not None and record.get("test_accuracy", 0.0) >= self.target_accuracy:
            return True
        return self.target_bits is not None and record.get("test_bits", float("inf")) <= self.target_bits

    def target_text(self) -> str:
        return f"{self.target_bits:g} bits per token" if self.target_bits else f"{100 * self.target_accuracy:g}% test accuracy"

    def window(self) -> int:
        """Steps the driver lets into the pipeline before waiting for one to finish."""
        if self.mode in LOCKED_MODES:
            # The next step is fed while one runs, so stage 0 starts it as soon as its own update is applied
            # instead of after the driver's turn; its forwards wait for that update (Stage._may_forward).
            return 2
        return self.max_in_flight or max(2 * self.stages, self.stage_delay(0) + 1)

    def validate(self, own_model: bool = False) -> "TrainConfig":
        """Refuse a bad value in one line. `own_model`: the network is a model object of the API's caller, so
        neither --arch nor --model says how many stages it has room for (as_network checks its cut points)."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(message)

        need(self.mode in MODES, f"invalid mode '{self.mode}': choose one of {', '.join(MODES)}")
        need(self.dataset in DATASETS, f"unknown dataset '{self.dataset}': choose one of {', '.join(DATASETS)}")
        need(self.device in ("cpu", "cuda"), f"invalid device '{self.device}': use cpu or cuda")
        need(self.sg_update in (None, *SG_UPDATES), f"invalid sg_update '{self.sg_update}': use one of {', '.join(SG_UPDATES)}")
        need(self.sg_update_lr > 0, f"--sg-update-lr must be positive (got {self.sg_update_lr})")
        need(self.sg_trust_every >= 1, f"--sg-trust-every must be at least 1 (got {self.sg_trust_every})")
        need(self.lr_schedule in ("constant", "cosine"), f"invalid lr_schedule '{self.lr_schedule}': use constant or cosine")
        need(self.stages >= 1, f"--stages must be at least 1 (got {self.stages})")
        need(self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})")
        need(self.batch_size >= 2, f"--batch-size must be at least 2 for BatchNorm (got {self.batch_size})")
        need(self.lr > 0 and (self.sg_lr is None or self.sg_lr > 0), "learning rates must be positive")
        need(self.cpus_per_stage > 0, f"--cpus-per-stage must be positive (got {self.cpus_per_stage})")
        need(self.max_in_flight >= 0, f"--max-in-flight must be 0 (auto) or more (got {self.max_in_flight})")
        need(self.micro_batches >= 1, f"--micro-batches must be at least 1 (got {self.micro_batches})")
        need(
            self.batch_size >= 2 * self.resolved_micro_batches(),
            f"--batch-size {self.batch_size} leaves micro-batches under 2 samples: use at least "
            f"{2 * self.resolved_micro_batches()} or fewer --micro-batches",
        )
        need(self.max_steps >= 0 and self.eval_every >= 0 and self.sg_probe_every >= 0,
             "--max-steps, --eval-every and --sg-probe-every must be 0 or more")
        need(self.link_latency_ms >= 0, f"--link-latency-ms must be 0 or more (got {self.link_latency_ms})")
        need(self.target_accuracy is None or 0 < self.target_accuracy <= 1,
             f"--target-accuracy is a fraction in (0, 1] (got {self.target_accuracy})")
        need(self.target_bits is None or self.target_bits > 0, f"--target-bits must be positive (got {self.target_bits})")
        need(self.target_bits is None or self.target_accuracy is None, "give --target-accuracy or --target-bits, not both")
        need(all(w > 0 for w in (self.sg_hidden or []) + self.aux_hidden + (self.input_hidden or [])),
             "--sg-hidden, --aux-hidden and --input-hidden widths must be positive")
        if self.true_gradient_late():
            need(self.delay is None or self.delay >= 0, f"--delay must be 0 or more steps (got {self.delay})")
            need(not self.max_in_flight or self.max_in_flight > self.stage_delay(0),
                 f"--max-in-flight {self.max_in_flight} cannot hold the {self.stage_delay(0)} steps stage 0's gradients "
                 f"are delayed: use at least {self.stage_delay(0) + 1}, or 0 (auto)")
        else:
            need(self.delay is None, f"--delay is the delayed mode's and the corrected SG's: use --mode delayed, or "
                                     f"--sg-update corrected with dni or cdni (got {self.mode})")
        if self.mode == "delayed":
            need(self.staleness in (None, *STALENESS),
                 f"invalid staleness '{self.staleness}': use one of {', '.join(STALENESS)}")
        else:
            need(self.staleness is None, f"--staleness is the delayed mode's: use --mode delayed (got {self.mode})")
        need(self.sg_update != "corrected" or self.mode in SG_MODES,
             f"--sg-update corrected corrects a synthetic gradient: use --mode dni or cdni (got {self.mode}; "
             "--mode delayed steps on the true gradient alone)")
        if self.synthetic_inputs:
            need(self.sg_update != "corrected", "--sg-update corrected with --synthetic-inputs is not built: use gated, "
                                                "calibrated or paper")
            need(self.mode in SG_MODES, f"--synthetic-inputs needs synthetic gradients: use --mode dni or cdni (got "
                                        f"{self.mode}, whose stages wait for their inputs by design)")
            need(self.stages >= 2, "--synthetic-inputs needs at least 2 stages: the first has no stage to wait for")
            need(not self.sg_off, "--synthetic-inputs with --sg-off: the SG-off ablation freezes the stages that would "
                                  "use the input models; run the ablation without --synthetic-inputs")
        need(
            not self.stage_delay_ms or len(self.stage_delay_ms) == self.stages,
            f"--stage-delay-ms needs one value per stage ({self.stages}), got {len(self.stage_delay_ms)}",
        )
        need(self.checkpoint_every >= 0 and self.max_restarts >= 0,
             "--checkpoint-every and --max-restarts must be 0 or more")
        need(self.stall_timeout > 0, f"--stall-timeout must be positive (got {self.stall_timeout})")
        need(
            not self.inject_nan or (len(self.inject_nan) == 2 and 0 <= self.inject_nan[0] < self.stages
                                    and self.inject_nan[1] >= 0),
            f"--inject-nan takes STAGE,STEP with 0 <= STAGE < {self.stages} (got {self.inject_nan})",
        )
        if self.model is None and not own_model:
            layers = parse_arch(self.arch)
            need(
                self.stages <= len(layers) + 1,
                f"--stages {self.stages} is more than the {len(layers)} hidden layers and the head of --arch "
                f"'{self.arch}': use at most {len(layers) + 1} stages (that many puts the head on its own) or a "
                "deeper --arch",
            )
        return self


def build_config(file_values: dict, flag_values: dict, own_model: bool = False) -> TrainConfig:
    """Defaults, overridden by the config file, overridden by the flags that were given."""
    known = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    check_file_values(file_values, known)
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None and k in known}}
    return TrainConfig(**merged).validate(own_model)
