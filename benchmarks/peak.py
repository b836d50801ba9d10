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


def measure(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """(seconds, peak extra MiB) of one call of ``fn``."""
    import torch

    _trim()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
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
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    peak[0] = max(peak[0], _rss_mib())
    extra = torch.cuda.max_memory_allocated() / 2**20 - before if cuda else peak[0] - rss0
    return secs, extra
