"""Provenance for model cards: which code and which data produced a set of weights."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

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


def cpu_model() -> str | None:
    """The CPU's model name (Linux), for cards and benchmarks: speeds differ 4x between our machines."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
