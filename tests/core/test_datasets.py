import gzip
import hashlib

import numpy as np
import pytest
from helpers import CutShortHandler, http_mirror
from helpers import idx_bytes as _idx

from dni_pipeline.core.datasets import MNIST_FILES, load_dataset, read_idx
from dni_pipeline.core.errors import UserError


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_raw_and_gzip(tmp_path, compress):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    raw = _idx(images, 2051)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path, 2051, hashlib.md5(raw).hexdigest())
    assert out.shape == (2, 3, 4) and np.array_equal(out, images)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:5], "truncated"),
    (lambda raw: (2049).to_bytes(4, "big") + raw[4:], "magic 2049, expected 2051"),
    (lambda raw: raw[:-1], "header .* implies"),
    (lambda raw: raw[:-1] + b"\x07", "md5"),
    (lambda raw: gzip.compress(raw)[:30], "cannot read"),
])
def test_corrupt_idx_is_a_user_error(tmp_path, damage, message):
    raw = _idx(np.zeros((2, 3, 4)), 2051)
    path = tmp_path / "x.idx"
    path.write_bytes(damage(raw))
    with pytest.raises(UserError, match=message):
        read_idx(path, 2051, hashlib.md5(raw).hexdigest())


def test_real_mnist_loads_verified_and_scaled(mnist_dir):
    data = load_dataset("mnist", str(mnist_dir.parent))
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert np.bincount(data.y_test).tolist()[:3] == [980, 1135, 1032]  # the published class counts


def test_mnist_env_var_and_missing_files(tmp_path, monkeypatch, mnist_dir):
    monkeypatch.setenv("DNI_PIPELINE_DATA", str(mnist_dir))
    monkeypatch.setattr("dni_pipeline.core.datasets.CACHE_DIR", tmp_path / "cache")
    assert load_dataset("mnist", None).y_train.shape == (60000,)
    with pytest.raises(UserError, match="MNIST files not found .* --download"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", str(tmp_path / "nowhere"))


def test_mnist_md5_mismatch_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr("dni_pipeline.core.datasets.CACHE_DIR", tmp_path / "cache")
    for name, (magic, _) in MNIST_FILES.items():
        shape = (3, 28, 28) if magic == 2051 else (3,)
        (tmp_path / name).write_bytes(_idx(np.ones(shape), magic))  # valid IDX, wrong content
    with pytest.raises(UserError, match="train-images-idx3-ubyte fails its md5 check"):
        load_dataset("mnist", str(tmp_path))


def test_digits_and_synthetic_are_in_unit_range():
    for name in ("digits", "synthetic"):
        data = load_dataset(name, None)
        assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
        assert set(np.unique(data.y_test)) <= set(range(data.num_classes))
    with pytest.raises(UserError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", None)


def test_download_verifies_and_leaves_nothing_partial(tmp_path, monkeypatch, mnist_dir):
    from dni_pipeline.core.datasets import download_mnist

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in MNIST_FILES:
        (corrupt / f"{name}.gz").write_bytes(b"not an idx file")
    monkeypatch.setattr("dni_pipeline.core.datasets.MNIST_MIRRORS", (corrupt.as_uri() + "/",))
    with pytest.raises(UserError, match="could not download train-images-idx3-ubyte.gz from any mirror"):
        download_mnist(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr("dni_pipeline.core.datasets.MNIST_MIRRORS", (corrupt.as_uri() + "/", mnist_dir.as_uri() + "/"))
    download_mnist(tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)


def test_download_over_http_refuses_a_corrupt_copy_and_an_interrupted_one(tmp_path, monkeypatch, caplog, mnist_dir):
    from dni_pipeline.core.datasets import download_mnist, load_mnist

    corrupt = tmp_path / "corrupt"  # the first file fetched with its IDX header and size intact, one pixel changed
    corrupt.mkdir()
    raw = bytearray(gzip.decompress((mnist_dir / "train-images-idx3-ubyte.gz").read_bytes()))
    raw[-1] ^= 0xFF
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    cache = tmp_path / "cache"
    with http_mirror(corrupt) as bad, http_mirror(mnist_dir, CutShortHandler) as cut, http_mirror(mnist_dir) as good:
        for mirrors in [(bad,), (cut,)]:
            monkeypatch.setattr("dni_pipeline.core.datasets.MNIST_MIRRORS", mirrors)
            with pytest.raises(UserError, match="could not download train-images-idx3-ubyte.gz from any mirror"):
                download_mnist(cache)
            assert list(cache.iterdir()) == []  # neither the bad file nor a partial one
        assert "fails its md5 check" in caplog.text and "interrupted after 1000 of 9719438 bytes" in caplog.text
        monkeypatch.setattr("dni_pipeline.core.datasets.MNIST_MIRRORS", (bad, cut, good))
        download_mnist(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)
    for name in MNIST_FILES:
        assert (cache / f"{name}.gz").read_bytes() == (mnist_dir / f"{name}.gz").read_bytes()
    assert load_mnist(cache, download=False).x_train.shape == (60000, 1, 28, 28)
