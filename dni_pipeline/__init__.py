"""Unlocked (DNI) training of a network split over Ray actors, with locked baselines on the same actors.

The public API, imported on first use (so `dni-pipeline cluster stop` never loads torch):

- `train(model, data, mode=..., stages=..., **options)` and `bench(model, data, out=..., modes=...)`;
- `TrainResult` (what `train` returns) and `UserError` (every bad input);
- the built-in models `gpt` (a character GPT), `resnet` (a pre-activation ResNet) and `emulated` (stages
  whose compute is a stated wait, standing in for K devices), and `load_dataset`.
"""

__version__ = "0.1.0"

__all__ = ["TrainResult", "UserError", "bench", "emulated", "gpt", "load_dataset", "resnet", "train"]


def __getattr__(name: str):
    if name in ("train", "bench"):
        from dni_pipeline.trainer import api

        return getattr(api, name)
    if name == "TrainResult":
        from dni_pipeline.trainer.report import TrainResult

        return TrainResult
    if name in ("emulated", "gpt", "resnet"):
        from dni_pipeline.trainer import models

        return models.BUILTIN_MODELS[name]
    if name == "load_dataset":
        from dni_pipeline.core.datasets import load_dataset

        return load_dataset
    if name == "UserError":
        from dni_pipeline.core.errors import UserError

        return UserError
    raise AttributeError(f"module 'dni_pipeline' has no attribute '{name}'")
