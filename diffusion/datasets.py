"""Training data for diffusion runs, as float32 tensors: 2-D toys as they are, images scaled to [-1, 1].

Images come from the core's loaders, as for the unlocked trainer (MNIST from a data directory, scikit-learn's
bundled digits), so the checks and the data-directory rules are the same.
"""

import torch

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.errors import UserError

from .toys import TOYS, sample_toy

__all__ = ["DIFFUSION_DATASETS", "DiffusionData", "load_diffusion_data"]

IMAGE_DATASETS = ("mnist", "digits")
DIFFUSION_DATASETS = TOYS + IMAGE_DATASETS


class DiffusionData:
    """`train` to learn from; `reference` and `held_out`, disjoint from it and from each other, to
    measure samples against (held_out gives the metric's floor). Images also carry their training
    labels, for the classifier whose features the Frechet distance uses."""

    def __init__(self, name: str, train: torch.Tensor, reference: torch.Tensor, held_out: torch.Tensor,
                 train_labels: torch.Tensor | None = None):
        self.name, self.train, self.reference, self.held_out = name, train, reference, held_out
        self.train_labels = train_labels

    @property
    def is_image(self) -> bool:
        return self.train.dim() == 4


def load_diffusion_data(name: str, data_dir: str | None = None, seed: int = 0, eval_points: int = 2000) -> DiffusionData:
    if name in TOYS:
        return DiffusionData(name, sample_toy(name, 20000, seed), sample_toy(name, eval_points, seed + 1),
                             sample_toy(name, eval_points, seed + 2))
    if name in IMAGE_DATASETS:
        data = load_dataset(name, data_dir, seed=seed)
        to_unit = lambda a: torch.from_numpy(a) * 2.0 - 1.0  # noqa: E731 - [0, 1] -> [-1, 1]
        test = to_unit(data.x_test)
        half = len(test) // 2
        return DiffusionData(name, to_unit(data.x_train), test[:half], test[half:], torch.from_numpy(data.y_train))
    raise UserError(f"unknown diffusion dataset '{name}': choose one of {', '.join(DIFFUSION_DATASETS)}")
