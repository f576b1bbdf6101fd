"""20 simultaneous user sessions on the Diagnose page (AppTest instances in threads).

Each session opens the app (one after another), then all 20 upload their own chest image and get
a prediction at the same moment (a barrier). Checked: zero
exceptions and zero error messages, every session gets a result, the classifier checkpoint and
the OOD backbone are loaded once for the whole process (not once per session), and the process
memory stays bounded. Per-session latencies (p50 / p95 / max) are printed and recorded as test
properties; they are reported, never asserted (speed belongs in `python -m cxr_core.bench`).

Runs against the real trained classifier the page picks by default (V-BreathNet, else the first
trained one): skipped until a weights/<model>.pt exists.
Set CXR_CONCURRENCY_SESSIONS to change the number of sessions (default 20).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest

from cxr_core import settings

# An exception in any session's script thread fails the test (not just a warning).
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
N_SESSIONS = int(os.environ.get("CXR_CONCURRENCY_SESSIONS", "20"))
OVERALL_TIMEOUT_S = 900  # a hang fails the test instead of blocking the suite
MEMORY_GROWTH_LIMIT_MB = 1500  # 20 sessions x (a few MB of images and results) + one set of models

def _trained() -> list[str]:
    return [n for n in settings.CLASSIFIERS if (settings.WEIGHTS_DIR / f"{n}.pt").is_file()]


requires_trained = pytest.mark.skipif(
    not _trained(),
    reason=f"no trained classifier yet (no <model>.pt in {settings.WEIGHTS_DIR}; "
    "train one with python -m cxr_core.train --model vbreathnet)",
)


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # psutil missing
        return None


def _uploads(n: int) -> list[tuple[str, bytes]]:
    """Distinct real cxr3 test images when the shared data is present, else synthetic phantoms."""
    from app_fixtures import chest_png_bytes
    from conftest import cxr3_rows

    rows = cxr3_rows("test", n, seed=21)
    if len(rows) == n:
        return [(Path(r["path"]).name, (settings.CXR3_DIR / r["path"]).read_bytes()) for r in rows]
    return [(f"patient_{i}.png", chest_png_bytes(256, seed=100 + i)) for i in range(n)]


_OPEN_LOCK = threading.Lock()


def _session(i: int, upload: tuple[str, bytes], results: list, lock: threading.Lock,
             start: threading.Barrier) -> None:
    from streamlit.testing.v1 import AppTest

    t0 = time.perf_counter()
    # Sessions open the app one after another (AppTest's page set-up uses process-global state),
    # then all upload and predict at the same moment.
    with _OPEN_LOCK:
        at = AppTest.from_file(APP, default_timeout=OVERALL_TIMEOUT_S)
        at.run()
    start.wait(timeout=OVERALL_TIMEOUT_S)
    t1 = time.perf_counter()
    name, data = upload
    mime = "image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "image/png"
    at.file_uploader(key="dx_upload").set_value([(name, data, mime)]).run()
    t2 = time.perf_counter()
    entry = {
        "session": i,
        "exceptions": [str(e.value) for e in at.exception],
        # errors other than a quality verdict ("Not suitable for analysis" is a result, not a failure)
        "errors": [str(e.value) for e in at.error if "Not suitable for analysis" not in str(e.value)],
        "has_result": bool([m for m in at.metric if m.label == "Suggested class"])
        or any("the model abstains" in str(w.value) for w in at.warning),
        "has_image": bool(at.image),
        "open_s": t1 - t0,
        "upload_s": t2 - t1,
    }
    with lock:
        results.append(entry)


@pytest.fixture
def shared_runtime(monkeypatch):
    """Let AppTest sessions run in parallel threads the way sessions share one server.

    AppTest was written for one session at a time: each run installs its own mock `Runtime`
    singleton and sets it back to None when it ends, while other sessions' scripts are still
    running (they then fail with "Runtime hasn't been created!"). A real server has one Runtime
    for all sessions, so here a finished run's None falls back to the last runtime installed;
    and the `global.appTest` option that each run patches and restores is set for the whole test.
    Likewise a server compiles each page once, in one script cache behind one lock, while every
    AppTest run brings an empty cache of its own: 20 threads then compile the same page at once,
    and CPython 3.11's `ast.parse` is not safe for that ("AST constructor recursion depth
    mismatch"). So all sessions share one cache here, as they would on a server.
    """
    from streamlit import config
    from streamlit.runtime import Runtime
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    one_cache = ScriptCache()
    get_bytecode = ScriptCache.get_bytecode
    monkeypatch.setattr(ScriptCache, "get_bytecode", lambda self, path: get_bytecode(one_cache, path))

    last: dict[str, object] = {}
    original = Runtime.instance.__func__

    def instance(cls):
        current = cls._instance
        if current is not None:
            last["runtime"] = current
            return current
        if "runtime" in last:
            return last["runtime"]
        return original(cls)

    monkeypatch.setattr(Runtime, "instance", classmethod(instance))
    old = config.get_option("global.appTest")
    config.set_option("global.appTest", True)
    yield
    config.set_option("global.appTest", old)


@requires_trained
def test_twenty_simultaneous_sessions(monkeypatch, record_property, shared_runtime):
    import streamlit as st
    import torch

    from cxr_core import models, ood

    torch.set_num_threads(1)
    loads: list[str] = []
    real_load = models.load_checkpoint

    def counting_load(path):
        loads.append(str(path))
        return real_load(path)

    monkeypatch.setattr(models, "load_checkpoint", counting_load)
    models.load_classifier.cache_clear()
    ood._backbone_cached.cache_clear()
    st.cache_resource.clear()

    uploads = _uploads(N_SESSIONS)  # distinct images, one per session
    rss0 = _rss_mb()
    results: list[dict] = []
    lock = threading.Lock()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=N_SESSIONS) as pool:
        barrier = threading.Barrier(N_SESSIONS)
        futures = [pool.submit(_session, i, uploads[i], results, lock, barrier) for i in range(N_SESSIONS)]
        done, pending = wait(futures, timeout=OVERALL_TIMEOUT_S)
        assert not pending, f"{len(pending)} sessions did not finish within {OVERALL_TIMEOUT_S} s"
        for f in done:
            f.result()  # re-raise anything a session thread raised
    wall = time.perf_counter() - start
    rss1 = _rss_mb()

    try:
        assert len(results) == N_SESSIONS
        assert [r for r in results if r["exceptions"]] == []
        assert [r for r in results if r["errors"]] == []
        assert all(r["has_image"] and r["has_result"] for r in results), results
        # models loaded once for the whole process, not once per session
        assert len(loads) == 1, loads
        assert models.load_classifier.cache_info().currsize == 1
        if ood.available():
            assert ood._backbone_cached.cache_info().misses == 1
        if rss0 is not None and rss1 is not None:
            assert rss1 - rss0 < MEMORY_GROWTH_LIMIT_MB, f"memory grew by {rss1 - rss0:.0f} MB"
    finally:
        lat = np.array([r["upload_s"] for r in results]) if results else np.zeros(1)
        summary = {
            "sessions": len(results),
            "wall_s": round(wall, 2),
            "upload_p50_s": round(float(np.percentile(lat, 50)), 2),
            "upload_p95_s": round(float(np.percentile(lat, 95)), 2),
            "upload_max_s": round(float(lat.max()), 2),
            "rss_growth_mb": None if rss0 is None or rss1 is None else round(rss1 - rss0),
            "checkpoint_loads": len(loads),
            "torch_threads": torch.get_num_threads(),
        }
        for k, v in summary.items():
            record_property(k, v)
        print(f"\nconcurrency: {summary}")
        models.load_classifier.cache_clear()
        st.cache_resource.clear()
