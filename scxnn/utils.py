"""Small shared helpers: the one seeding function and the RNG states of a checkpoint, atomic writes,
hashing, logging."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

log = logging.getLogger("scxnn")


def seed_everything(seed: int, deterministic: bool = True) -> np.random.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer; the only seeding function.

    With ``deterministic`` torch is asked for deterministic kernels (``warn_only`` so that an op with
    no deterministic implementation warns instead of failing a long run). Returns a NumPy Generator
    for code that prefers an explicit RNG over the global one.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # the config and data layers don't need torch
        return np.random.default_rng(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        # cuBLAS needs this set before its first use for deterministic GEMMs.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return np.random.default_rng(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain ints / lists / tensors (weights_only-loadable),
    for a checkpoint; :func:`set_rng_state` puts them back."""
    import torch

    py = random.getstate()
    np_state = np.random.get_state()
    st: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore the RNG states :func:`rng_state` took."""
    import torch

    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


_TMP_SUFFIX = ".tmp"
# atomic_open's temporary names: "." + the final name + "." + mkstemp's random letters + ".tmp".
_STALE_TMP = re.compile(r"^\..+\.[a-z0-9_]+" + re.escape(_TMP_SUFFIX) + "$")


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and ``os.replace`` it into place.

    On any exception the temporary file is removed and an existing ``path`` is left untouched, so a
    crash or a kill never leaves a half-written artifact under its final name. The file gets the
    permissions a plain ``open`` would give it (0666 less the umask), not ``mkstemp``'s 0600: a report
    written on a shared server must be readable by the colleagues the umask allows.
    """
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not supported")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files :func:`atomic_open` left in ``folder`` (not its sub-folders) when
    its process was killed mid-write (``kill -9`` skips the cleanup); returns how many. Call it only
    where no other process writes into ``folder`` at the same time, e.g. when resuming a step."""
    folder = Path(folder)
    stale = [p for p in folder.iterdir() if _STALE_TMP.match(p.name) and p.is_file() and not p.is_symlink()] if folder.is_dir() else []
    size = 0
    for p in stale:
        size += p.stat().st_size
        p.unlink(missing_ok=True)
    if stale:
        log.info("%s: removed %d temporary file(s) (%.1f MB) left by an interrupted write", folder, len(stale), size / 1e6)
    return len(stale)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks: the one file hash (image hashes for the
    split check, checkpoint and artifact digests)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str | bytes, n: int | None = None) -> str:
    """Hex SHA-256 of a string (UTF-8) or bytes, cut to ``n`` characters: the one text hash behind
    de-identified ids, fingerprints and cache keys."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:n]


def setup_logging(level: int | str = logging.INFO) -> None:
    """Console logging for the CLI and notebooks; idempotent."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``path`` for work that parallel Make jobs could
    otherwise both start, e.g. building one shared PNG cache; released when the block ends or the
    process dies."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
