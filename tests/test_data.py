"""Tests for src/data.py: real loading, splits, binarisation and the missing-files errors.

Nothing here downloads: MNIST comes from the project's shared copy (skipped when absent), the other
torchvision datasets from tiny files written into tmp_path in torchvision's own layout.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from src.data import DataBundle, DataError, Split, binarize, check_available, load_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_RAW = SHARED_DATA / "MNIST" / "raw"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

needs_mnist = pytest.mark.skipif(
    not all((MNIST_RAW / f).is_file() for f in IDX_NAMES),
    reason=f"real MNIST not found in {MNIST_RAW} (shared/data beside the repo)",
)


def cfg(**kw):
    base = dict(
        name="digits",
        root="data",
        download=False,
        binarize=True,
        eval_binarize_seed=777,
        split_seed=0,
        val_fraction=0.1,
        test_fraction=0.2,
        max_train=None,
        max_eval=None,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with (size, mtime_ns): any write shows up."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ---------------------------------------------------------------------------------------------
# tiny torchvision-layout files


def write_idx(path: Path, arr: np.ndarray) -> None:
    """IDX (SN3 'Pascal Vincent') file: magic 0x0000 08 <ndim>, big-endian int32 dims, uint8 data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.tobytes())


def make_mnist_like(root: Path, folder: str, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = {
        "train_x": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    data["train_x"][0] = 0  # exact end points survive the /255
    data["train_x"][1] = 255
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", data["train_x"])
    write_idx(raw / "train-labels-idx1-ubyte", data["train_y"])
    write_idx(raw / "t10k-images-idx3-ubyte", data["test_x"])
    write_idx(raw / "t10k-labels-idx1-ubyte", data["test_y"])
    return data


def make_cifar(root: Path, per_batch: int = 4, n_test: int = 3, seed: int = 0) -> dict:
    """cifar-10-batches-py with pickled dicts as in the original archive (rows are R|G|B planes)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        rows.append(x)
        labels += y
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x, "labels": y, "batch_label": f"training batch {i} of 5"}, f)
    xt = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    yt = [int(v) for v in rng.integers(0, 10, size=n_test)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": xt, "labels": yt}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
            f,
        )
    return {"train_x": np.concatenate(rows), "train_y": np.array(labels), "test_x": xt, "test_y": np.array(yt)}


# ---------------------------------------------------------------------------------------------
# binarize


def test_binarize_is_bernoulli_and_seeded():
    p = torch.tensor([[0.0, 1.0, 0.5, 0.25]]).repeat(2000, 1)
    a = binarize(p, torch.Generator().manual_seed(3))
    b = binarize(p, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == p.dtype and a.shape == p.shape
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert a[:, 0].sum() == 0 and a[:, 1].sum() == 2000  # p=0 never fires, p=1 always
    assert abs(a[:, 2].mean().item() - 0.5) < 0.05 and abs(a[:, 3].mean().item() - 0.25) < 0.05
    assert not torch.equal(a, binarize(p, torch.Generator().manual_seed(4)))


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_splits_and_ranges():
    b = load_dataset(cfg())
    assert isinstance(b, DataBundle) and isinstance(b.train, Split)
    assert b.name == "digits" and b.image_shape == (1, 8, 8) and b.n_classes == 10 and b.binary
    # 1797 images: test = round(0.2 N) = 359, val = round(0.1 N) = 180, train = the rest
    assert (len(b.train), len(b.val), len(b.test)) == (1258, 180, 359)
    for s in (b.train, b.val, b.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.x.shape[1:] == (1, 8, 8) and s.y.shape == (s.x.shape[0],)
        assert s.x.min() >= 0 and s.x.max() <= 1
        assert set(s.y.unique().tolist()) <= set(range(10))
    # train keeps grey levels k/16; val and test are already 0/1
    assert set((b.train.x * 16).unique().tolist()) == set(float(k) for k in range(17))
    for s in (b.val, b.test):
        assert set(s.x.unique().tolist()) == {0.0, 1.0}


def test_digits_splits_are_a_disjoint_partition():
    from sklearn.datasets import load_digits

    b = load_dataset(cfg(binarize=False))
    d = load_digits()
    full = torch.as_tensor(d.images, dtype=torch.float32).reshape(len(d.images), -1) / 16.0
    # map every split image back to its row in the original data (rows are matched exactly with labels)
    keys = {}
    for i, (row, lab) in enumerate(zip(full, d.target)):
        keys.setdefault((row.numpy().tobytes(), int(lab)), []).append(i)
    used = []
    for s in (b.train, b.val, b.test):
        for x, y in zip(s.x.reshape(len(s.x), -1), s.y):
            idx = keys[(x.numpy().tobytes(), int(y))]
            used.append(idx.pop(0))
    assert sorted(used) == list(range(1797))  # every image exactly once: disjoint and complete


def test_digits_determinism_and_split_seed():
    a, b = load_dataset(cfg()), load_dataset(cfg())
    for s, t in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)
    c = load_dataset(cfg(split_seed=1))
    assert not torch.equal(a.test.y, c.test.y)
    assert len(c.test) == len(a.test)


def test_fixed_eval_binarisation_uses_the_seed_val_then_test():
    a = load_dataset(cfg(eval_binarize_seed=777))
    grey = load_dataset(cfg(binarize=False))
    assert not grey.binary
    gen = torch.Generator().manual_seed(777)
    assert torch.equal(a.val.x, torch.bernoulli(grey.val.x, generator=gen))
    assert torch.equal(a.test.x, torch.bernoulli(grey.test.x, generator=gen))
    assert torch.equal(a.train.x, grey.train.x)  # train is left as grey levels
    other = load_dataset(cfg(eval_binarize_seed=778))
    assert not torch.equal(a.val.x, other.val.x)
    assert torch.equal(a.val.y, other.val.y)  # only the binarisation changed, not the split


def test_caps_take_the_first_n_and_keep_values():
    full = load_dataset(cfg())
    small = load_dataset(cfg(max_train=50, max_eval=20))
    assert (len(small.train), len(small.val), len(small.test)) == (50, 20, 20)
    assert torch.equal(small.train.x, full.train.x[:50]) and torch.equal(small.train.y, full.train.y[:50])
    # val and test are binarised before capping: the cap never changes a kept image
    assert torch.equal(small.val.x, full.val.x[:20]) and torch.equal(small.test.x, full.test.x[:20])
    assert torch.equal(small.test.y, full.test.y[:20])
    big = load_dataset(cfg(max_train=10**6, max_eval=10**6))  # caps above the size are no-ops
    assert (len(big.train), len(big.val), len(big.test)) == (1258, 180, 359)


def test_cfg_as_omegaconf_with_str_enum_name():
    from omegaconf import OmegaConf

    from src.schema import DatasetConfig

    b = load_dataset(OmegaConf.structured(DatasetConfig(max_train=30)))
    assert b.name == "digits" and len(b.train) == 30
    b2 = load_dataset(DatasetConfig())  # the plain dataclass works too
    assert len(b2.train) == 1258


# ---------------------------------------------------------------------------------------------
# real MNIST (shared/data)


@pytest.fixture(scope="module")
def mnist_full():
    before = listing(SHARED_DATA)
    b = load_dataset(cfg(name="mnist", root=str(SHARED_DATA)))
    assert listing(SHARED_DATA) == before, "loading MNIST wrote into its root"
    return b


@needs_mnist
def test_real_mnist_vampprior_split(mnist_full):
    b = mnist_full
    assert b.name == "mnist" and b.image_shape == (1, 28, 28) and b.binary and b.n_classes == 10
    assert (len(b.train), len(b.val), len(b.test)) == (50_000, 10_000, 10_000)
    assert b.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # first 50k of the training file
    # class counts from shared/data/README.md: val (the last 10k) + train = the training file
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    got = (torch.bincount(b.train.y, minlength=10) + torch.bincount(b.val.y, minlength=10)).tolist()
    assert got == train_counts
    assert torch.bincount(b.test.y, minlength=10).tolist() == test_counts
    assert b.train.x.dtype == torch.float32 and b.train.x.min() == 0 and b.train.x.max() == 1
    assert len(b.train.x.unique()) > 200  # grey levels k/255, not binarised
    for s in (b.val, b.test):
        assert s.x.dtype == torch.float32 and set(s.x.unique().tolist()) == {0.0, 1.0}


@needs_mnist
def test_real_mnist_raw_pixels_and_capped_eval_match(mnist_full):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw_train = read_image_file(str(MNIST_RAW / "train-images-idx3-ubyte"))
    raw_labels = read_label_file(str(MNIST_RAW / "train-labels-idx1-ubyte"))
    small = load_dataset(cfg(name="mnist", root=str(SHARED_DATA), max_train=64, max_eval=32))
    assert (len(small.train), len(small.val), len(small.test)) == (64, 32, 32)
    assert torch.equal(small.train.x, raw_train[:64].unsqueeze(1).float() / 255)
    assert torch.equal(mnist_full.val.y, raw_labels[50_000:])  # validation = the last 10 000
    # the fixed binarisation does not depend on the cap, and repeats exactly
    assert torch.equal(small.val.x, mnist_full.val.x[:32]) and torch.equal(small.test.x, mnist_full.test.x[:32])
    # it is Bernoulli(grey level) drawn with seed 777, val then test
    gen = torch.Generator().manual_seed(777)
    val_grey = raw_train[50_000:].unsqueeze(1).float() / 255
    assert torch.equal(mnist_full.val.x, torch.bernoulli(val_grey, generator=gen))


# ---------------------------------------------------------------------------------------------
# tiny IDX files: MNIST and FashionMNIST layout


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_tiny_idx_files_round_trip(tmp_path, name, folder):
    data = make_mnist_like(tmp_path, folder, n_train=12, n_test=5)
    before = listing(tmp_path)
    b = load_dataset(cfg(name=name, root=str(tmp_path), binarize=False))
    assert listing(tmp_path) == before, "loading wrote into the root"
    assert b.name == name and b.image_shape == (1, 28, 28) and not b.binary
    # 12 training images: the protocol's 5/6 : 1/6 proportions -> 10 train, last 2 val
    assert (len(b.train), len(b.val), len(b.test)) == (10, 2, 5)
    x = torch.cat([b.train.x, b.val.x])
    assert torch.equal(x, torch.from_numpy(data["train_x"]).unsqueeze(1).float() / 255)
    assert torch.equal(torch.cat([b.train.y, b.val.y]), torch.from_numpy(data["train_y"]).long())
    assert torch.equal(b.test.x, torch.from_numpy(data["test_x"]).unsqueeze(1).float() / 255)
    assert torch.equal(b.test.y, torch.from_numpy(data["test_y"]).long())
    assert b.train.x[0].max() == 0 and b.train.x[1].min() == 1


def test_tiny_idx_binarised_eval(tmp_path):
    make_mnist_like(tmp_path, "MNIST", n_train=12, n_test=5)
    a = load_dataset(cfg(name="mnist", root=str(tmp_path)))
    b = load_dataset(cfg(name="mnist", root=str(tmp_path)))
    assert a.binary and torch.equal(a.val.x, b.val.x) and torch.equal(a.test.x, b.test.x)
    assert set(torch.cat([a.val.x, a.test.x]).unique().tolist()) <= {0.0, 1.0}
    assert len(a.train.x.unique()) > 2


def test_relative_root_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    make_mnist_like(tmp_path / "data", "MNIST")
    monkeypatch.chdir(tmp_path)
    b = load_dataset(cfg(name="mnist", root="data", max_train=3))
    assert len(b.train) == 3


# ---------------------------------------------------------------------------------------------
# missing files


@pytest.mark.parametrize(
    "name, sub", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py")]
)
def test_missing_files_error_names_path_and_both_fixes(tmp_path, name, sub):
    root = tmp_path / "nowhere"
    for fn in (check_available, load_dataset):
        with pytest.raises(DataError) as e:
            fn(cfg(name=name, root=str(root)))
        msg = assert_one_line(e)
        assert str(root / sub) in msg
        assert f"dataset.root=<folder that contains {sub}>" in msg and "dataset.download=true" in msg
    assert not root.exists(), "the check created the root"


def test_partial_mnist_names_missing_file_and_gz_hint(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    raw = tmp_path / "MNIST" / "raw"
    t10k = raw / "t10k-images-idx3-ubyte"
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(t10k.read_bytes())
    t10k.unlink()
    before = listing(tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset(cfg(name="mnist", root=str(tmp_path)))
    msg = assert_one_line(e)
    assert str(raw) in msg and "t10k-images-idx3-ubyte" in msg and "train-images" not in msg
    assert "gunzip" in msg and "dataset.download=true" in msg
    assert listing(tmp_path) == before


def test_mnist_root_with_only_fashion_mnist_is_missing(tmp_path):
    make_mnist_like(tmp_path, "FashionMNIST")
    check_available(cfg(name="fashion_mnist", root=str(tmp_path)))
    with pytest.raises(DataError, match="MNIST/raw"):
        check_available(cfg(name="mnist", root=str(tmp_path)))


def test_digits_needs_no_files(tmp_path):
    check_available(cfg(name="digits", root=str(tmp_path / "absent")))


# ---------------------------------------------------------------------------------------------
# tiny CIFAR-10


def test_tiny_cifar_fails_torchvision_md5_with_data_error(tmp_path):
    make_cifar(tmp_path)
    check_available(cfg(name="cifar10", root=str(tmp_path)))  # the files are there ...
    with pytest.raises(DataError) as e:  # ... but torchvision verifies their md5 against the originals
        load_dataset(cfg(name="cifar10", root=str(tmp_path)))
    assert str(tmp_path) in assert_one_line(e)


def test_tiny_cifar_round_trip(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    # skip only torchvision's md5 comparison with the real archive; existence is still checked
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    data = make_cifar(tmp_path, per_batch=4, n_test=3)
    before = listing(tmp_path)
    b = load_dataset(cfg(name="cifar10", root=str(tmp_path), binarize=True))  # binarize ignored
    assert listing(tmp_path) == before
    assert b.name == "cifar10" and b.image_shape == (3, 32, 32) and not b.binary and b.n_classes == 10
    # 20 training images: 45k/5k proportions -> 18 train, last 2 val
    assert (len(b.train), len(b.val), len(b.test)) == (18, 2, 3)
    want = torch.from_numpy(data["train_x"]).reshape(-1, 3, 32, 32).float() / 255  # CHW, R|G|B planes
    assert torch.equal(torch.cat([b.train.x, b.val.x]), want)
    assert torch.equal(torch.cat([b.train.y, b.val.y]), torch.from_numpy(data["train_y"]).long())
    assert torch.equal(b.test.x, torch.from_numpy(data["test_x"]).reshape(-1, 3, 32, 32).float() / 255)
    assert torch.equal(b.test.y, torch.from_numpy(data["test_y"]).long())
    assert b.train.x.dtype == torch.float32 and b.test.y.dtype == torch.int64
    assert len(b.val.x.unique()) > 2  # continuous, not binarised


def test_download_true_with_files_present_uses_them_without_writing(tmp_path):
    # torchvision's MNIST.download() returns early when the raw files exist: no network, no writes
    data = make_mnist_like(tmp_path, "MNIST", n_train=6, n_test=2)
    before = listing(tmp_path)
    b = load_dataset(cfg(name="mnist", root=str(tmp_path), download=True, binarize=False))
    assert listing(tmp_path) == before
    assert torch.equal(b.test.y, torch.from_numpy(data["test_y"]).long())
