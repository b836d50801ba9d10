"""Peak extra memory and seconds of one call, the way every benchmark here measures them: the
process's resident set sampled every 2 ms on CPU (after a gc + malloc_trim so freed memory of earlier
calls does not hide this one's), torch.cuda.max_memory_allocated on a GPU."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from typing import Any, Callable


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def sample_rss(fn: Callable[[], Any]) -> tuple[float, float, float]:
    """(seconds, resident MiB before, peak resident MiB) of one call of ``fn``, the resident set
    sampled every 2 ms by a thread."""
    rss0 = _rss_mib()
    peak = [rss0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    fn()
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    return secs, rss0, max(peak[0], _rss_mib())


def measure(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """(seconds, peak extra MiB) of one call of ``fn``."""
    import torch

    _trim()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20

    def call() -> None:
        fn()
        if cuda:
            torch.cuda.synchronize()

    secs, rss0, peak = sample_rss(call)
    extra = torch.cuda.max_memory_allocated() / 2**20 - before if cuda else peak - rss0
    return secs, extra
