"""Run a batch: start (or join) Ray, stream inputs through an actor pool, merge and write results.

    from cxr_core.batch.run import BatchConfig, run_batch
    summary = run_batch(BatchConfig(input="archive/", out=Path("out")))

Why Ray Data with a class-based UDF on an actor pool: loading a classifier costs seconds, scoring
one film costs tens of milliseconds, so each actor loads the model once and then scores many
films; Ray Data streams the file list through the pool with back-pressure, and the same code runs
in-process on one machine or on a KubeRay cluster. The driver lists inputs and writes results;
the actors read the bytes.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cxr_core import settings
from cxr_core.batch import inputs as batch_inputs
from cxr_core.batch.outputs import RAY_LOGS, ResultStore, count_rows
from cxr_core.batch.worker import Scorer, model_version, result_schema

# AF_UNIX socket paths are limited to 107 bytes and Ray puts its sockets at
# <temp>/session_<date>_<time>_<pid>/sockets/<name> (about 65 characters below <temp>).
MAX_RAY_TEMP_CHARS = 36
CHECKPOINT_ROWS = 200
CHECKPOINT_SECONDS = 60.0

# Folders a cluster's workers do not need when the code is shipped as runtime_env working_dir.
SHIP_EXCLUDES: list[str] = [
    ".venv/", ".git/", "cache/", "runs/", "artifacts/", "tests/", "docs/", "pages/", "scripts/",
    "weights/checkpoints/", "weights/ablations/", "weights/candidates/", "**/__pycache__/", "*.pyc",
]

_LOCAL_TOKEN: str | None = None  # one per process: Ray's token loader caches the first it sees

log = logging.getLogger(__name__)


class BatchError(RuntimeError):
    """A run that cannot start (usage, model or cluster problem): exit code 2."""


@dataclass
class BatchConfig:
    """Everything one `python -m cxr_core.batch` call decides (see cli.py for the meanings)."""

    input: str
    out: Path
    model: str = settings.DEFAULT_CLASSIFIER
    backend: str = "torch"  # or "onnx" / "onnx-int8" (cxr_core.export.backend)
    address: str | None = None
    workers: int | None = None
    threads: int | None = None
    num_cpus: int | None = None
    cam: bool = False
    boxes: bool = False
    age_group: str | None = None
    include_identifiers: bool = False
    batch_size: int = 8
    force: bool = False
    ship_code: bool = False
    ray_temp_dir: Path | None = None
    progress: bool = True


@dataclass
class RunStats:
    """What the driver measured; goes into summary.json."""

    ray_start_s: float = 0.0
    scoring_s: float = 0.0
    first_row_s: float | None = None
    cpus: int = 0
    workers: int = 0
    threads: int = 0
    mode: str = "local"
    ray_temp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def local_cpus() -> int:
    """The cores this process may use (affinity-aware), what a local Ray gets by default."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class RaySession:
    """ray.init / ray.shutdown around one run, writing nothing outside the output folder.

    Local (no address): a fresh in-process Ray (`address="local"`, so a stray RAY_ADDRESS does not
    redirect it), no dashboard, no usage stats, actor output kept out of the terminal. Ray's temp
    folder (sockets, logs, spilled objects) is DIR/.ray when that path is short enough for Unix
    sockets, else a private folder under the system temp dir; either way it is removed at the end
    and Ray's logs are kept in DIR/ray_logs. Ray 2.60 turns on token authentication for local
    clusters and would save a token in ~/.ray/auth_token; a random per-process token in
    RAY_AUTH_TOKEN keeps authentication on without writing that file. The token is never printed.

    Cluster (`address`): joins it (`auto`, `host:6379`, or `ray://host:10001`); the cluster's
    own temp and log folders are used, on its nodes. `ship_code` uploads this checkout (without
    .venv, cache, checkpoints) as the job's runtime_env working_dir.
    """

    def __init__(self, cfg: BatchConfig):
        self.cfg = cfg
        self.owned = False
        self.temp_root: Path | None = None
        self._remove_temp = False
        self._env_before: dict[str, str | None] = {}

    def _setenv(self, key: str, value: str) -> None:
        if key not in self._env_before:
            self._env_before[key] = os.environ.get(key)
        os.environ[key] = value

    def _pick_temp(self) -> Path:
        if self.cfg.ray_temp_dir is not None:
            return Path(self.cfg.ray_temp_dir).resolve()
        inside = (Path(self.cfg.out) / ".ray").resolve()
        if len(str(inside)) <= MAX_RAY_TEMP_CHARS:
            self._remove_temp = True
            return inside
        self._remove_temp = True
        return Path(tempfile.mkdtemp(prefix="cxr-ray-"))

    def __enter__(self) -> RaySession:
        global _LOCAL_TOKEN
        self._setenv("RAY_USAGE_STATS_ENABLED", os.environ.get("RAY_USAGE_STATS_ENABLED", "0"))
        import ray

        if ray.is_initialized():  # a caller (notebook, benchmark) already holds a Ray: use it as is
            return self
        cfg = self.cfg
        # Ray 2.60 warns at every local start that it turned token auth on; that is the intended state
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                      logging_level=logging.WARNING, configure_logging=True)
        if cfg.address:
            runtime_env: dict[str, Any] = {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "YOLO_OFFLINE": "1"}}
            if cfg.ship_code:
                runtime_env.update(working_dir=str(settings.ROOT), excludes=SHIP_EXCLUDES)
            ray.init(address=cfg.address, runtime_env=runtime_env, **kwargs)
        else:
            if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH") \
                    and os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
                _LOCAL_TOKEN = _LOCAL_TOKEN or secrets.token_hex(32)
                self._setenv("RAY_AUTH_TOKEN", _LOCAL_TOKEN)
            # Local workers start in this process's working directory, not with its sys.path:
            # make this checkout importable for them even when it is not installed.
            paths = [str(settings.ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            self._setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))
            self.temp_root = self._pick_temp()
            self.temp_root.mkdir(parents=True, exist_ok=True)
            ray.init(address="local", num_cpus=cfg.num_cpus or local_cpus(), _temp_dir=str(self.temp_root),
                     **kwargs)
        self.owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self.owned:
            ray.shutdown()
        if self.temp_root is not None:
            self._keep_logs()
            if self._remove_temp:
                shutil.rmtree(self.temp_root, ignore_errors=True)
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _keep_logs(self) -> None:
        assert self.temp_root is not None
        sessions = sorted(p for p in self.temp_root.glob("session_2*") if p.is_dir())
        if not sessions or not (sessions[-1] / "logs").is_dir():
            return
        dest = Path(self.cfg.out) / RAY_LOGS
        shutil.rmtree(dest, ignore_errors=True)
        try:
            shutil.copytree(sessions[-1] / "logs", dest, symlinks=False, ignore_dangling_symlinks=True,
                            ignore=shutil.ignore_patterns("*.sock", "*socket*"))
        except (OSError, shutil.Error):
            pass  # logs are a courtesy; never fail a finished run over them


def plan_workers(cpus: int, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(actors, torch threads per actor) so that actors x threads = the CPUs Ray has.

    Default: one actor per CPU with one thread each (independent images parallelise better than
    one image over many threads for a model this small; the benchmark measures both).
    """
    cpus = max(1, int(cpus))
    if workers is None:
        t = max(1, int(threads or 1))
        workers = max(1, cpus // t)
    if workers < 1:
        raise BatchError("--workers must be at least 1.")
    if workers > cpus:
        raise BatchError(f"--workers {workers} is more than the {cpus} CPUs Ray has; each actor needs at least one.")
    t = int(threads) if threads else max(1, cpus // workers)
    if workers * t > cpus:
        raise BatchError(f"{workers} workers x {t} threads is more than the {cpus} CPUs Ray has.")
    return workers, t


def _blocks(n: int, batch_size: int, workers: int) -> int:
    """Enough blocks that every actor gets several tasks (load balance), not thousands of tiny ones."""
    return max(1, min(n, max(workers * 4, math.ceil(n / max(1, batch_size))), 2000))


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def run_batch(cfg: BatchConfig, *, on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Score cfg.input into cfg.out; returns the summary (also written to summary.json).

    `on_row` is called with every row as it arrives (skipped ones too), with the worker's
    transport fields (`_skipped`, `_pid`, `_rss_mb`) but without overlay bytes.

    Raises `BatchError` (usage), `batch_inputs.InputError` (bad INPUT) or
    `ModelUnavailableError` (no weights) before anything is started.
    """
    from cxr_core import report
    from cxr_core.models import ModelUnavailableError, load_classifier

    t_total = time.perf_counter()
    if cfg.model not in settings.CLASSIFIERS:
        raise BatchError(f"Unknown model '{cfg.model}'. Known: {', '.join(settings.CLASSIFIERS)}")
    if cfg.age_group is not None and cfg.age_group not in settings.AGE_GROUPS:
        raise BatchError(f"Unknown age group '{cfg.age_group}'. Known: {', '.join(settings.AGE_GROUPS)}")
    if cfg.batch_size < 1:
        raise BatchError("--batch-size must be at least 1.")
    if cfg.backend == "torch":
        clf = load_classifier(cfg.model)  # ModelUnavailableError before Ray starts
    else:
        from cxr_core.export.backend import load

        clf = load(cfg.model, cfg.backend)  # ValueError (backend), ModelUnavailableError / StaleExportError
    version = model_version(cfg.model, cfg.backend)
    if cfg.boxes and not settings.DETECTOR_WEIGHTS.is_file():
        raise ModelUnavailableError(f"--boxes needs the detector weights ({settings.DETECTOR_WEIGHTS.name} is missing).")
    kind, items = batch_inputs.resolve_inputs(str(cfg.input))
    if not items:
        raise BatchError(f"No image files found in {cfg.input}.")
    out = Path(cfg.out)
    in_root = Path(cfg.input).resolve()
    if out.resolve() == in_root or (in_root.is_dir() and in_root in out.resolve().parents):
        raise BatchError("--out must not be the input folder or inside it (results would be rescored as inputs).")

    store = ResultStore(out, clf.classes)
    store.ensure()
    stored = [] if cfg.force else store.existing()
    age_opt = cfg.age_group or ""
    reuse = store.reusable(stored, model_version=version, age_group_option=age_opt, boxes=cfg.boxes,
                           overlays=cfg.cam or cfg.boxes, identifiers=cfg.include_identifiers)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    stats = RunStats(mode="cluster" if cfg.address else "local")

    new_rows: list[dict[str, Any]] = []
    skipped_rows: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    failure: str | None = None
    interrupted = False

    t0 = time.perf_counter()
    try:
        session = RaySession(cfg).__enter__()
    except Exception as exc:
        raise BatchError(f"Ray could not start or connect ({type(exc).__name__}: {_first_line(exc)}).") from None
    try:
        import ray
        import ray.data

        stats.ray_start_s = time.perf_counter() - t0
        stats.ray_temp = str(session.temp_root) if session.temp_root else None
        stats.cpus = int(ray.cluster_resources().get("CPU", 0))
        stats.workers, stats.threads = plan_workers(stats.cpus, cfg.workers, cfg.threads)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # our own tqdm bar on stderr instead
        for name in ("ray.data", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)

        # small enough that every actor gets work (20 inputs on 2 actors: batches of at most 5)
        batch_size = max(1, min(cfg.batch_size, math.ceil(len(items) / (stats.workers * 2))))
        stats.extra["batch_size"] = batch_size
        ds = ray.data.from_items([{"file": it.file, "source": it.source} for it in items],
                                 override_num_blocks=_blocks(len(items), batch_size, stats.workers))
        ds = ds.map_batches(
            Scorer,
            fn_constructor_kwargs=dict(model=cfg.model, backend=cfg.backend, threads=stats.threads,
                                       age_group=cfg.age_group,
                                       cam=cfg.cam, boxes=cfg.boxes, include_identifiers=cfg.include_identifiers,
                                       done=sorted(reuse), expected_version=version),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=stats.workers),
            num_cpus=stats.threads,
        )
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="batch", unit="image", file=sys.stderr, mininterval=2,
                   disable=not cfg.progress)
        t_score = time.perf_counter()
        last_ckpt = time.perf_counter()
        try:
            for table in _iter_tables(ds):
                for row in table.to_pylist():
                    if stats.first_row_s is None:
                        stats.first_row_s = time.perf_counter() - t_score
                    if row.get("_skipped"):
                        skipped_rows.append(reuse[row["sha256"]] | {"file": row["file"]})
                    else:
                        if row.get("_overlay"):
                            store.write_overlay(row["sha256"], row["model"], row["_overlay"])
                        clean = _strip(row)
                        new_rows.append(clean)
                        pending.append(clean)
                    if on_row:  # the raw row, transport fields included (the benchmark reads _pid, _rss_mb)
                        on_row({k: v for k, v in row.items() if k != "_overlay"})
                    bar.update(1)
                if len(pending) >= CHECKPOINT_ROWS or (pending and time.perf_counter() - last_ckpt > CHECKPOINT_SECONDS):
                    store.write_part(pending)
                    pending, last_ckpt = [], time.perf_counter()
        except KeyboardInterrupt:
            interrupted = True
        except BatchError:
            raise
        except Exception as exc:  # a failed actor or cluster: keep what was scored, report, exit 1
            failure = f"{type(exc).__name__}: {_first_line(exc)}"
        finally:
            bar.close()
            stats.scoring_s = time.perf_counter() - t_score
            store.write_part(pending)
    finally:
        session.__exit__(None, None, None)

    if interrupted:
        raise KeyboardInterrupt
    # Merge: stored rows for files outside this run, then this run's rows (one per input).
    this_run = {r["file"]: r for r in skipped_rows + new_rows}
    for it in items:  # every input has a row, even if the job failed part-way
        if it.file not in this_run:
            this_run[it.file] = {
                "file": it.file, "model": cfg.model, "model_version": version, "age_group_option": age_opt,
                "error": "Internal error (not processed): the run stopped before this input; it will be retried on the next run."}
    merged = [r for r in stored if r["file"] not in this_run] + list(this_run.values())
    table = store.finalise(merged, include_identifiers=cfg.include_identifiers)

    run_rows = [this_run[it.file] for it in items]
    counts = count_rows(run_rows, clf.classes)
    summary: dict[str, Any] = {
        "input": {"kind": kind, "n_inputs": len(items)},
        "n_new": len(new_rows),
        "n_skipped": len(skipped_rows),
        "n_rows_in_results": table.num_rows,
        **counts,
        "images_per_s": round(len(new_rows) / stats.scoring_s, 3) if new_rows and stats.scoring_s > 0 else None,
        "seconds": {"ray_start": round(stats.ray_start_s, 3), "first_row": _r(stats.first_row_s),
                    "scoring": round(stats.scoring_s, 3), "total": round(time.perf_counter() - t_total, 3)},
        "ray": {"version": _ray_version(), "mode": stats.mode, "cpus": stats.cpus, "workers": stats.workers,
                "threads_per_worker": stats.threads, "batch_size": stats.extra.get("batch_size"),
                "temp_dir": "removed after the run; logs in ray_logs/" if stats.ray_temp else "the cluster's own"},
        "model": cfg.model,
        "backend": cfg.backend,
        "model_version": version,
        "model_card": report.model_version(clf.card, cfg.model),
        "options": {"cam": cfg.cam, "boxes": cfg.boxes, "age_group": cfg.age_group,
                    "include_identifiers": cfg.include_identifiers, "force": cfg.force},
        "started_at": started_at,
        "failure": failure,
        "columns": [f.name for f in result_schema(clf.classes)] + (["identifiers"] if cfg.include_identifiers else []),
    }
    store.write_summary(summary)
    return summary


def _iter_tables(ds: Any) -> Iterator[Any]:
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _first_line(exc: BaseException) -> str:
    """A short reason for the terminal: the last non-empty line of the message (Ray wraps remote
    errors in a traceback; the last line is the actual error), at most 300 characters."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _ray_version() -> str:
    import ray

    return ray.__version__


def one_line(summary: dict[str, Any], out: Path) -> str:
    """The summary line printed at the end of a run."""
    rate = summary.get("images_per_s")
    return (f"batch: {summary['input']['n_inputs']} inputs, {summary['n_new']} new, {summary['n_skipped']} skipped, "
            f"{summary['errors']} errors, {summary['abstained']} abstained; "
            f"{rate if rate is not None else '-'} images/s on {summary['ray']['workers']} workers x "
            f"{summary['ray']['threads_per_worker']} threads; results in {Path(out) / 'results.parquet'}")


__all__ = ["BatchConfig", "BatchError", "RaySession", "local_cpus", "one_line", "plan_workers", "run_batch"]
