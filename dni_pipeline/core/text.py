"""A character-level text corpus as next-character prediction: the King James Bible (``kjv``).

The corpus is looked up as ``DIR/text/kjv.txt.gz`` or ``DIR/kjv.txt.gz`` in the data directory and its
sha256 (of the uncompressed text) is verified. The split is the common one for such a corpus: the first
90% of the characters for training and the rest for validation, cut at a line boundary (the test split
of the run is this validation part). Each split is cut into non-overlapping windows of ``context + 1``
characters: x is a window's first `context` characters and y the same shifted by one, so every position
predicts the next character. The vocabulary is the sorted set of the corpus's characters (63 for KJV).
"""

import gzip
import hashlib
from pathlib import Path

import numpy as np

from .datasets import Dataset
from .errors import UserError

__all__ = ["KJV_SHA256", "char_windows", "load_kjv"]

KJV_SHA256 = "b5c4940bcfeee072c0935b5200d0f9d88a00a0199cb0961d16133458fcdfae5d"
TRAIN_FRACTION = 0.9


def char_windows(text: str, vocabulary: str, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (x, y) windows of `context` characters, y = x shifted by one."""
    lookup = np.zeros(256, dtype=np.int64)
    lookup[np.frombuffer(vocabulary.encode("ascii"), dtype=np.uint8)] = np.arange(len(vocabulary))
    ids = lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    count = (len(ids) - 1) // context
    x = ids[: count * context].reshape(count, context)
    y = ids[1 : count * context + 1].reshape(count, context)
    return x, y


def _find(data_dir: Path | None) -> Path:
    for folder in ([data_dir / "text", data_dir] if data_dir else []):
        if (folder / "kjv.txt.gz").is_file():
            return folder / "kjv.txt.gz"
    raise UserError(f"kjv.txt.gz not found in {data_dir or 'the data directory (unset)'}: pass --data-dir pointing at "
                    "a folder holding text/kjv.txt.gz")


def load_kjv(data_dir: Path | None, context: int = 64, test_windows: int = 0) -> Dataset:
    """The corpus as windows of `context` characters; `test_windows` keeps that many validation windows,
    evenly spaced over the whole validation part (0: all), to make frequent evaluations cheap."""
    if context < 1 or test_windows < 0:
        raise UserError(f"context must be at least 1 character and test_windows 0 or more (got {context}, {test_windows})")
    path = _find(data_dir)
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read {path} ({exc}): replace it with an intact copy") from None
    if hashlib.sha256(raw).hexdigest() != KJV_SHA256:
        raise UserError(f"{path} fails its sha256 check (expected {KJV_SHA256}): replace it with an intact copy")
    text = raw.decode("ascii")
    cut = text.rindex("\n", 0, int(TRAIN_FRACTION * len(text))) + 1
    vocabulary = "".join(sorted(set(text)))
    x_train, y_train = char_windows(text[:cut], vocabulary, context)
    x_test, y_test = char_windows(text[cut:], vocabulary, context)
    if 0 < test_windows < len(x_test):
        keep = np.linspace(0, len(x_test) - 1, test_windows).round().astype(int)
        x_test, y_test = x_test[keep], y_test[keep]
    return Dataset("kjv", x_train, y_train, x_test, y_test, len(vocabulary))
