"""Built-in datasets as arrays, shared by the unlocked trainer and diffusion: images in [0, 1] (MNIST
from IDX files, scikit-learn's bundled digits), a synthetic task, and a character corpus (text.py).

MNIST is looked up in a data directory (``--data-dir`` or ``$DNI_PIPELINE_DATA``), in ``DIR/mnist`` or
``DIR`` itself, gzip-compressed or raw. Each file's IDX header and size are checked, and the md5 of
the uncompressed bytes is verified against the published value. ``download_mnist`` fetches the files
into the data directory (or ``~/.cache/dni-pipeline``) for users who are online.
"""

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import fetch_verified
from .settings import CACHE_DIR, DATA_DIR_ENV, resolve_data_dir

__all__ = ["DATASETS", "MNIST_FILES", "Dataset", "download_mnist", "find_mnist", "load_dataset", "read_idx"]

DATASETS = ("mnist", "digits", "synthetic", "kjv")

# name -> (magic, md5 of the uncompressed file), from the MNIST distribution.
MNIST_FILES = {
    "train-images-idx3-ubyte": (2051, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (2049, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (2051, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (2049, "27ae3e4e09519cfbb04c329615203637"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # (N, *input_shape): float32 images in [0, 1], int64 tokens
    y_train: np.ndarray  # int64 class labels (N,), or next tokens (N, T)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None = None  # None: not a classification task, or not stated

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


# -- MNIST ---------------------------------------------------------------------------------------
def read_idx(path: Path, expected_magic: int, md5: str | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz) with header, size and (when given) checksum checks."""
    fix = f"replace {path} with an intact copy (or delete it and rerun with --download)"
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: compressed or not is told by content, not by name
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read {path} ({exc}): {fix}") from None
    if len(raw) < 8:
        raise UserError(f"{path} is truncated ({len(raw)} bytes, no IDX header): {fix}")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise UserError(f"{path} has magic {magic}, expected {expected_magic} (wrong or corrupt file): {fix}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(f"{path} holds {len(raw)} bytes but its header {dims} implies {expected}: {fix}")
    if md5 and hashlib.md5(raw).hexdigest() != md5:
        raise UserError(f"{path} fails its md5 check (expected {md5}): {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_mnist_file(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def find_mnist(data_dir: Path | None) -> dict[str, Path] | None:
    """Paths of the four MNIST files if all are present in the data directory or the cache."""
    roots = [data_dir] if data_dir else []
    folders = [p for root in roots + [CACHE_DIR] for p in (root / "mnist", root)]
    found = {name: _find_mnist_file(folders, name) for name in MNIST_FILES}
    return found if all(found.values()) else None


def download_mnist(target: Path) -> None:
    """Fetch the four files into `target` (atomically, verified) from the first mirror that answers."""
    for name, (magic, md5) in MNIST_FILES.items():
        final = target / f"{name}.gz"
        if not final.exists():
            fetch_verified([mirror + final.name for mirror in MNIST_MIRRORS], final,
                           lambda path, magic=magic, md5=md5: read_idx(path, magic, md5))


def load_mnist(data_dir: Path | None, download: bool) -> Dataset:
    files = find_mnist(data_dir)
    if files is None and download:
        download_mnist((data_dir or CACHE_DIR) / "mnist")
        files = find_mnist(data_dir)
    if files is None:
        where = data_dir or f"${DATA_DIR_ENV} (unset)"
        raise UserError(
            f"MNIST files not found in {where}: pass --data-dir pointing at the IDX files, or --download"
        )
    arrays = {name: read_idx(path, *MNIST_FILES[name]) for name, path in files.items()}
    return Dataset(
        "mnist",
        _unit_images(arrays["train-images-idx3-ubyte"], 255.0),
        arrays["train-labels-idx1-ubyte"].astype(np.int64),
        _unit_images(arrays["t10k-images-idx3-ubyte"], 255.0),
        arrays["t10k-labels-idx1-ubyte"].astype(np.int64),
        10,
    )


def _unit_images(pixels: np.ndarray, max_value: float) -> np.ndarray:
    """(N, H, W) integers -> (N, 1, H, W) float32 in [0, 1]."""
    return (pixels[:, None] / np.float32(max_value)).astype(np.float32)


# -- always-available datasets -------------------------------------------------------------------
def load_digits(seed: int) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), split 80/20 stratified."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=seed
    )
    return Dataset("digits", _unit_images(x_train, 16.0), y_train.astype(np.int64),
                   _unit_images(x_test, 16.0), y_test.astype(np.int64), 10)


def make_synthetic(seed: int, num_train: int = 4096, num_test: int = 1024, dim: int = 32, classes: int = 10) -> Dataset:
    """Labels from a random two-layer teacher on uniform inputs: learnable, nonlinear, instant."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(dim, 64)) / np.sqrt(dim)
    w2 = rng.normal(size=(64, classes)) / 8.0
    x = rng.random((num_train + num_test, dim), dtype=np.float32)
    y = (np.tanh((x - 0.5) @ w1 * 3.0) @ w2).argmax(1).astype(np.int64)
    return Dataset("synthetic", x[:num_train], y[:num_train], x[num_train:], y[num_train:], classes)


def load_dataset(name: str, data_dir: str | None, download: bool = False, seed: int = 0, **options) -> Dataset:
    """A built-in dataset; `options` are the dataset's own (kjv: ``context``, the window in characters, and
    ``test_windows``, how many validation windows to keep)."""
    if options and name != "kjv":
        raise UserError(f"dataset '{name}' takes no options (got {', '.join(options)}): drop data_options")
    if name == "kjv":
        from .text import load_kjv  # text.py builds on this module's Dataset

        try:
            return load_kjv(resolve_data_dir(data_dir), **options)
        except TypeError:
            raise UserError(f"dataset kjv takes the options context and test_windows (got {', '.join(options)})") from None
    if name == "mnist":
        return load_mnist(resolve_data_dir(data_dir), download)
    if name == "digits":
        return load_digits(seed)
    if name == "synthetic":
        return make_synthetic(seed)
    raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
