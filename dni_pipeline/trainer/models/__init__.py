"""Built-in model factories, and the model a config names: ``--model`` (a built-in name or an import
path ``package.module:function``, called with the config's ``model_options``) or else ``--arch``.

A model function returns what the API takes: an nn.Sequential (cut by ``--split`` or balanced by
parameter count), a list of stage modules, or a factory ``build_stage(index, num_stages)``. Parameters
named ``input_shape`` and ``num_classes`` that the options leave out are filled from the data, and
``num_stages`` and ``batch_size`` from the config. A model may carry its own SG-model, auxiliary-head and
input-model factories as attributes ``synthetic_gradient``, ``aux_head`` (``fn(shape, num_classes)``) and
``synthetic_input`` (``fn(x_shape, h_shape)``), as the API takes them; the emulated devices' model does.
"""

import inspect

import torch

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.imports import import_object

from ..config import TrainConfig
from ..data import PlacedData
from ..model import Network, as_network
from ..network import arch_model, arch_starts
from .emulated import emulated
from .gpt import gpt
from .resnet import resnet

__all__ = ["BUILTIN_MODELS", "model_function", "network_from_config"]

BUILTIN_MODELS = {"emulated": emulated, "gpt": gpt, "resnet": resnet}


def model_function(name: str):
    """A built-in model's function, or the function an import path names."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    if ":" not in name:
        raise UserError(f"unknown --model '{name}': use a built-in ({', '.join(BUILTIN_MODELS)}) or an import path "
                        "package.module:function")
    return import_object(name, "--model")


def network_from_config(cfg: TrainConfig, data: PlacedData) -> Network:
    """The network of a command-line or config-file run, built under the run's seed."""
    if cfg.model is None:
        function, options, split = arch_model, {"arch": cfg.arch}, cfg.split or arch_starts(cfg.arch, cfg.stages)
    else:
        function, options, split = model_function(cfg.model), dict(cfg.model_options), cfg.split
    taken = inspect.signature(function).parameters
    filled = {"input_shape": tuple(data.sample_x.shape[1:]), "num_classes": data.num_classes,
              "num_stages": cfg.stages, "batch_size": cfg.batch_size}
    options.update({k: v for k, v in filled.items() if k in taken and k not in options})
    torch.manual_seed(cfg.seed)
    try:
        model = function(**options)
    except TypeError as exc:
        raise UserError(f"--model {cfg.model}: {exc}: fix model_options in the config file") from None
    except Exception as exc:
        raise UserError(f"--model {cfg.model} raised {type(exc).__name__}: {exc}: fix the model function or its "
                        "options") from None
    return as_network(model, cfg.stages, split=split, seed=cfg.seed,
                      synthetic_gradient=getattr(model, "synthetic_gradient", None),
                      aux_head=getattr(model, "aux_head", None),
                      synthetic_input=getattr(model, "synthetic_input", None))
