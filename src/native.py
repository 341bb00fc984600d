"""Builds, caches and calls the native CPU loops of src/pair_sums_native.cpp.

The library is compiled once per machine with the system C++ compiler (about a second; no torch
headers) into a cache directory ($CSRAE_CACHE_DIR, default ~/.cache/csrae-sweeps), under a name that
hashes the source, the flags and the CPU's instruction sets, and loaded with ctypes. Without a
compiler, or with CSRAE_NATIVE=0, `library()` is None and src/pair_sums.py uses its tiled torch code.

The build writes the library's size and SHA-256 beside it (`<name>.so.sha256`). A cached library is
loaded only when it matches them: a partial copy would be mapped as it is and die with SIGBUS at
its first call. One that does not match, or has no checksum, is rebuilt (or, without a compiler,
left for the torch code), with one warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from src.files import replace_atomically

SOURCE = Path(__file__).with_name("pair_sums_native.cpp")
FLAGS = ["-O3", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC"]
if platform.machine() in ("x86_64", "AMD64"):
    FLAGS.insert(1, "-march=native")  # the cache key includes the CPU's flags, so this never runs elsewhere
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("CSRAE_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "csrae-sweeps"


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _fingerprint(data: bytes) -> str:
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def _damage(path: Path) -> str | None:
    """Why the cached library cannot be trusted (None: it is exactly what its build wrote)."""
    try:
        expected = _checksum_path(path).read_text().strip()
    except FileNotFoundError:
        return "has no checksum file"
    return None if _fingerprint(path.read_bytes()) == expected else "does not match the size and checksum of its build"


def _build(compiler: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replace_atomically(path, unique=True) as tmp:  # concurrent builders each leave a complete file
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(tmp)], check=True, capture_output=True, text=True, timeout=300
        )
        os.chmod(tmp, 0o755)  # readable by the other users of a shared cache dir, whatever the umask
        built = _fingerprint(tmp.read_bytes())
    with replace_atomically(_checksum_path(path), unique=True) as tmp:
        tmp.write_text(built + "\n")


@cache
def library() -> ctypes.CDLL | None:
    """The loaded library, built first if this machine has none cached; None when it cannot be built."""
    if os.environ.get("CSRAE_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CXX", "c++")
    damage = None
    try:
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *FLAGS, _cpu_signature()]).encode())
        path = cache_dir() / f"pair_sums_native_{key.hexdigest()[:16]}.so"
        if path.exists():
            damage = _damage(path)
        if damage or not path.exists():
            _build(compiler, path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:  # a library built for another system (another libstdc++): build anew
            _build(compiler, path)
            lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        detail = str(getattr(e, "stderr", None) or e).strip()[:300]
        cached = f"{path} {damage} and could not be rebuilt: " if damage else ""
        log.warning("native mixture loops unavailable (%s%s); using the tiled torch code", cached, detail)
        return None
    if damage:
        log.warning("native mixture loops: %s %s; rebuilt", path, damage)
    for s in _SUFFIX.values():
        for name, args in (
            (f"row_scores_{s}", [_P, _P, _P, _P, _I, _I, _I, _I, _P]),
            (f"row_grads_{s}", [_P, _P, _P, _P, _P, _I, _I, _I, _I, _P, _P, _P, _P]),
        ):
            getattr(lib, name).argtypes, getattr(lib, name).restype = args, None
        fn = getattr(lib, f"pairs_{s}")
        fn.argtypes = [_P, _P, _P, _I, _I, _D, ctypes.c_int, _I, _P, _P, _P]
        fn.restype = _D
    return lib


def usable(*tensors: Tensor) -> bool:
    """True when the native loops can take these tensors (every one on the CPU, all of one float dtype:
    the C code reads each buffer as that dtype) and the library loads. CSRAE_NATIVE is read once."""
    dtype = tensors[0].dtype
    return (
        dtype in _SUFFIX and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors) and library() is not None
    )


def _check(rows: Tensor, *others: Tensor) -> None:
    d = rows.shape[-1]
    if any(t.dtype != rows.dtype or (t.dim() == 2 and t.shape[-1] != d) for t in others):
        raise ValueError("native pair sums: tensors of one dtype and one dimension D expected")


def chunk(spread: float, d: int) -> int:
    """Dimensions per partial product of (v_a + v_b): each factor lies in [exp(−spread), 2] (variances scaled
    by their per-dimension maximum), so n factors stay inside double's range while n·(spread + 1) < 700."""
    return max(1, min(d, int(600.0 / (spread + 1.0))))


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _fn(name: str, t: Tensor):
    return getattr(library(), f"{name}_{_SUFFIX[t.dtype]}")


def row_scores(x: Tensor, xv: Tensor, m: Tensor, v: Tensor, n: int) -> Tensor:
    """[A, K]: Σ_d [log(xv_a + v_b) + (x_a − m_b)²/(xv_a + v_b)] for rows x, xv [A, D] and components m, v [K, D]."""
    x, xv, m, v = (t.detach().contiguous() for t in (x, xv, m, v))
    _check(x, xv, m, v)
    (a, d), k = x.shape, m.shape[0]
    out = x.new_empty(a, k)
    _fn("row_scores", x)(_ptr(x), _ptr(xv), _ptr(m), _ptr(v), a, k, d, n, _ptr(out))
    return out


def row_grads(x: Tensor, xv: Tensor, m: Tensor, v: Tensor, w: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Σ_b w·r, Σ_b w·(inv − r²) per row and Σ_a of both per component, r = (x_a − m_b)·inv, inv = 1/(xv_a + v_b)."""
    x, xv, m, v, w = (t.detach().contiguous() for t in (x, xv, m, v, w))
    _check(x, xv, m, v)
    if w.dtype != x.dtype or w.shape != (x.shape[0], m.shape[0]):
        raise ValueError("native pair sums: weights of shape [rows, components] and the rows' dtype expected")
    (a, d), k = x.shape, m.shape[0]
    ra, ta, rb, tb = x.new_zeros(a, d), x.new_zeros(a, d), x.new_zeros(k, d), x.new_zeros(k, d)
    _fn("row_grads", x)(
        _ptr(x), _ptr(xv), _ptr(m), _ptr(v), _ptr(w), a, k, d, n, _ptr(ra), _ptr(ta), _ptr(rb), _ptr(tb)
    )
    return ra, ta, rb, tb


def pairs(m: Tensor, v: Tensor, lw: Tensor, shift: float, need_grad: bool, n: int):
    """(total, g_lw, g_r, g_t) of the symmetric pair sum Σ_{a,b} exp(lw_a + lw_b − ½ score_ab + shift), see the
    source; the gradient sums are zeros when need_grad is False."""
    m, v, lw = (t.detach().contiguous() for t in (m, v, lw))
    _check(m, v, lw)
    k, d = m.shape
    if lw.shape != (k,):
        raise ValueError("native pair sums: one log-weight per component expected")
    g_lw, g_r, g_t = m.new_zeros(k), m.new_zeros(k, d), m.new_zeros(k, d)
    total = _fn("pairs", m)(
        _ptr(m), _ptr(v), _ptr(lw), k, d, float(shift), int(need_grad), n, _ptr(g_lw), _ptr(g_r), _ptr(g_t)
    )
    return total, g_lw, g_r, g_t


if __name__ == "__main__":  # `python -m src.native` (make install runs it): build now, say where it is
    logging.basicConfig(format="%(message)s")
    lib = library()
    print(
        f"native mixture loops: {lib._name}" if lib else "native mixture loops: not built; the tiled torch code is used"
    )
