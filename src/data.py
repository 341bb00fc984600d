"""Datasets, splits and binarisation.

Every dataset comes back as in-memory tensors (``DataBundle``): images ``[N, C, H, W]`` float32 in
[0, 1] and labels ``[N]`` int64, already split into train / validation / test.

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, offline); a permutation drawn with
  ``split_seed`` gives test = round(test_fraction·N), val = round(val_fraction·N), train = the rest.
- ``mnist`` / ``fashion_mnist``: torchvision's files; VampPrior's split (train = first 50 000 of the
  training set, val = last 10 000, test = the 10 000 test images).
- ``cifar10``: torchvision's files; train = first 45 000, val = last 5 000, test = 10 000. Continuous
  RGB, never binarised.

Binary datasets (``binary=True``, dynamic binarisation as in VampPrior): ``train.x`` keeps the grey
levels and the trainer draws ``binarize(x)`` per batch; ``val.x`` and ``test.x`` are binarised once,
here, with ``torch.Generator().manual_seed(eval_binarize_seed)`` (val first, then test, one generator).
They are binarised *before* the ``max_eval`` cap, so capping never changes the values kept.

Nothing is written under ``root`` unless ``download`` is true: missing files raise ``DataError``
(checked by ``check_available`` before torchvision is touched).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from src.errors import UserError
from src.schema import enum_value

__all__ = ["DataError", "Split", "DataBundle", "IMAGE_SHAPES", "check_available", "load_dataset", "binarize"]

log = logging.getLogger(__name__)

IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}

# torchvision's on-disk layout (torchvision 0.29: MNIST reads only the *uncompressed* IDX files in
# <root>/<ClassName>/raw; the .gz archives are used by download=True only, which extracts them
# without going online when they are already there with the right md5).
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_TV_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
    "batches.meta",
)

# (train, val) sizes carved out of the official training set; val is its tail.
_TRAIN_VAL = {"mnist": (50_000, 10_000), "fashion_mnist": (50_000, 10_000), "cifar10": (45_000, 5_000)}


class DataError(UserError, ValueError):
    """A data problem the user can fix (missing files, bad settings); the message is one line."""


@dataclass
class Split:
    x: torch.Tensor  # [N, C, H, W] float32 in [0, 1]
    y: torch.Tensor  # [N] int64 labels

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    image_shape: tuple[int, int, int]  # (C, H, W)
    binary: bool  # train.x: grey levels to binarise per batch; val.x / test.x already 0/1
    n_classes: int  # labels are 0 .. n_classes - 1 (all three splits, before any cap)


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_bin ~ Bernoulli(x) elementwise (same dtype and device as x)."""
    return torch.bernoulli(x, generator=generator)


# ----------------------------------------------------------------------------------------------
# config access


def _name(cfg: Any) -> str:
    return str(enum_value(cfg.name))


def _root(cfg: Any) -> Path:
    """cfg.root as an absolute path; a relative root is taken from the directory the run started in."""
    root = os.path.expanduser(str(cfg.root))
    if not os.path.isabs(root):
        try:  # under Hydra this is the launch directory even if the job changed its cwd
            from hydra.utils import to_absolute_path

            root = to_absolute_path(root)
        except Exception:  # pragma: no cover - hydra missing or not usable here
            root = os.path.abspath(root)
    return Path(root)


# ----------------------------------------------------------------------------------------------
# availability


def _missing_files_error(name: str, root: Path, sub: str, missing: list[str], extra: str = "") -> DataError:
    folder = root / sub
    what = "which does not exist" if not folder.is_dir() else f"which lacks {', '.join(missing)}{extra}"
    return DataError(
        f"{name} files not found: looked in {folder}, {what}. "
        f"Fix: set dataset.root=<folder that contains {sub}> or dataset.download=true "
        f"(torchvision then fetches them under {root})"
    )


def check_available(cfg: Any) -> None:
    """Raise DataError, without loading anything, if the dataset cannot be loaded as configured.

    Checks the name and, when ``download`` is false, that torchvision's files exist under ``root``.
    """
    name = _name(cfg)
    if name == "digits" or cfg.download:
        return
    root = _root(cfg)
    if name in _TV_FOLDER:
        base = root / _TV_FOLDER[name]
        raw = base / "raw"
        # torchvision also accepts its legacy cache <root>/<Name>/processed/{training,test}.pt
        if all((base / "processed" / f).is_file() for f in ("training.pt", "test.pt")):
            return
        missing = [f for f in _IDX_FILES if not (raw / f).is_file()]
        if missing:
            gz = [f for f in missing if (raw / f"{f}.gz").is_file()]
            extra = (
                f" (found {len(gz)} .gz archive(s) there: torchvision reads only the uncompressed files; "
                "gunzip them; download=true also extracts the official archives without fetching them again)"
                if gz
                else ""
            )
            raise _missing_files_error(name, root, f"{_TV_FOLDER[name]}/raw", missing, extra)
    else:  # cifar10
        folder = root / _CIFAR_FOLDER
        missing = [f for f in _CIFAR_FILES if not (folder / f).is_file()]
        if missing:
            raise _missing_files_error(name, root, _CIFAR_FOLDER, missing)


# ----------------------------------------------------------------------------------------------
# loading


def _split_eval(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    to_float: Callable[[torch.Tensor], torch.Tensor],
    binary: bool,
    eval_seed: int,
    max_train: int | None,
    max_eval: int | None,
) -> tuple[Split, Split, Split]:
    """Convert, binarise val/test (before capping), cap, and package the three splits."""
    xt, yt = train
    if max_train is not None:  # cap before converting: no float copy of unused images
        xt, yt = xt[:max_train], yt[:max_train]
    out_train = Split(to_float(xt).contiguous(), yt.to(torch.int64).clone())

    # to_float always returns a new tensor; val and test are binarised in full, then capped, so
    # max_eval never changes the values kept.
    xv, yv = to_float(val[0]), val[1]
    xs, ys = to_float(test[0]), test[1]
    if binary:
        gen = torch.Generator().manual_seed(int(eval_seed))
        xv = binarize(xv, gen)
        xs = binarize(xs, gen)
    if max_eval is not None:  # clone so the full tensors can be freed
        xv, yv, xs, ys = xv[:max_eval].clone(), yv[:max_eval], xs[:max_eval].clone(), ys[:max_eval]
    out_val = Split(xv.contiguous(), yv.to(torch.int64).clone())
    out_test = Split(xs.contiguous(), ys.to(torch.int64).clone())
    return out_train, out_val, out_test


def _load_digits(cfg: Any) -> tuple[tuple, tuple, tuple, Callable, tuple[int, int, int]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1)  # [1797, 1, 8, 8], 0..16
    y = torch.as_tensor(d.target, dtype=torch.int64)
    n = x.shape[0]
    n_test, n_val = round(cfg.test_fraction * n), round(cfg.val_fraction * n)
    if n - n_test - n_val < 1:
        raise DataError(f"digits: val_fraction and test_fraction leave no training images out of {n}")
    if n_val < 1 or n_test < 1:
        raise DataError(
            f"digits: dataset.val_fraction and dataset.test_fraction must each keep at least one of "
            f"the {n} images (got {n_val} validation, {n_test} test)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    i_test, i_val, i_train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return (
        (x[i_train], y[i_train]),
        (x[i_val], y[i_val]),
        (x[i_test], y[i_test]),
        lambda t: t / 16.0,
        IMAGE_SHAPES["digits"],
    )


def _train_val_sizes(name: str, n: int, root: Path) -> tuple[int, int]:
    """The protocol's (train, val) sizes; for a training file of another size, the same proportions."""
    n_train, n_val = _TRAIN_VAL[name]
    if n == n_train + n_val:
        return n_train, n_val
    val = (n * n_val) // (n_train + n_val)
    if val < 1 or n - val < 1:
        raise DataError(f"{name}: the training file under {root} holds only {n} image(s); cannot split off validation")
    log.warning(
        "%s: %d training images under %s (not %d): using the last %d as validation", name, n, root, n_train + n_val, val
    )
    return n - val, val


# A mirror that takes the connection and then stops answering: an error in a minute, not a wait without end
# (torchvision's download sets no timeout). Per socket operation: a slow download that goes on is not cut.
DOWNLOAD_TIMEOUT_S = 60


@contextlib.contextmanager
def _download_timeout(download: bool):
    previous = socket.getdefaulttimeout()
    if download:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _wrap_torchvision_error(name: str, root: Path, exc: Exception) -> DataError:
    msg = " ".join(str(exc).split())
    return DataError(f"{name}: torchvision could not load the files under {root}: {msg}")


_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3 dims (images) / 1 dim (labels)


def _idx_count(path: Path, dims: int) -> int:
    """The item count in an IDX file's header, after checking its magic number and its size."""
    kind = "image" if dims == 3 else "label"
    with open(path, "rb") as f:
        header = f.read(4 + 4 * dims)
        size = os.fstat(f.fileno()).st_size
    if len(header) < 4 + 4 * dims:
        raise DataError(f"{path} is not an IDX {kind} file: it is only {size} bytes long")
    magic = int.from_bytes(header[:4], "big")
    if magic != _IDX_MAGIC[dims]:
        hint = "a gzip archive: gunzip it" if header[:2] == b"\x1f\x8b" else "a wrong or swapped file?"
        raise DataError(
            f"{path} is not an IDX {kind} file: its magic number is 0x{magic:08x}, expected "
            f"0x{_IDX_MAGIC[dims]:08x} ({hint})"
        )
    shape = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    expected = 4 + 4 * dims + math.prod(shape)
    if size != expected:
        raise DataError(
            f"{path} is damaged: its header promises {shape[0]} {kind}s ({expected} bytes) but the file "
            f"holds {size} bytes"
        )
    return shape[0]


def _check_idx_files(name: str, raw: Path) -> None:
    """torchvision reads the IDX files without checking that they match: a swapped file or a label
    file of another length would give misaligned labels or a traceback."""
    for images, labels in (_IDX_FILES[:2], _IDX_FILES[2:]):
        n_images, n_labels = _idx_count(raw / images, 3), _idx_count(raw / labels, 1)
        if n_images != n_labels:
            raise DataError(
                f"{name}: {raw / images} holds {n_images} images but {raw / labels} holds {n_labels} "
                "labels; the files do not belong together"
            )


def _load_mnist_like(cfg: Any, name: str) -> tuple[tuple, tuple, tuple, Callable, tuple[int, int, int]]:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    root = _root(cfg)
    download = bool(cfg.download)
    raw = root / _TV_FOLDER[name] / "raw"
    if all((raw / f).is_file() for f in _IDX_FILES):
        _check_idx_files(name, raw)
    try:
        with _download_timeout(download):
            tr = cls(root=str(root), train=True, download=download)
            te = cls(root=str(root), train=False, download=download)
    except (RuntimeError, AssertionError, TypeError, ValueError, OSError) as exc:  # OSError: a failed download
        raise _wrap_torchvision_error(name, root, exc) from exc
    x, y = tr.data.unsqueeze(1), torch.as_tensor(tr.targets)  # uint8 [60000, 1, 28, 28], int64
    n_train, n_val = _train_val_sizes(name, x.shape[0], root)
    return (
        (x[:n_train], y[:n_train]),
        (x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
        (te.data.unsqueeze(1), torch.as_tensor(te.targets)),
        lambda t: t.to(torch.float32) / 255.0,
        IMAGE_SHAPES[name],
    )


def _load_cifar10(cfg: Any) -> tuple[tuple, tuple, tuple, Callable, tuple[int, int, int]]:
    from torchvision import datasets

    root = _root(cfg)
    download = bool(cfg.download)
    try:
        with _download_timeout(download):
            tr = datasets.CIFAR10(root=str(root), train=True, download=download)
            te = datasets.CIFAR10(root=str(root), train=False, download=download)
    except (RuntimeError, TypeError, ValueError, KeyError, EOFError, OSError) as exc:  # OSError: a failed download
        raise _wrap_torchvision_error("cifar10", root, exc) from exc

    def chw(data: Any) -> torch.Tensor:  # numpy [N, 32, 32, 3] uint8 -> torch [N, 3, 32, 32] uint8
        return torch.from_numpy(data).permute(0, 3, 1, 2)

    x, y = chw(tr.data), torch.as_tensor(tr.targets, dtype=torch.int64)
    n_train, n_val = _train_val_sizes("cifar10", x.shape[0], root)
    return (
        (x[:n_train], y[:n_train]),
        (x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
        (chw(te.data), torch.as_tensor(te.targets, dtype=torch.int64)),
        lambda t: t.to(torch.float32) / 255.0,
        IMAGE_SHAPES["cifar10"],
    )


def load_dataset(cfg: Any) -> DataBundle:
    """Load ``cfg.name`` as in-memory train / val / test tensors (see the module docstring).

    ``cfg`` is a validated dataset config (src.config.validate checks the fractions and caps)."""
    check_available(cfg)
    name = _name(cfg)
    if name == "digits":
        train, val, test, to_float, shape = _load_digits(cfg)
    elif name in _TV_FOLDER:
        train, val, test, to_float, shape = _load_mnist_like(cfg, name)
    else:
        train, val, test, to_float, shape = _load_cifar10(cfg)
    binary = name != "cifar10" and bool(cfg.binarize)
    n_classes = 1 + max(int(y.max()) for _, y in (train, val, test))
    tr, va, te = _split_eval(
        train,
        val,
        test,
        to_float,
        binary,
        eval_seed=cfg.eval_binarize_seed,
        max_train=cfg.max_train,
        max_eval=cfg.max_eval,
    )
    return DataBundle(name=name, train=tr, val=va, test=te, image_shape=shape, binary=binary, n_classes=n_classes)
