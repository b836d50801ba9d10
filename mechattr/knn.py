"""Nearest neighbours of every vocabulary token in the token-embedding space.

Discretized path methods (DIG, UDIG) look for anchor words among the k nearest tokens of the
current word (Sanyal & Ren 2021). The graph costs O(vocab^2 d) to build, so it is built once per
embedding matrix in torch (chunked matmuls, no scikit-learn), kept in memory keyed by a hash of
the matrix, and stored on disk under ``cache_dir()/knn`` as safetensors. A file that cannot be
read back or does not match its key (truncated, overwritten) is rebuilt.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .errors import MethodError

FORMAT = "mechattr-knn-1"
_MEMORY: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
_LOCK = threading.Lock()
# Hashing a large W_E every call would cost more than the lookup: remember the hash of a tensor
# object while it is alive and unchanged (its in-place version counter is part of the memo).
# Keyed by id() with a weak reference to check identity (tensors cannot be dictionary keys).
_HASHES: dict[int, tuple["weakref.ref[Tensor]", int, str]] = {}
# How often each cache level answered; tests read this to check that a hit does not recompute.
stats: dict[str, int] = {"builds": 0, "memory_hits": 0, "disk_hits": 0, "disk_rebuilds": 0}


def knn_dir() -> Path:
    from .tl.loading import cache_dir

    return cache_dir() / "knn"


def embedding_key(W_E: Float[Tensor, "vocab d_model"]) -> str:
    """A content hash of an embedding matrix (its bytes, shape and dtype)."""
    memo = _HASHES.get(id(W_E))
    if memo is not None and memo[0]() is W_E and memo[1] == W_E._version:
        return memo[2]
    w = W_E.detach().to("cpu").contiguous()
    h = hashlib.sha256()
    h.update(f"{tuple(w.shape)}|{w.dtype}|".encode())
    h.update(w.view(torch.uint8).numpy().tobytes() if w.numel() else b"")
    key = h.hexdigest()[:32]
    try:
        ref = weakref.ref(W_E, lambda _r, i=id(W_E): _HASHES.pop(i, None))
        _HASHES[id(W_E)] = (ref, W_E._version, key)
    except TypeError:  # pragma: no cover - objects that cannot be weakly referenced
        pass
    return key


def build_knn(
    W_E: Float[Tensor, "vocab d_model"], k: int, chunk_mb: float = 256.0
) -> tuple[Int[Tensor, "vocab k"], Float[Tensor, "vocab k"]]:
    """Indices and Euclidean distances of each token's ``k`` nearest other tokens, nearest first.

    Squared distances come from ``|a|^2 + |b|^2 - 2 a.b`` one block of rows at a time, so memory
    stays at ``rows_per_chunk x vocab`` floats; a token is never its own neighbour."""
    vocab = int(W_E.shape[0])
    if not 1 <= k < vocab:
        raise MethodError(f"n_neighbors must lie in [1, {vocab - 1}] for a vocabulary of {vocab}, got {k}.")
    # float64 where cheap: ties and near-ties then order the same way as an exact computation.
    # float64 for small vocabularies (exact order of near-ties, cheap); float32 beyond, where a
    # float64 V x V product costs minutes on a CPU.
    dt = torch.float64 if vocab <= 8192 else torch.float32
    w = W_E.detach().to(dt)
    sq = (w * w).sum(-1)
    rows = max(1, int(chunk_mb * 2**20 // (vocab * w.element_size() * 2)))
    idx_out = torch.empty(vocab, k, dtype=torch.long, device=w.device)
    dist_out = torch.empty(vocab, k, dtype=torch.float32, device=w.device)
    for start in range(0, vocab, rows):
        stop = min(vocab, start + rows)
        d2 = torch.addmm(sq[None, :], w[start:stop], w.T, beta=1.0, alpha=-2.0)
        d2 += sq[start:stop, None]
        ar = torch.arange(start, stop, device=w.device)
        d2[ar - start, ar] = float("inf")
        vals, ids = torch.topk(d2, k, dim=-1, largest=False, sorted=True)
        idx_out[start:stop] = ids
        dist_out[start:stop] = vals.clamp_min(0).sqrt().float()
    return idx_out, dist_out


def _file(key: str, k: int) -> Path:
    return knn_dir() / f"{key}-k{k}.safetensors"


def _read(path: Path, key: str, k: int, vocab: int) -> tuple[Tensor, Tensor] | None:
    """The stored graph, or None when the file is missing, unreadable or not the one asked for."""
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            idx = f.get_tensor("indices")
            dist = f.get_tensor("distances")
    except Exception:
        return None
    ok = (
        meta.get("format") == FORMAT
        and meta.get("key") == key
        and tuple(idx.shape) == (vocab, k)
        and tuple(dist.shape) == (vocab, k)
        and idx.dtype == torch.long
        and (idx.numel() == 0 or (int(idx.min()) >= 0 and int(idx.max()) < vocab))
        and bool(torch.isfinite(dist).all())
    )
    return (idx, dist) if ok else None


def _write(path: Path, key: str, k: int, idx: Tensor, dist: Tensor) -> None:
    """Write under a temporary name in the same folder, then rename: readers never see half a file."""
    from safetensors.torch import save

    from ._io import atomic_write

    blob = save(
        {"indices": idx.cpu().contiguous(), "distances": dist.cpu().contiguous()},
        metadata={"format": FORMAT, "key": key, "k": str(k)},
    )
    atomic_write(path, blob)


def knn_graph(
    W_E: Float[Tensor, "vocab d_model"], k: int = 50, *, disk: bool = True
) -> tuple[Int[Tensor, "vocab k"], Float[Tensor, "vocab k"]]:
    """The k-nearest-neighbour graph of a vocabulary, from memory, disk, or built (in that order).

    A cached graph with more neighbours than asked serves a smaller ``k`` (neighbour lists are
    sorted, so its first ``k`` columns are the answer)."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise MethodError(f"n_neighbors must be an integer, got {k!r}.")
    vocab = int(W_E.shape[0])
    key = embedding_key(W_E)
    device = W_E.device
    with _LOCK:
        for (mk, mkk), (idx, dist) in _MEMORY.items():
            if mk == key and mkk >= k:
                stats["memory_hits"] += 1
                return idx[:, :k].to(device), dist[:, :k].to(device)
        path = _file(key, k)
        if disk:
            got = _read(path, key, k, vocab)
            if got is not None:
                stats["disk_hits"] += 1
                _MEMORY[(key, k)] = got
                return got[0].to(device), got[1].to(device)
            if path.exists():
                stats["disk_rebuilds"] += 1
        idx, dist = build_knn(W_E, k)
        stats["builds"] += 1
        idx, dist = idx.cpu(), dist.cpu()
        _MEMORY[(key, k)] = (idx, dist)
        if disk:
            try:
                _write(path, key, k, idx, dist)
            except OSError:
                pass  # a read-only cache folder only costs a rebuild next process
        return idx.to(device), dist.to(device)


def clear_memory_cache() -> None:
    """Forget the in-memory graphs (as a fresh process would); the disk cache stays."""
    with _LOCK:
        _MEMORY.clear()


def describe_cache() -> dict[str, Any]:
    return {"folder": str(knn_dir()), "in_memory": [f"{a}-k{b}" for a, b in sorted(_MEMORY)], **stats}
