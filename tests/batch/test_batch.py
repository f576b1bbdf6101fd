"""Batch scoring on a real local Ray (cxr_core.batch).

A module-scoped fixture makes ~20 test images (PNG, JPEG, DICOM) and 3 bad files, then runs the
CLI in-process three times on a local Ray with 2 actors and 2 CPUs: the first run scores (with
Grad-CAM overlays), the second, identical run must reuse everything, and a manifest CSV with
relative paths into the same output folder must reuse everything too. Each run starts and stops
its own Ray; a finaliser calls ray.shutdown() in case a run left one behind.

Skips only when Ray cannot be imported or cannot start on this machine. Ray-free unit tests
(inputs, resume rules, worker planning, error rows) run regardless.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import chest_phantom, encode, make_dicom, to_uint8, to_uint16

from cxr_core import pipeline, settings
from cxr_core.batch import inputs as batch_inputs
from cxr_core.batch.outputs import ResultStore
from cxr_core.batch.run import plan_workers
from cxr_core.batch.worker import (
    INTERNAL_ERROR_PREFIX,
    Scorer,
    model_version,
    overlay_name,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = settings.DEFAULT_CLASSIFIER
BAD = ("empty.png", "truncated.png", "notes.png")


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (size, sha256) of every file and folder under root."""
    out: dict[str, tuple[int, str]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (-1, "dir") if p.is_dir() else (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _make_inputs(root: Path) -> list[Path]:
    """20 readable chest phantoms in three formats (two in a subfolder) and 3 unusable files."""
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    files: list[Path] = []
    for i in range(8):
        p = root / f"png_{i}.png"
        p.write_bytes(encode(to_uint8(chest_phantom(224 + 16 * (i % 3), seed=i)), "PNG"))
        files.append(p)
    for i in range(6):
        p = (root / "sub" if i < 2 else root) / f"jpeg_{i}.jpg"
        p.write_bytes(encode(to_uint8(chest_phantom(256, seed=100 + i)), "JPEG", quality=92))
        files.append(p)
    for i in range(6):
        p = root / f"dicom_{i}.dcm"
        ages = {0: "034Y", 1: "003Y"}  # two with a PatientAge: the abstention rule uses its band
        tags = {"PatientAge": ages[i]} if i in ages else {}
        p.write_bytes(make_dicom(to_uint16(chest_phantom(320, seed=200 + i), 12), bits_stored=12, **tags))
        files.append(p)
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(encode(to_uint8(chest_phantom(256, seed=7)), "PNG")[:400])
    (root / "notes.png").write_bytes(b"Radiology worklist, not an image.\nPatient: nobody\n")
    return files


def _run_cli(args: list[str]) -> int:
    from cxr_core.batch.cli import main

    return main(args)


def _read(out: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "results.parquet").to_pylist()


@pytest.fixture(scope="module")
def batch_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements.txt)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    base = tmp_path_factory.mktemp("batch")
    inp, out, cwd = base / "in", base / "out", base / "cwd"
    good = _make_inputs(inp)
    cwd.mkdir()
    home_ray = Path.home() / ".ray"
    before = {"input": _tree(inp), "tmp": set(os.listdir(tempfile.gettempdir())),
              "home_ray": home_ray.exists(), "base": set(os.listdir(base))}
    old_cwd = os.getcwd()
    os.chdir(cwd)  # Ray and the CLI must not write into the working directory either
    try:
        common = ["--out", str(out), "--workers", "2", "--num-cpus", "2", "--no-progress"]
        rc1 = _run_cli([str(inp), *common, "--cam"])
        if rc1 == 2 and not (out / "results.parquet").exists():
            pytest.skip("Ray could not start a local instance on this machine (see the batch: message above)")
        s1 = json.loads((out / "summary.json").read_text())
        rows1 = _read(out)
        rc2 = _run_cli([str(inp), *common, "--cam"])
        s2 = json.loads((out / "summary.json").read_text())
        rows2 = _read(out)
        manifest = inp.parent / "lists" / "manifest.csv"
        manifest.parent.mkdir()
        listed = [good[0], good[9], good[15], inp / "empty.png"]
        with open(manifest, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "split"])
            for p in listed:
                w.writerow([os.path.relpath(p, manifest.parent), "normal", "test"])
        rc3 = _run_cli([str(manifest), *common, "--cam"])
        s3 = json.loads((out / "summary.json").read_text())
        rows3 = _read(out)
    finally:
        os.chdir(old_cwd)
        import ray

        ray.shutdown()
    return dict(inp=inp, out=out, cwd=cwd, base=base, good=good, before=before, manifest=manifest, listed=listed,
                rc=(rc1, rc2, rc3), summaries=(s1, s2, s3), rows=(rows1, rows2, rows3))


# --- real Ray, local, 2 actors ----------------------------------------------------------------------------


def test_every_input_has_one_row(batch_runs):
    rows = batch_runs["rows"][0]
    expected = {str(p.resolve()) for p in batch_runs["good"]} | {str((batch_runs["inp"] / b).resolve()) for b in BAD}
    assert len(expected) == 23
    assert sorted(r["file"] for r in rows) == sorted(expected)
    assert batch_runs["rc"][0] == 0
    s = batch_runs["summaries"][0]
    assert s["n_new"] == 23 and s["n_skipped"] == 0 and s["errors"] == 3 and s["internal_errors"] == 0
    assert s["ray"]["workers"] == 2 and s["ray"]["threads_per_worker"] == 1 and s["ray"]["cpus"] == 2
    assert sum(s["predicted"].values()) == 20
    assert s["model_version"] == model_version(MODEL)
    cols = list(rows[0])
    for c in ("file", "sha256", "p_covid", "p_normal", "p_viral_pneumonia", "predicted", "confidence", "abstained",
              "reasons", "quality", "orientation", "boxes", "model", "model_version", "error"):
        assert c in cols
    assert "identifiers" not in cols  # not asked for
    read = [r for r in rows if not r["error"]]
    assert read and all((r["orientation"] or "") == pipeline.orientation_label(pipeline.analyse(
        r["file"], classifier=MODEL).quality) for r in read[:3])  # what the app's gate read on that film


def test_bad_files_carry_their_image_load_error(batch_runs):
    by_file = {Path(r["file"]).name: r for r in batch_runs["rows"][0]}
    for name in BAD:
        with pytest.raises(pipeline.ImageLoadError) as err:
            pipeline.analyse(batch_runs["inp"] / name, classifier=MODEL)
        row = by_file[name]
        assert row["error"] == str(err.value)
        assert row["predicted"] is None and row["p_covid"] is None
        assert row["sha256"] == hashlib.sha256((batch_runs["inp"] / name).read_bytes()).hexdigest()
    for row in by_file.values():
        if Path(row["file"]).name not in BAD:
            assert row["error"] is None, row["error"]
            assert "Traceback" not in (row["reasons"] or "")


def test_results_equal_the_single_image_path(batch_runs):
    by_file = {r["file"]: r for r in batch_runs["rows"][0]}
    for path in batch_runs["good"]:
        a = pipeline.analyse(path, classifier=MODEL)
        row = by_file[str(path.resolve())]
        for c in settings.CLASSES:
            assert abs(row[f"p_{c}"] - a.prediction.probabilities[c]) <= 1e-6, (path.name, c)
        assert row["predicted"] == a.prediction.predicted
        assert row["abstained"] == a.prediction.abstained
        assert row["quality"] == a.quality.verdict
        assert row["reasons"] == a.row()["reasons"]
        assert abs(row["confidence"] - a.prediction.confidence) <= 1e-6
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert row["model"] == MODEL and row["model_version"] == model_version(MODEL)


def test_csv_matches_parquet(batch_runs):
    import pandas as pd

    df = pd.read_csv(batch_runs["out"] / "results.csv")
    rows = batch_runs["rows"][2]
    assert len(df) == len(rows)
    assert list(df["file"]) == [r["file"] for r in rows]
    np.testing.assert_allclose(df["p_normal"].to_numpy(float),
                               np.array([np.nan if r["p_normal"] is None else r["p_normal"] for r in rows]),
                               rtol=0, atol=1e-9)


def test_overlays_have_stable_names(batch_runs):
    out = batch_runs["out"]
    pngs = sorted(p.name for p in (out / "overlays").iterdir())
    want = sorted({overlay_name(r["sha256"], MODEL) for r in batch_runs["rows"][0] if not r["error"]})
    assert pngs == want and len(want) == 20
    from PIL import Image

    im = Image.open(out / "overlays" / want[0])
    assert im.mode == "RGB" and min(im.size) >= 64


def test_second_run_processes_nothing_new(batch_runs):
    s2 = batch_runs["summaries"][1]
    assert batch_runs["rc"][1] == 0
    assert s2["n_new"] == 0 and s2["n_skipped"] == 23
    assert s2["images_per_s"] is None
    strip = lambda rows: sorted((r["file"], r["sha256"], r["p_covid"], r["error"]) for r in rows)
    assert strip(batch_runs["rows"][1]) == strip(batch_runs["rows"][0])
    assert not (batch_runs["out"] / "parts").exists()


def test_manifest_input_resolves_relative_paths_and_resumes(batch_runs):
    s3 = batch_runs["summaries"][2]
    assert batch_runs["rc"][2] == 0
    assert s3["input"] == {"kind": "manifest", "n_inputs": 4}
    assert s3["n_new"] == 0 and s3["n_skipped"] == 4 and s3["errors"] == 1
    rows = batch_runs["rows"][2]
    assert len(rows) == 23  # merged: the folder's rows stay, one row per input
    listed = {str(p.resolve()) for p in batch_runs["listed"]}
    assert listed <= {r["file"] for r in rows}


def test_only_out_is_written(batch_runs):
    before = batch_runs["before"]
    assert _tree(batch_runs["inp"]) == before["input"]
    assert os.listdir(batch_runs["cwd"]) == []
    assert set(os.listdir(batch_runs["base"])) == before["base"] | {"out", "lists"}  # lists/: the test's manifest
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before["tmp"] if n == "ray" or n.startswith("cxr-ray-")}
    assert not left, f"Ray left temp folders behind: {left}"
    if not before["home_ray"]:
        assert not (Path.home() / ".ray").exists(), "Ray wrote ~/.ray (its auth token) outside --out"
    out_names = set(os.listdir(batch_runs["out"]))
    assert out_names <= {"results.parquet", "results.csv", "summary.json", "overlays", "ray_logs"}, out_names
    assert not (batch_runs["out"] / ".ray").exists()


# --- CLI and Ray-free units ------------------------------------------------------------------------------


def test_help_works():
    res = subprocess.run([sys.executable, "-m", "cxr_core.batch", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=os.environ | {"RAY_USAGE_STATS_ENABLED": "0"})
    assert res.returncode == 0, res.stderr
    for flag in ("--out", "--model", "--address", "--workers", "--cam", "--boxes", "--age-group",
                 "--include-identifiers", "Exit codes"):
        assert flag in res.stdout


def test_one_cli_routes_to_batch(capsys):
    from cxr_core.batch import __main__ as batch_main

    assert callable(batch_main.main)  # importing it must not run the CLI (the router imports it)
    with pytest.raises(SystemExit) as done:
        batch_main.main(["--help"])
    assert done.value.code == 0 and "--out" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path, monkeypatch):
    from cxr_core.batch.cli import main

    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "in").mkdir()
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 2  # no images
    monkeypatch.setattr(settings, "WEIGHTS_DIR", tmp_path / "no_weights")
    (tmp_path / "in" / "a.png").write_bytes(encode(to_uint8(chest_phantom(128)), "PNG"))
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--model", "vgg16"]) == 2  # untrained
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_manifest_needs_a_path_column_and_urls_need_a_resolver(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("file,label\na.png,normal\n")
    with pytest.raises(batch_inputs.InputError, match="'path' column"):
        batch_inputs.resolve_inputs(str(m))
    with pytest.raises(batch_inputs.InputError, match="DICOMweb"):
        batch_inputs.resolve_inputs("https://pacs.example/dicom-web/studies?ModalitiesInStudy=DX")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(b"1")
    m.write_text("path\nimgs/x.png\nimgs/x.png\n/abs/missing.dcm\n")
    kind, items = batch_inputs.resolve_inputs(str(m))
    assert kind == "manifest"
    assert [i.file for i in items] == [str((tmp_path / "imgs" / "x.png").resolve()), "/abs/missing.dcm"]


@pytest.mark.parametrize("cpus,workers,threads,want", [(2, None, None, (2, 1)), (2, 1, None, (1, 2)),
                                                       (16, 4, None, (4, 4)), (8, None, 2, (4, 2))])
def test_plan_workers_fills_the_cpus(cpus, workers, threads, want):
    assert plan_workers(cpus, workers, threads) == want
    w, t = want
    assert w * t == cpus


def test_plan_workers_refuses_oversubscription():
    from cxr_core.batch.run import BatchError

    with pytest.raises(BatchError):
        plan_workers(2, 3, None)
    with pytest.raises(BatchError):
        plan_workers(2, 2, 2)


def test_resume_rules(tmp_path):
    store = ResultStore(tmp_path)
    v = "vbreathnet@abc"
    base = dict(model="vbreathnet", model_version=v, age_group_option="", boxes=None, identifiers=None, error=None)
    rows = [
        base | {"file": "a", "sha256": "1"},
        base | {"file": "b", "sha256": "2", "model_version": "vbreathnet@old"},
        base | {"file": "c", "sha256": "3", "error": f"{INTERNAL_ERROR_PREFIX} (OSError) during reading; ..."},
        base | {"file": "d", "sha256": "4", "error": "The file is empty (0 bytes)."},
        base | {"file": "e", "sha256": "5", "age_group_option": "adult"},
        base | {"file": "f", "sha256": ""},
    ]
    kw = dict(model_version=v, age_group_option="", overlays=False, identifiers=False)
    assert set(store.reusable(rows, boxes=False, **kw)) == {"1", "4"}
    assert set(store.reusable(rows, boxes=True, **kw)) == {"4"}  # no boxes stored: rescore
    assert set(store.reusable(rows, boxes=False, **(kw | {"overlays": True}))) == {"4"}  # no overlay on disk


def test_unexpected_errors_are_generic_rows(tmp_path, monkeypatch, one_torch_thread):
    img = tmp_path / "a.png"
    img.write_bytes(encode(to_uint8(chest_phantom(200, seed=3)), "PNG"))
    scorer = Scorer(MODEL, threads=1)

    def boom(*a, **k):
        raise RuntimeError("secret detail /home/patient/Doe^Jane")

    monkeypatch.setattr(pipeline, "analyse", boom)
    row = scorer.score(str(img), str(img))
    assert row["error"].startswith(INTERNAL_ERROR_PREFIX) and "RuntimeError" in row["error"]
    assert "secret" not in row["error"] and "Traceback" not in row["error"]
    assert row["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    missing = scorer.score(str(tmp_path / "gone.dcm"), str(tmp_path / "gone.dcm"))
    assert missing["error"] == "No file was found at 'gone.dcm'." and missing["sha256"] == ""


def test_identifiers_only_when_asked(tmp_path, one_torch_thread):
    p = tmp_path / "id.dcm"
    p.write_bytes(make_dicom(to_uint8(chest_phantom(256, seed=5))))
    plain = Scorer(MODEL, threads=1).score(str(p), str(p))
    assert plain["identifiers"] is None and plain["error"] is None
    assert "Doe" not in json.dumps({k: v for k, v in plain.items() if k != "_overlay"})
    asked = Scorer(MODEL, threads=1, include_identifiers=True).score(str(p), str(p))
    assert json.loads(asked["identifiers"]).get("PatientID") == "ID12345"


@pytest.mark.skipif(not settings.DETECTOR_WEIGHTS.is_file(), reason="weights/detector.pt is not present")
def test_boxes_column_is_a_json_list(tmp_path, one_torch_thread):
    pytest.importorskip("ultralytics", reason="the detector needs ultralytics")
    p = tmp_path / "b.png"
    p.write_bytes(encode(to_uint8(chest_phantom(384, seed=11)), "PNG"))
    row = Scorer(MODEL, threads=1, boxes=True).score(str(p), str(p))
    assert row["error"] is None, row["error"]
    boxes = json.loads(row["boxes"])
    assert isinstance(boxes, list)
    expected = pipeline.analyse(p, classifier=MODEL).boxes()
    assert len(boxes) == len(expected)
    for b in boxes:
        assert set(b) == {"label", "class_id", "confidence", "validated", "box_xyxy"} and len(b["box_xyxy"]) == 4
    assert row["_overlay"][:8] == b"\x89PNG\r\n\x1a\n"
