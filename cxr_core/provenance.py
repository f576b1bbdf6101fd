"""Provenance for model cards: which code and which data produced a set of weights."""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from cxr_core import settings


def code_version() -> str:
    """The git commit of the project, or 'unknown' outside a checkout (a card must still be written)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=settings.ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    return sha256_file(Path(path))


def weights_sha256(path: Path | str) -> str | None:
    """SHA-256 of a weights file (cached per file state: the app asks on every page view), None when
    it is not there."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return _sha256_cached(str(p), st.st_size, st.st_mtime)


def shipped_weights_sha256(model: str) -> str | None:
    """SHA-256 of the weights the app runs for `model` (settings.WEIGHTS_DIR/<model>.pt)."""
    return weights_sha256(settings.WEIGHTS_DIR / f"{model}.pt")


def measured_on(result: Mapping[str, Any] | None, model: str) -> str | None:
    """Whether a measurement file (probes, heatmap sanity) was made on the weights the app now runs:
    'shipped weights', 'OTHER weights' (the figures describe weights that no longer ship), 'not
    recorded' (files from before results carried `weights_sha256`), or None when `model` has no shipped
    weights to compare with (an ablation). Why: a result file outlives the weights it measured when a
    new model ships, and a page must not present it as the shipped model's."""
    shipped = shipped_weights_sha256(model)
    if shipped is None:
        return None
    recorded = (result or {}).get("weights_sha256")
    if not recorded:
        return "not recorded"
    return "shipped weights" if recorded == shipped else "OTHER weights"


def cpu_model() -> str | None:
    """The CPU's model name (Linux), for cards and benchmarks: speeds differ 4x between our machines."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
