"""A run's data in Ray's object store, where stage 0 and the peers read their batches.

Data comes as a core `Dataset`, arrays or tensors (``{"x_train": ..., "y_train": ..., "x_test": ...,
"y_test": ...}`` or ``((x_train, y_train), (x_test, y_test))``), a pair of map-style
``torch.utils.data.Dataset`` (train, test) whose items are ``(x, y)``, or a picklable factory returning
any of these. A factory runs in a Ray task whose results go straight into the object store, so large
data is loaded on the cluster and never passes through the driver; the driver keeps sizes and a sample.
"""

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from dni_pipeline.core.datasets import Dataset, load_dataset
from dni_pipeline.core.errors import UserError
from dni_pipeline.core.imports import import_object, send_by_value, user_code_modules

__all__ = ["PlacedData", "StepBatches", "as_dataset", "batch_order", "check_labels", "data_from_config", "describe", "place_data"]

SAMPLE = 4  # samples the driver keeps to probe the model with


def batch_order(num_samples: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """Index arrays of one epoch's mini-batches: a fresh seeded shuffle, the last partial batch dropped."""
    perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
    full = num_samples // batch_size
    return [perm[i * batch_size : (i + 1) * batch_size] for i in range(full)]


class StepBatches:
    """The mini-batch (indices) of every global step: each epoch a fresh seeded shuffle. The driver and, under
    synthetic inputs, every stage find a step's batch here, so a real input is paired with its own data."""

    def __init__(self, num_samples: int, batch_size: int, seed: int):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.per_epoch = num_samples // batch_size
        self.orders: dict[int, list[np.ndarray]] = {}  # the two latest epochs: steps of both are in flight at a turn

    def __getitem__(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.per_epoch)
        if epoch not in self.orders:
            self.orders = {e: o for e, o in self.orders.items() if e == epoch - 1}
            self.orders[epoch] = batch_order(self.num_samples, self.batch_size, epoch, self.seed)
        return self.orders[epoch][i]


def _array(value, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.ascontiguousarray(value)
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind in "iub":
        return array.astype(np.int64, copy=False)
    raise UserError(f"{what} has dtype {array.dtype}: give floats (inputs, regression targets) or integers "
                    "(tokens, class labels)")


def _stack(dataset, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A map-style torch Dataset of (x, y) items as two arrays."""
    try:
        items = [dataset[i] for i in range(len(dataset))]
        xs, ys = zip(*items)
        return _array(np.stack([np.asarray(x) for x in xs]), what), _array(np.stack([np.asarray(y) for y in ys]), what)
    except (TypeError, ValueError) as exc:
        raise UserError(f"the {what} dataset does not give (x, y) items of one shape ({exc}): return a tensor pair "
                        "from __getitem__") from None


def as_dataset(data, name: str = "user") -> Dataset:
    """Any accepted form of data (not a factory) as a core Dataset of numpy arrays, checked."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, dict):
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
        if missing:
            raise UserError(f"the data dict lacks {', '.join(missing)}: give x_train, y_train, x_test and y_test")
        arrays = [_array(data[k], k) for k in ("x_train", "y_train", "x_test", "y_test")]
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.utils.data.Dataset) for d in data):
        arrays = [*_stack(data[0], "training"), *_stack(data[1], "test")]
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, (tuple, list)) and len(d) == 2 for d in data):
        (x_train, y_train), (x_test, y_test) = data
        arrays = [_array(x_train, "x_train"), _array(y_train, "y_train"), _array(x_test, "x_test"), _array(y_test, "y_test")]
    else:
        raise UserError(f"data of type {type(data).__name__} is not understood: give ((x_train, y_train), (x_test, "
                        "y_test)), a dict of those four arrays, a (train, test) pair of torch Datasets, or a factory "
                        "returning one")
    x_train, y_train, x_test, y_test = arrays
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise UserError(f"inputs and labels differ in length (train {len(x_train)} / {len(y_train)}, test "
                        f"{len(x_test)} / {len(y_test)}): give one label (row) per sample")
    if x_train.shape[1:] != x_test.shape[1:] or y_train.shape[1:] != y_test.shape[1:]:
        raise UserError(f"training and test samples differ in shape ({x_train.shape[1:]} vs {x_test.shape[1:]}): "
                        "give both splits the same per-sample shape")
    if len(x_test) == 0:
        raise UserError("the test split is empty: give at least one test sample")
    return Dataset(name, x_train, y_train, x_test, y_test, None)


@dataclass
class PlacedData:
    """The four arrays in the object store, and what the driver needs to know of them."""

    name: str
    refs: list  # object refs of x_train, y_train, x_test, y_test
    num_train: int
    num_test: int
    sample_x: np.ndarray  # the first training samples, to probe the model with
    sample_y: np.ndarray
    label_range: tuple[int, int] | None  # smallest and largest integer label, over both splits
    num_classes: int | None  # as the dataset states it, else the largest integer label + 1

    @property
    def tokens_per_sample(self) -> int:
        """Label positions per sample: the context of a language model's windows, 1 for a classifier."""
        return int(np.prod(self.sample_y.shape[1:], dtype=int))


def _info(data: Dataset) -> dict:
    labels = [y for y in (data.y_train, data.y_test) if y.size]
    integer = data.y_train.dtype == np.int64
    label_range = (int(min(y.min() for y in labels)), int(max(y.max() for y in labels))) if integer else None
    return {"name": data.name, "num_train": len(data.x_train), "num_test": len(data.x_test),
            "sample_x": data.x_train[:SAMPLE].copy(), "sample_y": data.y_train[:SAMPLE].copy(),
            "label_range": label_range,
            "num_classes": data.num_classes or (label_range[1] + 1 if label_range else None)}


def _load(factory: Callable):
    """In a Ray task: call the user's factory; the arrays are the task's results, stored where it runs."""
    data = as_dataset(factory(), getattr(getattr(factory, "func", factory), "__name__", "user"))
    return data.x_train, data.y_train, data.x_test, data.y_test, _info(data)


def place_data(data) -> PlacedData:
    """Put the data into the object store: a factory is run on the cluster, anything else from here."""
    if isinstance(data, PlacedData):
        return data
    if callable(data) and not isinstance(data, (Dataset, torch.utils.data.Dataset)):
        send_by_value(user_code_modules([data]))
        *refs, info_ref = ray.remote(_load).options(num_returns=5, max_retries=0).remote(data)
        try:
            info = ray.get(info_ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, UserError):
                raise cause from None
            raise UserError(f"the data factory raised {type(cause).__name__}: {cause}: fix the factory") from None
        return PlacedData(refs=refs, **info)
    data = as_dataset(data)
    return PlacedData(refs=[ray.put(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)], **_info(data))


def describe(data: Dataset) -> PlacedData:
    """What building and probing a model needs to know of a dataset, with nothing in the object store
    (no Ray): for measuring a model in one process."""
    return PlacedData(refs=[], **_info(data))


def check_labels(output: torch.Tensor, labels: np.ndarray, label_range: tuple[int, int] | None) -> None:
    """For the default cross-entropy: labels are class indices of the shape the output asks for."""
    want = tuple(output.shape[:-1])
    if label_range is None:
        raise UserError(f"labels are {labels.dtype} but cross-entropy takes integer class indices: give int64 labels, "
                        "or pass your own loss")
    if tuple(labels.shape) != want:
        raise UserError(f"labels of shape {tuple(labels.shape)} do not fit the model's output {tuple(output.shape)}: "
                        f"cross-entropy takes labels of shape {want} (one class index per sample, or per position)")
    low, high = label_range
    if low < 0 or high >= output.shape[-1]:
        raise UserError(f"labels range over [{low}, {high}] but the model scores {output.shape[-1]} classes: "
                        f"give labels in [0, {output.shape[-1] - 1}] or widen the model's last layer")


def data_from_config(cfg):
    """The data a config names: ``data`` (an import path, called on the cluster with ``data_options``, and
    with ``data_dir`` if it takes one) or the built-in ``dataset``."""
    if cfg.data is None:
        return load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.seed, **cfg.data_options)
    function = import_object(cfg.data, "--data")
    options = dict(cfg.data_options)
    if "data_dir" in inspect.signature(function).parameters and "data_dir" not in options:
        options["data_dir"] = cfg.data_dir and str(Path(cfg.data_dir).resolve())  # the task runs elsewhere
    return functools.partial(function, **options)
