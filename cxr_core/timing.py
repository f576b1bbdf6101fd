"""One way to time things: wall and process-CPU seconds per call, and one summary of them.

The benchmark (`bench`), training's latency figure on the card (`classify.train`), the lung U-Net's
latency (`segment.val`) and the export benchmark all report times made here, so "p50" means the
same thing on every card. CPU time is kept beside wall time because these 2-core machines are often
busy with another job: wall time then mostly measures waiting for a core, CPU time much less so.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np


class Timings(list):
    """Wall-clock seconds per call, with the process CPU seconds (all threads) per call in `.cpu`."""

    cpu: list[float]


def time_each(fn: Callable[[Any], Any], items: Sequence[Any], warmup: int = 1,
              before: Callable[[], None] | None = None) -> Timings:
    """Call `fn(item)` for each item, timed; the first `warmup` items are called untimed first.

    `before` runs once after the warm-up (the benchmark re-applies its thread count there, because
    some loaders call `torch.set_num_threads`)."""
    for it in items[: max(0, warmup)]:
        fn(it)
    if before is not None:
        before()
    out = Timings()
    out.cpu = []
    for it in items:
        c0, t0 = time.process_time(), time.perf_counter()
        fn(it)
        out.append(time.perf_counter() - t0)
        out.cpu.append(time.process_time() - c0)
    return out


def stats(times_s: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean in ms (3 decimals), the count, and the CPU p50 when the times carry it."""
    ms = np.asarray(times_s, dtype=float) * 1000.0
    out = {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "n": int(ms.size),
    }
    cpu = getattr(times_s, "cpu", None)
    if cpu:
        out["cpu_p50_ms"] = round(float(np.percentile(np.asarray(cpu) * 1000.0, 50)), 3)
    return out


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages (2 decimals), None where the OS has none: recorded beside timings."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
