#!/usr/bin/env python
"""The running server under load (issue #20): real `streamlit run`, real headless Chromium sessions.

Phases (each optional except the first):

* concurrent sessions (`--sessions K [K ...]`): K browsers, one thread and one chromedriver each,
  open the Diagnose page, then all upload a different film at once and read the outcome from the
  page. Every outcome must equal what the library computes in this process
  (`cxr_core.pipeline.analyse(path, classifier=load_classifier(name))`): the "Suggested class" metric
  or the abstention warning, the calibrated confidence string, the quality verdict and the three
  probabilities of the bar chart (read from the plotly figure, 1e-4). Mismatches, tracebacks, the
  catch-all error and time-outs count as errors. Time to result = upload -> outcome visible.
* soak (`--soak N --per-session M`): N uploads in sequence, a new browser every M uploads; server RSS
  (children included), threads, open files and fds at the start, after warm-up (the first ~10 % of
  the uploads) and at the end. Pass: end RSS within 15 % of after-warm-up; threads and open files
  not above their after-warm-up count.
* kill and restart (`--kill-restart`): a server traced with strace (when installed) gets an upload,
  is SIGKILLed 0.15 s into the page run for it (Streamlit's script thread is still alive and the
  page shows no result yet), is restarted on the same port, and a fresh session must get the
  library's answer. Then: what changed in the repository's file listing (tracked +
  untracked + ignored entries) and under $TMPDIR, and which files the two server processes opened
  for writing, created, renamed or removed (from strace). The app is meant to write nothing.
* fuzz (`--fuzz`): every file of the bad-input corpus (tests/app/test_fuzz.py::corpus) uploaded through
  the browser; each must show a specific message (a refusal naming the file, or a quality verdict
  with a result or an abstention), no traceback and no catch-all error; refusals must carry the
  library's own message, decoded files the library's result; a real film after every 10 files.

Traffic stays on 127.0.0.1; everything is bounded by `--timeout-s`. Films: the cxr3 test split
(`cxr_core.data.sample_balanced`, seeded) when ../shared is there, else the tests' chest phantom.
Weights: the repository's weights/ (the shipped models) or, with `--fixture-weights`, the tests'
randomly initialised V-BreathNet in a tmp dir. Exit status: 0 every check passed, 1 a check failed
or the run timed out, 2 it could not run (no Chromium / chromedriver / selenium, no model).

    python scripts/load_test.py --sessions 4 8 --soak 300 --kill-restart --fuzz --out docs/load.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # browser_support, app_fixtures, conftest (the phantom)
sys.path.insert(0, str(ROOT / "tests" / "app"))  # test_fuzz (the bad-input corpus)

import browser_support as bs  # noqa: E402  (imports no cxr_core: settings read the env var set in main)

PROB_TOL = 1e-4
KILL_AFTER_RUN_START_S = 0.15  # kill-restart: SIGKILL this long after the page's run for the upload began
TTL_S = 120  # streamlit's server.disconnectedSessionTTL default (not set in .streamlit/config.toml)
MAX_LISTED = 25  # paths shown per change list in the JSON
VERDICT_TEXT = {"pass": "Pass", "warn": "Check the image", "fail": "Not suitable for analysis"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/load_test.py",
        description="Load, soak, kill-restart and browser fuzz test of the running Streamlit app "
        "(real `streamlit run` on 127.0.0.1, real headless Chromium sessions).",
        epilog="Full run (idle machine): python scripts/load_test.py --sessions 4 8 --soak 300 "
        "--kill-restart --fuzz --out docs/load.json",
    )
    p.add_argument("--sessions", type=int, nargs="+", default=[2], metavar="K",
                   help="concurrent browser sessions, one round per K (default: 2)")
    p.add_argument("--soak", type=int, default=0, metavar="N", help="uploads in sequence for the soak (0: no soak)")
    p.add_argument("--per-session", type=int, default=10, metavar="M",
                   help="soak: a new browser session every M uploads (default: 10)")
    p.add_argument("--no-ttl-wait", action="store_true",
                   help="soak: skip the last sample, taken once the server may have dropped the closed sessions "
                   "(its server.disconnectedSessionTTL, 120 s, + 15 s after the last one closed, then one "
                   "empty session opened and closed: expired sessions are only dropped when another is stored)")
    p.add_argument("--kill-restart", action="store_true", help="SIGKILL the server mid-analysis and restart it")
    p.add_argument("--fuzz", action="store_true", help="upload the bad-input corpus through the browser")
    p.add_argument("--fixture-weights", action="store_true",
                   help="use the tests' fixture V-BreathNet (tmp dir) instead of the repository's weights/")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="CXR_TORCH_THREADS for the server and this process (default: the app's setting)")
    p.add_argument("--seed", type=int, default=None, help="film sample seed (default: settings.SEED)")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="overall time limit in seconds (default: 3600)")
    p.add_argument("--upload-timeout-s", type=float, default=240.0,
                   help="longest wait for one upload's outcome (default: 240)")
    p.add_argument("--port", type=int, default=None, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the tmp work dir (logs, strace output)")
    a = p.parse_args(argv)
    if any(k < 1 for k in a.sessions) or a.soak < 0 or a.per_session < 1 or a.timeout_s <= 0:
        p.error("--sessions must be >= 1, --soak >= 0, --per-session >= 1, --timeout-s > 0")
    return a


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.hit = False

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            self.hit = True
            raise TimeoutError(f"overall --timeout-s reached before {what}")

    def cap(self, seconds: float) -> float:
        return max(1.0, min(seconds, self.left()))


def threads_no_growth(samples: list[int], last: int) -> tuple[bool, str]:
    """(pass, rule in words): `last` at most the largest count in the first half of the idle
    `samples`, and the second half's median at most the first half's (no trend up)."""
    import statistics

    half = max(1, len(samples) // 2)
    first, second = samples[:half], samples[half:] or samples[:half]
    ok = last <= max(first) and statistics.median(second) <= statistics.median(first)
    return ok, (f"last {last} <= max of the first half {max(first)}; median second half "
                f"{statistics.median(second)} <= median first half {statistics.median(first)}")


def percentiles(times: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not times:
        return {"p50_s": None, "p95_s": None, "max_s": None, "n": 0}
    a = np.asarray(times, float)
    return {"p50_s": round(float(np.percentile(a, 50)), 3), "p95_s": round(float(np.percentile(a, 95)), 3),
            "max_s": round(float(a.max()), 3), "n": int(a.size)}


# --- what the library says --------------------------------------------------------------------------------


class Library:
    """The expected outcome of one file, computed in this process the way the page computes it."""

    def __init__(self, model: str):
        from cxr_core.models import load_classifier

        self.model = model
        self.clf = load_classifier(model)
        self._memo: dict[str, dict[str, Any]] = {}

    def expected(self, source: Path | bytes, name: str | None = None) -> dict[str, Any]:
        from cxr_core import dashboard, pipeline, settings

        key = str(source) if isinstance(source, Path) else f"{name}:{hash(source)}"
        if key in self._memo:
            return self._memo[key]
        try:
            a = pipeline.analyse(source, classifier=self.clf, filename=name)
        except pipeline.ImageLoadError as exc:
            out = {"kind": "refused", "message": str(exc)}
        else:
            p = a.prediction
            out = {"kind": "abstained" if p.abstained else "result", "label": p.label,
                   "confidence": dashboard.format_probability(p.confidence),
                   "verdict": VERDICT_TEXT.get(str(a.quality.verdict).lower()) if a.quality else None,
                   "probabilities": {settings.CLASS_LABELS[c]: float(v) for c, v in p.probabilities.items()}}
        self._memo[key] = out
        return out


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.replace("*", "").replace("\\", "")).strip()


def compare(shown: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Differences between what the page showed and what the library computed ([] = the same)."""
    if shown.get("traceback"):
        return ["a traceback is shown"]
    if shown["kind"] in ("error", "timeout"):
        return [f"{shown['kind']}: {str(shown.get('message', ''))[:160]}"]
    if shown["kind"] != want["kind"]:
        return [f"page shows {shown['kind']}, library says {want['kind']}"]
    if want["kind"] == "refused":
        return [] if _norm(shown["message"]).startswith(_norm(want["message"])[:60]) else [
            f"refusal {shown['message'][:80]!r} != library {want['message'][:80]!r}"]
    diffs = []
    if want["kind"] == "result":
        if shown.get("label") != want["label"]:
            diffs.append(f"class {shown.get('label')!r} != {want['label']!r}")
        if shown.get("confidence") != want["confidence"]:
            diffs.append(f"confidence {shown.get('confidence')!r} != {want['confidence']!r}")
    if shown.get("verdict") != want["verdict"]:
        diffs.append(f"quality {shown.get('verdict')!r} != {want['verdict']!r}")
    probs = shown.get("probabilities")
    if not probs:
        diffs.append("no probability chart")
    else:
        for label, v in want["probabilities"].items():
            got = probs.get(label)
            if not isinstance(got, (int, float)) or not math.isfinite(got) or abs(got - v) > PROB_TOL:
                diffs.append(f"P({label}) {got} != {v:.6f}")
    return diffs


# --- films ---------------------------------------------------------------------------------------------------


def films(n: int, seed: int, work: Path) -> tuple[str, list[Path]]:
    """(source, n distinct film paths): the cxr3 test split, else the tests' phantom as PNGs."""
    from cxr_core import settings

    if settings.CXR3_MANIFEST.is_file():
        from cxr_core.data import sample_balanced

        picked = [p for p, _ in sample_balanced(n, seed=seed, split="test")]
        if picked:
            return "cxr3 test split (sample_balanced, seed %d)" % seed, picked
    from app_fixtures import chest_png_bytes

    d = work / "films"
    d.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        f = d / f"phantom_{i:04d}.png"
        f.write_bytes(chest_png_bytes(512, seed=seed + i))
        out.append(f)
    return "chest phantom (tests/conftest.chest_phantom, 512 px)", out


# --- one browser session ---------------------------------------------------------------------------------------


class Session:
    _n = 0
    _lock = threading.Lock()

    def __init__(self, work: Path, url: str, timeout: float):
        with Session._lock:
            Session._n += 1
            self.id = Session._n
        self.profile = work / "chrome" / f"profile-{self.id}"
        self.driver = bs.make_driver(self.profile, tmp_dir=work / "chrome" / "tmp")
        self.timeout = timeout
        try:
            bs.open_diagnose(self.driver, url, timeout)
        except BaseException:
            self.close()
            raise

    def upload(self, path: Path) -> dict[str, Any]:
        out = bs.upload_and_read(self.driver, path, timeout=self.timeout)
        if out["kind"] != "timeout":
            bs.clear_uploads(self.driver, timeout=self.timeout)
        return out

    def close(self) -> None:
        bs.quit_driver(self.driver, self.profile)


class Monitor:
    """Samples the server's RSS / threads / fds every `every` seconds; keeps the peaks."""

    def __init__(self, pid: int, every: float = 0.5):
        self.pid, self.every = pid, every
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                s = bs.process_stats(self.pid)
            except Exception:
                return
            for k in ("rss_mb", "threads", "open_files", "fds"):
                self.peak[k] = max(self.peak.get(k, 0), s[k])
            self._stop.wait(self.every)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._t.join(5)
        return dict(self.peak)


class Run:
    def __init__(self, args: argparse.Namespace, work: Path, weights: Path, lib: Library, deadline: Deadline):
        self.args, self.work, self.weights, self.lib, self.deadline = args, work, weights, lib, deadline
        self.errors: list[dict[str, Any]] = []

    def error(self, phase: str, what: str, **where: Any) -> None:
        self.errors.append({"phase": phase, **where, "what": what})

    def check(self, phase: str, shown: dict[str, Any], want: dict[str, Any], **where: Any) -> bool:
        diffs = compare(shown, want)
        for d in diffs:
            self.error(phase, d, **where)
        return not diffs

    def server(self, name: str, port: int | None = None, trace: bool = False) -> bs.Server:
        return bs.Server(self.weights, port=port, log_path=self.work / f"{name}.log",
                         torch_threads=self.args.torch_threads,
                         trace_to=self.work / f"{name}.strace" if trace and bs.STRACE else None,
                         timeout=self.deadline.cap(180))

    def session(self, url: str) -> Session:
        return Session(self.work, url, self.deadline.cap(self.args.upload_timeout_s))

    # --- the first upload: the server loads its models (not part of the timed rounds) ---------------

    def first_upload(self, srv: bs.Server, film: Path) -> dict[str, Any]:
        self.deadline.check("the first upload")
        s = self.session(srv.url)
        try:
            shown = s.upload(film)
        finally:
            s.close()
        ok = self.check("first upload", shown, self.lib.expected(film), film=film.name)
        return {"film": film.name, "kind": shown["kind"], "seconds": shown.get("seconds"), "matched_library": ok,
                "note": "includes loading the classifier (and the not-a-CXR features) on the server",
                "server_after": bs.process_stats(srv.pid)}

    # --- K concurrent sessions ---------------------------------------------------------------------------------

    def concurrent(self, srv: bs.Server, k: int, pool: list[Path]) -> dict[str, Any]:
        self.deadline.check(f"the {k}-session round")
        idle = bs.process_stats(srv.pid)
        ready = threading.Barrier(k, timeout=self.deadline.cap(600))
        results: list[dict[str, Any] | None] = [None] * k

        def one(i: int) -> None:
            s = None
            film = pool[i % len(pool)]
            try:
                s = self.session(srv.url)
                ready.wait()
                shown = s.upload(film)
                results[i] = {"session": i, "film": film.name, **shown}
            except Exception as exc:  # a broken session is an error of the run, not a crash of the script
                try:
                    ready.abort()
                except Exception:
                    pass
                results[i] = {"session": i, "film": film.name, "kind": "error",
                              "message": f"{type(exc).__name__}: {exc}"[:300], "seconds": None}
            finally:
                if s is not None:
                    s.close()

        mon = Monitor(srv.pid)
        with ThreadPoolExecutor(max_workers=k) as ex:
            list(ex.map(one, range(k)))
        peak = mon.stop()
        time.sleep(2)
        after = bs.process_stats(srv.pid)
        ok = 0
        for i, r in enumerate(results):
            if self.check("sessions", r, self.lib.expected(pool[i % len(pool)]), k=k, session=i, film=r["film"]):
                ok += 1
        times = [r["seconds"] for r in results if r.get("seconds") is not None]
        return {"sessions": k, "matched_library": ok, "errors": k - ok, **percentiles(times),
                "times_s": [r.get("seconds") for r in results],
                "outcomes": [{"film": r["film"], "kind": r["kind"], "label": r.get("label"),
                              "confidence": r.get("confidence")} for r in results],
                "server_idle_before": idle, "server_peak": peak, "server_after": after}

    # --- soak ---------------------------------------------------------------------------------

    def soak(self, srv: bs.Server, n: int, m: int, pool: list[Path]) -> dict[str, Any]:
        """N uploads in sequence, a new session every m. The server is sampled idle with no browser
        open (settled 3 s): at the start and after every session closed; "after warm-up" is the first
        of those past ~10 % of the uploads, "end" the last; when no boundary falls between warm-up and
        the end (m >= N), the samples after warm-up and at the end are taken with the session open."""
        def settled() -> dict[str, Any]:
            time.sleep(3)
            return bs.process_stats(srv.pid)

        warm_at = max(1, math.ceil(0.1 * n))
        boundary = math.ceil(warm_at / m) * m
        at_boundary = boundary < n
        start = settled()
        warm = end = None
        series, times, idle = [], [], []
        ok = done = opened = 0
        s = None
        try:
            for i in range(n):
                self.deadline.check(f"soak upload {i + 1}")
                if s is None:
                    s = self.session(srv.url)
                    opened += 1
                film = pool[i % len(pool)]
                shown = s.upload(film)
                done += 1
                if shown.get("seconds") is not None:
                    times.append(shown["seconds"])
                if self.check("soak", shown, self.lib.expected(film), upload=i + 1, film=film.name):
                    ok += 1
                series.append(bs.process_stats(srv.pid)["rss_mb"])
                if not at_boundary and i + 1 == warm_at:
                    warm = settled()
                if not at_boundary and i + 1 == n:
                    end = settled()
                if (i + 1) % m == 0 or i + 1 == n or shown["kind"] == "timeout":  # (a timed-out session is dropped)
                    s.close()
                    s = None
                    if at_boundary:
                        idle.append({"uploads": i + 1, **settled()})
                        if i + 1 == boundary:
                            warm = idle[-1]
                        if i + 1 == n:
                            end = idle[-1]
        finally:
            if s is not None:
                s.close()
        after_ttl = None
        if not self.args.no_ttl_wait and self.deadline.left() > TTL_S + 120:
            # Streamlit keeps a closed session (its session_state: the uploads' analyses) for a
            # reconnect, TTL_S seconds, in a TTLCache that drops expired entries only when another
            # session is stored: wait, then open and close one empty session, then sample.
            time.sleep(TTL_S + 15)
            self.session(srv.url).close()
            after_ttl = settled()
        warm_at = boundary if at_boundary else warm_at
        out: dict[str, Any] = {"uploads": n, "done": done, "per_session": m, "sessions": opened,
                               "matched_library": ok, "warmup_uploads": warm_at, **percentiles(times),
                               "server_start": start, "server_after_warmup": warm, "server_end": end,
                               "samples": "idle, no session open" if at_boundary else "idle, one session open",
                               "server_after_session_ttl": after_ttl,
                               "server_idle_after_each_session": idle,
                               "rss_series_mb": series}
        if warm and end:
            # Threads and files are compared once the kept sessions are gone when that sample was taken:
            # right after the last session closed, each session Streamlit keeps for a reconnect still
            # holds a thread and a few fds (released with it, see the sample after the TTL).
            last = after_ttl or end
            out["threads_files_compared"] = "after_warmup vs " + ("after_session_ttl" if after_ttl else "end")
            out["rss_growth"] = round(end["rss_mb"] / warm["rss_mb"] - 1, 4)
            out["rss_pass"] = end["rss_mb"] <= 1.15 * warm["rss_mb"]
            # Threads: the idle server's count moves by a couple as Streamlit's per-session and
            # websocket threads end asynchronously (16-18 across the 30 sessions of the 2026-12-04 run),
            # so one sample against one sample reads noise as growth. Growth is a trend: the last
            # sample stays within the range of the first half of the post-warm-up samples, and the
            # second half's median is not above the first half's.
            out["threads_pass"], out["threads_rule"] = threads_no_growth(
                [x["threads"] for x in idle if x["uploads"] >= warm_at] or [warm["threads"]], last["threads"])
            out["open_files_pass"] = last["open_files"] <= warm["open_files"]
            out["fds_grew"] = last["fds"] > warm["fds"]
            out["pass"] = out["rss_pass"] and out["threads_pass"] and out["open_files_pass"]
            for key, label in (("rss_pass", "RSS grew more than 15 % after warm-up"),
                               ("threads_pass", "thread count grew"), ("open_files_pass", "open-file count grew")):
                if not out[key]:
                    self.error("soak", label, after_warmup=warm, end=end if key == "rss_pass" else last)
        else:
            out["pass"] = False
        return out

    # --- fuzz ---------------------------------------------------------------------------------

    def fuzz(self, srv: bs.Server, valid: Path) -> dict[str, Any]:
        from test_fuzz import corpus

        cases = corpus()
        d = self.work / "fuzz"
        results = []
        s = self.session(srv.url)
        valid_ok = valid_n = 0
        try:
            for i, case in enumerate(cases):
                self.deadline.check(f"fuzz case {case.id}")
                f = d / f"{i:03d}_{case.id}" / case.name
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(case.data)
                shown = s.upload(f)
                want = self.lib.expected(case.data, case.name)
                diffs = compare(shown, want)
                kind = shown["kind"]
                specific = kind in ("refused", "result", "abstained") and not shown.get("traceback")
                if kind == "refused":
                    message = shown["message"]
                    specific = specific and len(message) > 20
                    as_expected = case.expect in ("refused", "any") and (
                        not case.pattern or re.search(case.pattern, message, re.I) is not None)
                elif kind in ("result", "abstained"):
                    verdict = shown.get("verdict")
                    outcome = f"{shown.get('label')} {shown.get('confidence')}" if kind == "result" else "abstained"
                    message = f"{outcome} | {shown.get('quality') or ''}"
                    specific = specific and verdict is not None
                    as_expected = case.expect in ("accepted", "not_cxr", "any")
                else:
                    message, as_expected = str(shown.get("message", ""))[:200], False
                if not specific:
                    self.error("fuzz", f"no specific message ({kind})", case=case.id)
                if not as_expected:
                    self.error("fuzz", f"{kind} but the corpus expects {case.expect} ({case.pattern})", case=case.id)
                for diff in diffs:
                    self.error("fuzz", diff, case=case.id)
                results.append({"case": case.id, "file": case.name, "bytes": len(case.data), "expect": case.expect,
                                "kind": kind, "message": _norm(message)[:160], "specific": specific,
                                "as_expected": as_expected, "matches_library": not diffs,
                                "seconds": shown.get("seconds")})
                if shown["kind"] == "timeout":
                    s.close()
                    s = self.session(srv.url)
                if i % 10 == 9 or i == len(cases) - 1:  # the page keeps working for a real film
                    valid_n += 1
                    if self.check("fuzz", s.upload(valid), self.lib.expected(valid), case=f"valid after {case.id}"):
                        valid_ok += 1
        finally:
            s.close()
        kinds: dict[str, int] = {}
        for r in results:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        return {"cases": len(results), "corpus": "tests/app/test_fuzz.py::corpus()", "kinds": kinds,
                "specific": sum(r["specific"] for r in results), "as_expected": sum(r["as_expected"] for r in results),
                "matches_library": sum(r["matches_library"] for r in results),
                "valid_uploads": valid_n, "valid_matched_library": valid_ok, "results": results}

    # --- kill and restart ---------------------------------------------------------------------------------

    def kill_restart(self, pool: list[Path]) -> dict[str, Any]:
        import psutil

        self.deadline.check("kill-restart")
        port = self.args.port or bs.free_port()
        before = {"repo": repo_listing(), "tmp": tmp_listing(self.work)}
        out: dict[str, Any] = {"port": port, "traced": bool(bs.STRACE)}
        srv1 = self.server("killed", port=port, trace=True)
        s1 = s2 = srv2 = None
        try:
            s1 = self.session(srv1.url)
            proc = psutil.Process(srv1.pid)
            for attempt, film in enumerate(pool[:3]):
                time.sleep(1.0)  # the page's own run is over: the server is idle
                base, cpu0 = proc.num_threads(), sum(proc.cpu_times()[:2])
                t0 = bs.send_file(s1.driver, film)
                started = False
                end = time.monotonic() + self.deadline.cap(60)
                while time.monotonic() < end and not started:
                    started = proc.num_threads() > base  # Streamlit runs the page in a new thread
                    time.sleep(0.005)
                if started:
                    time.sleep(KILL_AFTER_RUN_START_S)  # into decode, quality gate and classifier
                    still = proc.num_threads() > base
                    state = bs.page_state(s1.driver)
                    shown = bs.result_of(state, film.name) is not None
                    if still and not shown:
                        cpu = sum(proc.cpu_times()[:2]) - cpu0
                        srv1.kill()
                        out |= {"killed_after_s": round(time.perf_counter() - t0, 3), "film": film.name,
                                "attempts": attempt + 1, "server_run_in_progress_at_kill": True,
                                "server_cpu_s_since_upload": round(cpu, 3),
                                "page_running_at_kill": bool(state["running"]),
                                "result_shown_before_kill": False, "signal": "SIGKILL"}
                        break
                bs.clear_uploads(s1.driver, self.deadline.cap(120))  # too late (or no run): the next film
            else:
                out |= {"server_run_in_progress_at_kill": False, "result_shown_before_kill": None}
                srv1.kill()
            out["killed_exit_code"] = srv1.proc.returncode  # strace exits with its tracee's status
            out["port_free_after_kill"] = not port_open(port)
            t0 = time.perf_counter()
            srv2 = self.server("restarted", port=port, trace=True)
            out["restart_s"] = round(time.perf_counter() - t0, 2)
            out["same_port"] = srv2.port == port
            # the session that was open during the kill: does the page come back by itself?
            end = time.monotonic() + self.deadline.cap(45)
            back = False
            while time.monotonic() < end and not back:
                try:
                    back = bs.READY_TEXT in bs.page_state(s1.driver)["body"]
                except Exception:
                    break
                time.sleep(0.5)
            out["old_session_reconnected"] = back
            s1.close()
            s1 = None
            s2 = self.session(srv2.url)
            film = pool[-1]
            shown = s2.upload(film)
            out["fresh_session"] = {"film": film.name, "kind": shown["kind"], "label": shown.get("label"),
                                    "confidence": shown.get("confidence"), "seconds": shown.get("seconds")}
            out["fresh_session_ok"] = self.check("kill-restart", shown, self.lib.expected(film), film=film.name)
        finally:
            for x in (s1, s2):
                if x is not None:
                    x.close()
            if srv2 is not None:
                srv2.stop()
            srv1.stop()
        time.sleep(1)
        after = {"repo": repo_listing(), "tmp": tmp_listing(self.work)}
        out["repo_changes"] = listing_diff(before["repo"], after["repo"])
        out["tmp_changes"] = listing_diff(before["tmp"], after["tmp"])
        if bs.STRACE:
            writes = []
            for name in ("killed", "restarted"):
                writes += strace_writes(self.work / f"{name}.strace")
            out["server_writes"] = classify_writes(writes, self.work)
            out["nothing_written"] = not (out["server_writes"]["repo"] or out["server_writes"]["tmp"])
            changed = out["repo_changes"]["n"] + out["tmp_changes"]["n"]
            if changed and out["nothing_written"]:
                out["note"] = ("the listings changed, but strace shows the servers wrote none of those paths: "
                               "other processes on this machine did")
        else:
            out["nothing_written"] = not (out["repo_changes"]["n"] or out["tmp_changes"]["n"])
        if not out["nothing_written"]:
            self.error("kill-restart", "the server wrote files", writes=out.get("server_writes"))
        if not out.get("server_run_in_progress_at_kill"):
            self.error("kill-restart", "could not kill the server while it was analysing the upload")
        if not out.get("port_free_after_kill", False):
            self.error("kill-restart", "something still listened on the port after the kill")
        out["pass"] = bool(out.get("fresh_session_ok") and out["nothing_written"]
                           and out.get("server_run_in_progress_at_kill") and out.get("port_free_after_kill"))
        return out


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- file listings and strace ------------------------------------------------------------------------------------


def repo_listing() -> dict[str, list[int]]:
    """{path: [size, mtime_ns]} of the repository's tracked and untracked files, plus its ignored
    entries (folders as one entry: a file added or removed in them changes the folder's mtime)."""
    def ls(*extra: str) -> list[str]:
        r = subprocess.run(["git", "ls-files", "-z", *extra], cwd=ROOT, capture_output=True, check=True)
        return [p for p in r.stdout.decode().split("\0") if p]

    paths = ls("--cached", "--others", "--exclude-standard")
    paths += [p.rstrip("/") for p in ls("--others", "--ignored", "--exclude-standard", "--directory")]
    out = {}
    for p in sorted(set(paths)):
        try:
            st = (ROOT / p).stat()
        except OSError:
            continue
        out[p] = [st.st_size if not (ROOT / p).is_dir() else 0, st.st_mtime_ns]
    return out


def tmp_listing(exclude: Path) -> dict[str, list[int]]:
    """{path: [size, mtime_ns]} of everything under $TMPDIR except this run's own work dir."""
    root = Path(tempfile.gettempdir())
    out = {}
    for d, dirs, files in os.walk(root, onerror=lambda e: None):
        if Path(d) == exclude:
            dirs[:] = []
            continue
        dirs[:] = [x for x in dirs if Path(d, x) != exclude]
        for name in files + dirs:
            f = Path(d, name)
            try:
                st = f.lstat()
            except OSError:
                continue
            out[str(f)] = [st.st_size if f.is_file() else 0, st.st_mtime_ns]
    return out


def listing_diff(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, Any]:
    new = sorted(set(b) - set(a))
    gone = sorted(set(a) - set(b))
    changed = sorted(p for p in set(a) & set(b) if a[p] != b[p])
    return {"n": len(new) + len(gone) + len(changed), "new": new[:MAX_LISTED], "removed": gone[:MAX_LISTED],
            "modified": changed[:MAX_LISTED]}


_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_CALL = re.compile(r'^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)')


def strace_writes(log: Path) -> list[tuple[str, str]]:
    """(call, path) of every successful call in an strace log that writes, creates, renames or
    removes a file (opens for reading are left out)."""
    if not log.is_file():
        return []
    out = []
    pending: dict[str, str] = {}
    for line in log.read_text(errors="replace").splitlines():
        if "<unfinished ...>" in line:  # a call interrupted by another thread's: joined when it resumes
            pid = line.split(None, 1)[0]
            pending[pid] = line.split("<unfinished ...>", 1)[0]
            continue
        r = re.match(r"^(\d+)\s+<\.\.\. \w+ resumed>(.*)$", line)
        if r:
            line = pending.pop(r.group(1), "") + r.group(2)
        m = _CALL.match(line)
        if not m:
            continue
        call, argstr = m.group(1), m.group(2)
        paths = re.findall(r'"((?:[^"\\]|\\.)*)"', argstr)
        if not paths:
            continue
        if call.startswith("open") and not any(f in argstr for f in _WRITE_FLAGS):
            continue
        out.append((call, paths[-1] if call.startswith(("rename", "link", "symlink")) else paths[0]))
    return out


def classify_writes(writes: list[tuple[str, str]], work: Path) -> dict[str, Any]:
    """The server's writes by place: repo / tmp / elsewhere; the interpreter's bytecode cache and
    /dev, /proc, /sys apart (not files the app keeps)."""
    tmp = Path(tempfile.gettempdir()).resolve()
    buckets: dict[str, set[str]] = {"repo": set(), "tmp": set(), "elsewhere": set(), "bytecode_cache": set(),
                                    "devices": set()}
    for call, p in writes:
        path = Path(p) if p.startswith("/") else ROOT / p
        path = Path(os.path.normpath(path))
        s = str(path)
        if s.startswith(("/dev/", "/proc/", "/sys/")) or s in ("/dev", "/proc"):
            buckets["devices"].add(s)
        elif "__pycache__" in path.parts:
            buckets["bytecode_cache"].add(s)
        elif path.is_relative_to(work):
            buckets["elsewhere"].add(s)  # never expected: the work dir is this script's
        elif path.is_relative_to(ROOT):
            buckets["repo"].add(f"{call} {s}")
        elif path.is_relative_to(tmp):
            buckets["tmp"].add(f"{call} {s}")
        else:
            buckets["elsewhere"].add(f"{call} {s}")
    return {k: sorted(v)[:MAX_LISTED] if k != "bytecode_cache" else len(v) for k, v in buckets.items()}


# --- main ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    reason = bs.missing_browser()
    if reason:
        print(f"load_test: cannot run: {reason}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cxr-load-"))
    if args.fixture_weights:  # before cxr_core.settings is imported: it reads the env var once
        os.environ["CXR_WEIGHTS_DIR"] = str(work / "weights")
    if args.torch_threads is not None:
        os.environ["CXR_TORCH_THREADS"] = str(args.torch_threads)
    deadline = Deadline(args.timeout_s)
    try:
        return _main(args, raw, work, deadline)
    finally:
        if args.keep_workdir:
            print(f"load_test: work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _main(args: argparse.Namespace, raw: list[str], work: Path, deadline: Deadline) -> int:
    import torch

    from cxr_core import settings
    from cxr_core.models import ModelUnavailableError
    from cxr_core.provenance import cpu_model
    from cxr_core.timing import loadavg

    started = time.time()
    load_before = loadavg()
    torch.set_num_threads(settings.TORCH_THREADS)  # the server's count: the same arithmetic
    weights = Path(settings.WEIGHTS_DIR)
    if args.fixture_weights:
        bs.write_fixture_weights(weights, ood_from=settings.ROOT / "weights" / "ood.npz")
    from cxr_core.models import available_classifiers

    trained = list(available_classifiers())  # the page's default model: V-BreathNet, else the first trained
    model = settings.DEFAULT_CLASSIFIER if settings.DEFAULT_CLASSIFIER in trained or not trained else trained[0]
    try:
        lib = Library(model)
    except (ModelUnavailableError, FileNotFoundError) as exc:
        print(f"load_test: cannot run: {exc}", file=sys.stderr)
        return 2
    seed = settings.SEED if args.seed is None else args.seed
    ks = sorted(set(args.sessions))
    n_films = max(max(ks), args.soak, 3)
    source, pool = films(n_films, seed, work)
    run = Run(args, work, weights, lib, deadline)
    for f in pool:  # every expected answer first, so the library does not compete with the server later
        lib.expected(f)

    report: dict[str, Any] = {
        "command": "python scripts/load_test.py " + shlex.join(raw),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpu_model": cpu_model(), "cores": os.cpu_count()},
        "loadavg_before": load_before,
        "weights": "fixture (tests/app_fixtures.py: randomly initialised V-BreathNet)" if args.fixture_weights
        else "real (the repository's weights/, the shipped models)",
        "model": model, "model_card": {k: (lib.clf.card or {}).get(k) for k in ("date", "code_version")},
        "torch_threads": settings.TORCH_THREADS, "films": source, "seed": seed,
        "server": "streamlit run streamlit_app.py on 127.0.0.1 (headless, file watcher off)",
        "browser": "headless Chromium via chromedriver, one driver and one thread per session",
    }
    rounds: list[dict[str, Any]] = []
    timed_out = None
    try:
        if ks or args.soak or args.fuzz:
            with run.server("main", port=args.port) as srv:
                report["server_started"] = bs.process_stats(srv.pid)
                report["first_upload"] = run.first_upload(srv, pool[0])
                for k in ks:
                    rounds.append(run.concurrent(srv, k, pool))
                if args.soak:
                    report["soak"] = run.soak(srv, args.soak, args.per_session, pool)
                if args.fuzz:
                    report["fuzz"] = run.fuzz(srv, pool[0])
        if args.kill_restart:
            report["kill_restart"] = run.kill_restart(pool)
    except TimeoutError as exc:
        timed_out = str(exc)
        run.error("run", timed_out)
    except Exception as exc:
        run.error("run", f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-2000:])

    if timed_out is None and deadline.left() <= 0:
        timed_out = "overall --timeout-s reached"
    report["concurrent"] = rounds
    top = rounds[-1] if rounds else {}
    report["sessions"] = top.get("sessions")
    report["p50_s"], report["p95_s"] = top.get("p50_s"), top.get("p95_s")
    soak = report.get("soak") or {}
    report["soak_uploads"] = soak.get("done", 0)
    warm, end = soak.get("server_after_warmup") or {}, soak.get("server_end") or {}
    report["rss_after_warmup_mb"], report["rss_end_mb"] = warm.get("rss_mb"), end.get("rss_mb")
    for key in ("threads", "open_files", "fds"):
        report[key] = {"start": (soak.get("server_start") or {}).get(key), "after_warmup": warm.get(key),
                       "end": end.get(key), "after_session_ttl": (soak.get("server_after_session_ttl") or {}).get(key)}
    report["rss_after_session_ttl_mb"] = (soak.get("server_after_session_ttl") or {}).get("rss_mb")
    report["errors"] = len(run.errors)
    report["error_list"] = run.errors[:50]
    report["timed_out"] = timed_out
    report["loadavg_after"] = loadavg()
    report["wall_s"] = round(time.time() - started, 1)
    report["pass"] = not run.errors and timed_out is None
    text = json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"load_test: {'PASS' if report['pass'] else 'FAIL'}: {report['errors']} errors, "
              f"sessions {report['sessions']} p50 {report['p50_s']} s p95 {report['p95_s']} s, soak "
              f"{report['soak_uploads']} uploads RSS {report['rss_after_warmup_mb']} -> {report['rss_end_mb']} MB; "
              f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
