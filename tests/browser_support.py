"""Start `streamlit run` on 127.0.0.1 and drive it with headless Chromium: shared by
tests/app/test_browser.py, tests/app/test_load.py and scripts/load_test.py.

Nothing here imports `cxr_core` at module level, so a caller can still set CXR_WEIGHTS_DIR (and the
other settings' environment variables) after importing this module and before `cxr_core.settings`
is first imported. Selenium is imported lazily: `missing_browser()` says why a browser run cannot
happen (Debian: `apt-get install -y chromium chromium-driver`; selenium is in requirements.txt).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "streamlit_app.py"
CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CXR_CHROMEDRIVER", "/usr/bin/chromedriver")
STRACE = shutil.which("strace")


def missing_browser() -> str | None:
    """Why a real-browser run cannot happen here (None when it can)."""
    if os.environ.get("CXR_SKIP_BROWSER") == "1":
        return "CXR_SKIP_BROWSER=1"
    if not Path(CHROMIUM).is_file():
        return f"Chromium not installed at {CHROMIUM} (apt-get install -y chromium chromium-driver)"
    if not Path(CHROMEDRIVER).is_file():
        return f"chromedriver not installed at {CHROMEDRIVER} (apt-get install -y chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    return None


# --- the server ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_fixture_weights(weights: Path, ood_from: Path | None = None) -> Path:
    """The test fixture: a randomly initialised V-BreathNet with its card and the detector's JSON
    files (no detector checkpoint); `ood_from` (a real ood.npz) is copied in when given and present."""
    from app_fixtures import write_cards, write_detector_files, write_vbreathnet_checkpoint

    weights.mkdir(parents=True, exist_ok=True)
    write_cards(weights, ("vbreathnet",))
    write_vbreathnet_checkpoint(weights)
    write_detector_files(weights)
    if ood_from is not None and Path(ood_from).is_file():
        shutil.copy(ood_from, weights / "ood.npz")
    return weights


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy")


class Server:
    """One `streamlit run streamlit_app.py` on 127.0.0.1:`port`, its output in `log_path`.

    `trace_to`: run it under `strace -f` (seccomp-filtered to the calls that create, open, rename or
    remove files) writing that log, so the files the server touches can be listed afterwards.
    `pid` is always the Python server's own pid (the strace child when traced)."""

    def __init__(self, weights: Path | None, port: int | None = None, log_path: Path | None = None,
                 torch_threads: int | None = 1, env: dict[str, str] | None = None,
                 trace_to: Path | None = None, timeout: float = 90):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.trace_to = Path(trace_to) if trace_to else None
        e = dict(os.environ, PYTHONUNBUFFERED="1")
        if weights is not None:
            e["CXR_WEIGHTS_DIR"] = str(weights)
        if torch_threads is not None:
            e["CXR_TORCH_THREADS"] = str(torch_threads)
        e.update(env or {})
        cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
               "--server.address", "127.0.0.1", "--server.port", str(self.port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
        if self.trace_to is not None:
            if STRACE is None:
                raise RuntimeError("strace is not installed")
            cmd = [STRACE, "-f", "-qq", "--seccomp-bpf", "-e", "status=successful",
                   "-e", "trace=open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,"
                   "rmdir,truncate,link,linkat,symlink,symlinkat",
                   "-o", str(self.trace_to)] + cmd
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        try:
            wait_healthy(self.url, self.proc, timeout)
            if self.trace_to is not None:
                self.pid = self._traced_child()
        except BaseException:
            self.stop()
            raise

    def _traced_child(self) -> int:
        """The Python server under strace: strace's descendant running `streamlit run` on our port
        (strace forks short-lived helpers first, so its first child is not necessarily the server)."""
        import psutil

        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.NoSuchProcess:
                continue
            if "streamlit" in cmd and "run" in cmd and str(self.port) in cmd:
                return p.pid
        raise RuntimeError("the traced server process was not found under strace")

    def kill(self) -> None:
        """SIGKILL the server (and anything it started), no clean-up on its side."""
        import psutil

        try:
            victims = [psutil.Process(self.pid)]
            victims += victims[0].children(recursive=True)
        except psutil.NoSuchProcess:
            victims = []
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        if self.trace_to is None:
            self.proc.wait(10)  # our child: reap it here, so its exit status is kept
        else:
            psutil.wait_procs(victims, timeout=10)
            self._wait_strace()
        self._close_log()

    def stop(self, grace: float = 5) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Streamlit does not always exit on SIGTERM,
        and under strace the server is not our child, so it is waited for by pid."""
        import psutil

        if self.trace_to is None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.kill()
        else:
            try:
                p = psutil.Process(self.pid)
                p.terminate()
                p.wait(grace)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                self.kill()
            self._wait_strace()
        self._close_log()

    def _wait_strace(self) -> None:
        try:
            self.proc.wait(10)  # strace exits with its tracee
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def _close_log(self) -> None:
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def process_stats(pid: int) -> dict[str, Any]:
    """RSS (MB, the process and its children), threads, open regular files and all fds of a pid."""
    import psutil

    p = psutil.Process(pid)
    procs = [p] + p.children(recursive=True)
    rss = 0
    for q in procs:
        try:
            rss += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return {"rss_mb": round(rss / 2**20, 1), "threads": p.num_threads(), "open_files": len(p.open_files()),
            "fds": p.num_fds(), "processes": len(procs)}


# --- the browser --------------------------------------------------------------------------------------------


def make_driver(profile_dir: Path, window: tuple[int, int] = (1400, 1600), tmp_dir: Path | None = None):
    """Headless Chromium with its own profile dir (and its own TMPDIR when given)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile_dir}"):
        opts.add_argument(flag)
    env = None
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TMPDIR=str(tmp_dir))
    return webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=opts)


def quit_driver(driver, profile_dir: Path | None = None) -> None:
    try:
        driver.quit()
    finally:
        if profile_dir is not None:
            shutil.rmtree(profile_dir, ignore_errors=True)


def wait_text(driver, text: str, timeout: float = 90) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: text in d.find_element("tag name", "body").text)


def wait_idle(driver, timeout: float = 60) -> None:
    """Wait until Streamlit is not running a script (no 'Running...' status widget)."""
    from selenium.webdriver.support.ui import WebDriverWait

    time.sleep(0.5)
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(
        lambda d: not d.find_elements("css selector", '[data-testid="stStatusWidget"]'))


def click_label(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    el = next(el for el in driver.find_elements(By.CSS_SELECTOR, "label") if el.text.strip() == text)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    el.click()


# --- the Diagnose page: upload one file, read what it shows -------------------------------------------------

# One round trip: what the page shows now (main area only; the sidebar holds no result).
_STATE_JS = r"""
const main = document.querySelector('[data-testid="stMain"]') || document.body;
const txt = e => (e.innerText || '').trim();
const q = s => Array.from(main.querySelectorAll(s));
const metrics = {};
for (const m of q('[data-testid="stMetric"]')) {
  const l = m.querySelector('[data-testid="stMetricLabel"]'), v = m.querySelector('[data-testid="stMetricValue"]');
  if (l && v) metrics[txt(l)] = txt(v);
}
const alerts = q('[data-testid="stAlert"], [data-testid="stAlertContainer"]').map(txt).filter(t => t);
const plots = q('.js-plotly-plot').map(g => (g.data || []).map(t => ({x: t.x, y: t.y})));
return {
  body: txt(document.body),
  headings: q('h1, h2, h3').map(txt),
  metrics: metrics,
  alerts: Array.from(new Set(alerts)),
  exceptions: q('[data-testid="stException"]').map(txt),
  plots: plots,
  running: document.querySelectorAll('[data-testid="stStatusWidget"]').length > 0,
  uploaded: document.querySelectorAll('[data-testid="stFileChip"], [data-testid="stFileUploaderFile"]').length,
};
"""

READY_TEXT = "Upload an image to start"
ABSTAIN_TEXT = "the model abstains"
GENERIC_TEXT = "Something went wrong"
REFUSED_TEXT = "could not be used:"
VERDICTS = ("Pass.", "Check the image.", "Not suitable for analysis.")  # the quality panel's first words


_ICON = re.compile(r"^[a-z0-9_]+\n+")  # a material icon's ligature name, read as text before an alert's words


def page_state(driver) -> dict[str, Any]:
    state = driver.execute_script(_STATE_JS)
    state["alerts"] = [_ICON.sub("", a, count=1).strip() for a in state["alerts"]]
    return state


def open_diagnose(driver, url: str, timeout: float = 120) -> None:
    """Load the app (the Diagnose page is its default) and wait for the empty uploader."""
    driver.get(url)
    wait_text(driver, READY_TEXT, timeout)


def _uploader(driver, timeout: float):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, 'input[type="file"]'))[0]


def clear_uploads(driver, timeout: float = 60) -> None:
    """Remove every uploaded file and wait for the empty page (the uploader keeps several files,
    so the next upload would otherwise make a worklist)."""
    from selenium.webdriver.common.by import By

    end = time.time() + timeout
    while time.time() < end:
        buttons = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stFileChipDeleteBtn"] button, '
                                       '[data-testid="stFileUploaderDeleteBtn"] button')
        if not buttons:
            break
        driver.execute_script("arguments[0].click();", buttons[0])
        time.sleep(0.3)
    while time.time() < end:
        s = page_state(driver)
        if not s["running"] and s["uploaded"] == 0 and READY_TEXT in s["body"]:
            return
        time.sleep(0.2)
    raise TimeoutError("the uploader did not clear")


def result_of(state: dict[str, Any], name: str) -> dict[str, Any] | None:
    """What the page shows for the upload `name`, or None while it shows no outcome for it yet.

    kind: 'result' (a suggested class with its confidence), 'abstained' (the abstention warning),
    'refused' (the file could not be used), 'error' (the catch-all message or a traceback)."""
    body = state["body"]
    out: dict[str, Any] = {"traceback": "Traceback" in body or bool(state["exceptions"])}
    errors = [a for a in state["alerts"] if GENERIC_TEXT in a]
    if errors or out["traceback"]:
        return out | {"kind": "error", "message": (errors or state["exceptions"] or ["Traceback"])[0]}
    refused = [a for a in state["alerts"] if REFUSED_TEXT in a]
    if refused:
        msg = refused[0].split(REFUSED_TEXT, 1)[1].strip()
        return out | {"kind": "refused", "message": msg}
    if name not in state["headings"]:
        return None  # the film's own heading comes last in a run: until then it is not shown
    quality = next((a for a in state["alerts"] if a.startswith(VERDICTS)), None)
    verdict = next((v.rstrip(".") for v in VERDICTS if quality and quality.startswith(v)), None)
    probs = None
    for fig in state["plots"]:
        for trace in fig:
            if isinstance(trace.get("x"), list) and isinstance(trace.get("y"), list) and len(trace["x"]) == 3:
                probs = dict(zip(trace["y"], trace["x"], strict=True))
    abstain = next((a for a in state["alerts"] if ABSTAIN_TEXT in a), None)
    if "Suggested class" in state["metrics"]:
        return out | {"kind": "result", "label": state["metrics"]["Suggested class"],
                      "confidence": state["metrics"].get("Calibrated confidence"), "verdict": verdict,
                      "quality": quality, "probabilities": probs}
    if abstain:
        return out | {"kind": "abstained", "message": abstain, "verdict": verdict, "quality": quality,
                      "probabilities": probs}
    return None


def send_file(driver, path: Path, timeout: float = 60) -> float:
    """Put one file into the uploader; the perf_counter time just before it was sent.

    The <input> keeps the files it was given before (chromedriver appends to a `multiple` input),
    so it is emptied first: otherwise the previous film would come back as a two-file worklist."""
    field = _uploader(driver, timeout)
    driver.execute_script("arguments[0].value = '';", field)
    t0 = time.perf_counter()
    field.send_keys(str(path))
    return t0


def upload_and_read(driver, path: Path, timeout: float = 180, settle: bool = True) -> dict[str, Any]:
    """Upload one file on the (empty) Diagnose page; {'seconds': upload -> outcome visible, ...what
    `result_of` read once the run finished}. kind 'timeout' when nothing was shown in time."""
    path = Path(path)
    t0 = send_file(driver, path, timeout)
    end = time.time() + timeout
    seconds = None
    shown = None
    while time.time() < end:
        state = page_state(driver)
        shown = result_of(state, path.name)
        if shown is not None:
            seconds = time.perf_counter() - t0
            break
        time.sleep(0.1)
    if seconds is None:
        state = page_state(driver)
        return {"kind": "timeout", "seconds": None, "traceback": "Traceback" in state["body"],
                "message": state["body"][-300:]}
    if settle:  # the run may still be drawing (chart, report buttons): read the page once it is done
        while time.time() < end:
            state = page_state(driver)
            final = result_of(state, path.name)
            if final is not None:
                shown = final
            if not state["running"] and (shown["kind"] not in ("result", "abstained") or shown["probabilities"]):
                break
            time.sleep(0.2)
    return shown | {"seconds": round(seconds, 3)}
