"""train -> evaluate -> predict, end to end on a tiny data set built from real cxr3 images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cxr3_rows, requires_cxr3

from cxr_core import __main__ as cxr_main
from cxr_core import evaluate, predict, settings, train
from cxr_core.models import load_classifier

EVAL_KEYS = {"n", "accuracy", "macro_f1", "per_class", "confusion_matrix", "roc_auc", "ece", "mean_latency_ms", "per_group"}


@pytest.fixture()
def tiny_manifest(tmp_path: Path) -> Path:
    """Eight images per class and split, absolute paths, the real manifest's columns."""
    rows = []
    for split in ("train", "val", "test"):
        for label in settings.CLASSES:
            rows += [r for r in cxr3_rows(split) if r["label"] == label][:8]
    for r in rows:
        r["path"] = str(settings.CXR3_DIR / r["path"])
    out = tmp_path / "manifest.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    weights = tmp_path / "weights"
    monkeypatch.setattr(settings, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(settings, "CACHE_DIR", tmp_path / "cache")
    load_classifier.cache_clear()
    yield weights
    load_classifier.cache_clear()


@requires_cxr3
def test_train_evaluate_predict_end_to_end(tiny_manifest: Path, isolated: Path, tmp_path: Path, capsys) -> None:
    train.main(["--model", "vbreathnet", "--manifest", str(tiny_manifest), "--size", "64", "--epochs", "2",
                "--batch", "8", "--threads", "1", "--out-dir", str(isolated)])
    card = json.loads((isolated / "vbreathnet.json").read_text())
    assert card["input_size"] == 64 and card["training"]["epochs"] == 2
    assert len(card["training"]["history"]) == 2
    assert card["data"]["split_sizes"]["test"] == 24
    assert card["params"]["trainable"] < 790_307  # smaller flatten at 64 px
    assert any("64 px" in d for d in card["deviations"]) and card["faithful_to_paper"] is False
    assert EVAL_KEYS <= set(card["metrics"]["test"])
    assert card["calibration"]["temperature"] > 0
    # 95 % intervals by the patient-group bootstrap (the manifest has patient_or_cluster_id)
    assert set(card["metrics"]["test"]["ci95"]) == {"accuracy", "macro_f1", "ece"}
    assert len(card["calibration"]["test_coverage_ci95"]) == 2 and "test_accuracy_answered_ci95" in card["calibration"]

    # rescore: calibration and metrics recomputed from the saved weights, training record kept
    import torch

    train.main(["--model", "vbreathnet", "--manifest", str(tiny_manifest), "--rescore", "--threads", "1",
                "--out-dir", str(isolated)])
    rescored = json.loads((isolated / "vbreathnet.json").read_text())
    assert rescored["training"] == card["training"] and rescored["rescored"]["command"].endswith(str(isolated))
    assert rescored["metrics"]["test"]["n"] == 24
    saved = torch.load(isolated / "vbreathnet.pt", weights_only=True)
    assert saved["temperature"] == pytest.approx(rescored["calibration"]["temperature"])
    # a second rescore refits the same temperature: the weights file is left byte for byte as it was,
    # so exports made from it (which check the source checksum) stay valid
    before = (isolated / "vbreathnet.pt").read_bytes()
    train.main(["--model", "vbreathnet", "--manifest", str(tiny_manifest), "--rescore", "--threads", "1",
                "--out-dir", str(isolated)])
    assert (isolated / "vbreathnet.pt").read_bytes() == before
    again = json.loads((isolated / "vbreathnet.json").read_text())["calibration"]
    assert again["temperature"] == saved["temperature"]
    assert abs(again.get("temperature_refit", again["temperature"]) / again["temperature"] - 1) <= train.TEMPERATURE_REFIT_TOLERANCE
    other = tmp_path / "other.csv"
    other.write_text(tiny_manifest.read_text() + "\n")
    with pytest.raises(SystemExit, match="not the manifest"):
        train.main(["--model", "vbreathnet", "--manifest", str(other), "--rescore", "--out-dir", str(isolated)])

    # evaluate on a folder with class sub-folders (any format load_image reads)
    folder = tmp_path / "folder"
    for r in cxr3_rows("test", n=12):
        (folder / r["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(settings.CXR3_DIR / r["path"], folder / r["label"] / Path(r["path"]).name)
    out = tmp_path / "metrics.json"
    evaluate.main(["--model", "vbreathnet", "--data", str(folder), "--out", str(out), "--threads", "1"])
    metrics = json.loads(out.read_text())
    assert EVAL_KEYS <= set(metrics) and metrics["n"] == 12
    assert sum(map(sum, metrics["confusion_matrix"])) == 12
    assert metrics["abstention"]["n_answered"] <= 12 and "with_age_scope" not in metrics["abstention"]  # a folder has no ages

    # evaluate on the manifest: per-source and per-age-group metrics are present
    evaluate.main(["--model", "vbreathnet", "--data", str(tiny_manifest), "--split", "test", "--out", str(out)])
    metrics = json.loads(out.read_text())
    assert set(metrics["per_group"]) == {"source", "age_group"}
    lo, hi = metrics["ci95"]["accuracy"]
    assert lo <= metrics["accuracy"] <= hi and metrics["ci95_method"]["n_groups"] == 24
    assert set(metrics["per_group"]["age_group"]) == {"adult", "paediatric"}
    assert metrics["abstention"]["with_age_scope"]["n_answered"] <= metrics["abstention"]["n_answered"]

    # predict a worklist folder with one unreadable file: a row per file, the bad one with its error
    (folder / "normal" / "broken.png").write_bytes(b"not an image")
    csv_out = tmp_path / "pred.csv"
    assert predict.main([str(folder), "--csv", str(csv_out), "--age-group", "other"]) == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert len(rows) == 13
    assert all(r["abstained"] == "True" and r["age_group"] == "other" for r in rows if not r["error"])
    bad = [r for r in rows if r["file"].endswith("broken.png")][0]
    assert "not an image" in bad["error"]
    good = [r for r in rows if not r["error"]]
    for r in good:
        total = sum(float(r[f"p_{c}"]) for c in settings.CLASSES)
        assert abs(total - 1) < 1e-3 and r["predicted"] in settings.CLASSES
        assert r["quality"] in {"pass", "warn", "fail"} and r["abstained"] in {"True", "False"}


def test_predict_without_weights_says_how_to_train(isolated: Path, tmp_path: Path, capsys) -> None:
    assert predict.main([str(tmp_path), "--model", "densenet121"]) == 2
    assert "python -m cxr_core.train --model densenet121" in capsys.readouterr().err


@pytest.mark.parametrize("module", [train, evaluate, predict])
def test_cli_help(module, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "usage: python -m cxr_core." in capsys.readouterr().out


def _available(target: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(target.split(":")[0].rsplit(".__main__", 1)[0]) is not None


@pytest.mark.parametrize(("task", "mode"), [(t, m) for t, (_, modes) in cxr_main.TASKS.items() for m in modes])
def test_one_cli_routes_every_mode_to_its_help(task: str, mode: str, capsys) -> None:
    target = cxr_main.TASKS[task][1][mode].target
    if not _available(target):
        pytest.skip(f"{target} is not part of this checkout")
    assert cxr_main.main([task, mode, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m cxr_core") and "--help" in out


def test_one_cli_levels_and_exit_convention(capsys) -> None:
    assert cxr_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {t} " in out for t in cxr_main.TASKS)
    assert cxr_main.main(["classify", "--help"]) == 0
    assert "  sanity " in capsys.readouterr().out
    assert cxr_main.main([]) == 2 and cxr_main.main(["classify"]) == 2
    assert cxr_main.main(["nope"]) == 2 and "Unknown task 'nope'" in capsys.readouterr().err
    assert cxr_main.main(["classify", "fly"]) == 2 and "Unknown mode 'fly'" in capsys.readouterr().err
    assert cxr_main.main(["classify", "train", "--no-such-flag"]) == 2  # argparse's usage error


def test_one_cli_gives_the_same_rows_as_the_module_command(tmp_path: Path, capsys) -> None:
    from app_fixtures import chest_png_bytes

    (tmp_path / "a.png").write_bytes(chest_png_bytes(256, seed=1))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert predict.main([str(tmp_path)]) == 0
    old = capsys.readouterr().out
    assert cxr_main.main(["classify", "predict", str(tmp_path)]) == 0
    new = capsys.readouterr().out
    assert new == old and "bad.png" in new and "a.png" in new


@requires_cxr3
def test_head_mode_trains_only_the_head_of_a_frozen_imagenet_backbone(tiny_manifest: Path, isolated: Path) -> None:
    if not settings.MOBILENET_V2_IMAGENET.is_file():
        pytest.skip("shared MobileNetV2 ImageNet weights absent")
    train.main(["--model", "mobilenet_v2", "--manifest", str(tiny_manifest), "--size", "64", "--epochs", "3",
                "--views", "2", "--threads", "1", "--out-dir", str(isolated)])
    card = json.loads((isolated / "mobilenet_v2.json").read_text())
    assert card["mode"] == "head" and "ImageNet" in card["pretrained"]
    assert len(card["training"]["history"]) == 3
    clf = load_classifier("mobilenet_v2")
    import torch

    ref = torch.load(settings.MOBILENET_V2_IMAGENET, weights_only=True)
    key = next(iter(ref))
    assert torch.equal(clf.model.features.state_dict()[key], ref[key])  # backbone untouched by training


@requires_cxr3
def test_weight_ema_is_what_gets_scored_shipped_and_resumed(tiny_manifest: Path, isolated: Path) -> None:
    import torch

    common = ["--model", "vbreathnet", "--manifest", str(tiny_manifest), "--size", "64", "--batch", "8",
              "--threads", "1", "--ema", "0.9", "--out-dir", str(isolated)]
    train.main(common + ["--epochs", "1"])
    run = settings.CACHE_DIR / "runs" / "vbreathnet-64px-ema0.9"
    last = torch.load(run / "last.pt", weights_only=True)
    shipped = torch.load(isolated / "vbreathnet.pt", weights_only=True)["state_dict"]
    key = "features.0.weight"
    assert torch.equal(shipped[key], last["ema"][f"module.{key}"])  # one epoch: best = the EMA after it
    assert not torch.equal(shipped[key], last["model"][key])  # and the EMA is not the raw weights
    steps = int(last["ema"]["n_averaged"])
    assert steps == 3  # 24 training images, batches of 8

    train.main(common + ["--epochs", "2"])  # resumes at epoch 1, EMA included
    card = json.loads((isolated / "vbreathnet.json").read_text())
    assert len(card["training"]["history"]) == 2 and card["training"]["weight_ema"] == 0.9
    assert any("moving average" in d for d in card["deviations"])
    assert "resumed at epoch 1" in (run / "log.txt").read_text()
    assert int(torch.load(run / "last.pt", weights_only=True)["ema"]["n_averaged"]) == 2 * steps


def test_lr_schedule_halves_on_the_paper_step_and_on_a_longer_one() -> None:
    assert [train.lr_schedule(e, 1e-3) for e in (0, 4, 5, 10)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    assert [train.lr_schedule(e, 1e-3, step=8) for e in (0, 7, 8, 16)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    assert train.lr_schedule(200, 1e-3) == 1e-6  # floor, as in the paper


def test_cosine_schedule_falls_from_the_base_rate_to_the_floor() -> None:
    lrs = [train.lr_schedule(e, 4e-4, schedule="cosine", epochs=10) for e in range(10)]
    assert lrs[0] == pytest.approx(4e-4) and lrs[5] == pytest.approx(2e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(4e-4 * 0.5 * (1 + np.cos(0.9 * np.pi)))
    assert train.lr_schedule(10, 4e-4, schedule="cosine", epochs=10) == 1e-6
    with pytest.raises(ValueError, match="needs the run's number of epochs"):
        train.lr_schedule(0, 1e-3, schedule="cosine")


@requires_cxr3
def test_a_second_stage_starts_from_the_given_weights_and_says_so(tiny_manifest: Path, isolated: Path, tmp_path: Path) -> None:
    """--init-from: the run starts from trained weights (not a random initialisation); the card names the
    file by checksum, keeps the first stage's training record and lists the stage as a deviation."""
    import torch

    from cxr_core.provenance import sha256_file

    common = ["--model", "vbreathnet", "--manifest", str(tiny_manifest), "--size", "64", "--batch", "8",
              "--threads", "1", "--precision", "fp32"]
    stage1 = tmp_path / "stage1"
    train.main(common + ["--epochs", "1", "--out-dir", str(stage1)])
    init = torch.load(stage1 / "vbreathnet.pt", weights_only=True)["state_dict"]
    train.main(common + ["--epochs", "1", "--lr", "1e-12", "--schedule", "cosine", "--augment", "acquisition",
                         "--init-from", str(stage1 / "vbreathnet.pt"), "--out-dir", str(isolated)])
    out = torch.load(isolated / "vbreathnet.pt", weights_only=True)["state_dict"]
    from cxr_core.models import build_model

    key = "features.0.weight"  # at the 1e-6 floor, 3 RMSprop steps leave the weights next to where they started
    fresh = build_model("vbreathnet", input_size=64, imagenet=False)[0].state_dict()[key]
    assert float((out[key] - init[key]).abs().max()) < 1e-3 < float((fresh - init[key]).abs().max())
    # the second stage has its own run folder: it never resumes the first stage's state
    assert (settings.CACHE_DIR / "runs" / "vbreathnet-64px-cosine-acquisition-init" / "last.pt").is_file()
    card = json.loads((isolated / "vbreathnet.json").read_text())
    t = card["training"]
    assert t["init_from"]["sha256"] == sha256_file(stage1 / "vbreathnet.pt")
    assert t["init_from"]["training"]["epochs"] == 1 and len(t["init_from"]["training"]["history"]) == 1
    assert t["config"]["init_from"] == str(stage1 / "vbreathnet.pt") and t["config"]["augment"] == "acquisition"
    assert t["schedule"].startswith("cosine from 1e-12") and "JPEG" in t["augmentation"]
    assert any(d.startswith("Two stages: 1 epochs") for d in card["deviations"])
    assert any("Acquisition augmentation" in d for d in card["deviations"])
    with pytest.raises(SystemExit):
        train.main(common + ["--init-from", str(tmp_path / "missing.pt"), "--out-dir", str(isolated)])
    # a candidate is evaluated from its own folder before it ships
    out = tmp_path / "candidate.json"
    evaluate.main(["--model", "vbreathnet", "--data", str(tiny_manifest), "--weights-dir", str(stage1),
                   "--out", str(out), "--threads", "1"])
    metrics = json.loads(out.read_text())
    assert metrics["weights_dir"] == str(stage1) and metrics["n"] == 24
    with pytest.raises(SystemExit):
        evaluate.main(["--model", "vbreathnet", "--weights-dir", str(tmp_path / "nowhere")])


@requires_cxr3
def test_budget_stop_and_resume_equal_an_uninterrupted_run(tiny_manifest: Path, isolated: Path, tmp_path: Path, capsys) -> None:
    """Segments of a run (stopped by the time budget, resumed from the committed-style state dir) end in
    exactly the weights of one uninterrupted run: the promise that lets a run span sessions."""
    import torch

    def run(state: Path, *extra: str) -> None:
        train.main(["--model", "vbreathnet", "--manifest", str(tiny_manifest), "--size", "64", "--batch", "8",
                    "--threads", "1", "--precision", "fp32", "--state-dir", str(state),
                    "--out-dir", str(tmp_path / state.name), *extra])

    run(tmp_path / "straight", "--epochs", "3")
    seg = tmp_path / "segmented"
    run(seg, "--epochs", "1")
    after_one = torch.load(seg / "last.pt", weights_only=True)
    capsys.readouterr()
    run(seg, "--epochs", "3", "--budget-min", "0.00001")  # budget already spent: stops before epoch 2
    out = capsys.readouterr().out
    assert "budget" in out and "Continue with: python -m cxr_core.train" in out and "--state-dir" in out
    stopped = torch.load(seg / "last.pt", weights_only=True)
    assert stopped["state"]["epoch"] == 1
    assert torch.equal(stopped["model"]["features.0.weight"], after_one["model"]["features.0.weight"])
    assert "budget of 1e-05 min reached after epoch 1" in (seg / "log.txt").read_text()
    run(seg, "--epochs", "3")

    a = torch.load(tmp_path / "straight" / "vbreathnet.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "segmented" / "vbreathnet.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    card = json.loads((tmp_path / "segmented" / "vbreathnet.json").read_text())
    segments = card["training"]["segments"]
    assert [(s["epoch_from"], s["epoch_to"]) for s in segments] == [(0, 1), (1, 3)]  # the stopped segment trained nothing: not listed
    assert all(s["precision"] == "fp32" and s["cpu"] and s["minutes"] >= 0 for s in segments)
    assert (seg / "last.pt").stat().st_size < 10_000_000


def test_precision_probe_picks_a_measured_mode_and_leaves_the_rng_alone() -> None:
    import torch

    from cxr_core.models import build_model

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    probe = train.probe_precision(lambda: build_model("vbreathnet", input_size=64, imagenet=False)[0], 64,
                                  batch=4, seconds=1.0)
    assert torch.equal(torch.rand(3), expected)
    assert probe["precision"] in train.PRECISIONS
    assert probe["img_per_s"][probe["precision"]] == max(probe["img_per_s"].values()) > 0
    assert ("bf16-cl" in probe["img_per_s"]) == train.bf16_native()  # bf16 is only tried where it has kernels


@pytest.mark.skipif(not (settings.WEIGHTS_DIR / "vbreathnet.pt").is_file(), reason="no shipped V-BreathNet weights")
def test_shipped_vbreathnet_is_the_paper_model_at_the_paper_size() -> None:
    """The 256 px runs finished and shipped: the card and the weights are the paper's architecture, the
    card lists both stages' segments (40 epochs, then 8 from those weights, whose hash it keeps) and the
    resumable checkpoints were removed from the tree, as the issue asks."""
    from cxr_core.provenance import sha256_file

    card = json.loads((settings.WEIGHTS_DIR / "vbreathnet.json").read_text())
    assert card["input_size"] == 256
    assert card["params"] == {"total": 790_307, "trainable": 790_307, "keras_total": 792_291}
    clf = load_classifier("vbreathnet")
    assert clf.input_size == 256 and sum(p.numel() for p in clf.model.parameters()) == 790_307
    first = card["training"]["init_from"]
    for t, epochs in ((first["training"], 40), (card["training"], 8)):
        segments = t["segments"]
        assert segments[0]["epoch_from"] == 0 and segments[-1]["epoch_to"] == t["epochs"] == epochs
        assert all(s["precision"] in train.PRECISIONS and s["minutes"] > 0 for s in segments)
    # the first stage's weights are kept as the ablation they started from
    assert sha256_file(settings.WEIGHTS_DIR / "ablations" / "vbreathnet__stage1.pt") == first["sha256"]
    assert not list((settings.WEIGHTS_DIR / "checkpoints").glob("vbreathnet-256*"))


COMMITTED_STATES = sorted((settings.WEIGHTS_DIR / "checkpoints").glob("*/last.pt"))


@pytest.mark.skipif(not COMMITTED_STATES, reason="no training run in progress (weights/checkpoints/*/last.pt)")
@pytest.mark.parametrize("last", COMMITTED_STATES, ids=lambda p: p.parent.name)
def test_a_committed_training_state_loads_into_the_current_code(last: Path) -> None:
    """A run spanning sessions commits its state; the next session resumes it with today's code. Model,
    optimiser and (when used) the EMA must load exactly, and the state must say where it stands."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from cxr_core.models import SPECS, build_model

    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    state = ckpt["state"]
    model, _ = build_model("vbreathnet", input_size=state["size"], imagenet=False)
    model.load_state_dict(ckpt["model"])  # strict: every key and shape of today's architecture
    opt = train.OPTIMIZERS[SPECS["vbreathnet"].optimizer](model.parameters(), 1e-3)
    opt.load_state_dict(ckpt["optimizer"])
    if "ema" in ckpt:
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True).load_state_dict(ckpt["ema"])
    assert 0 < state["epoch"] == len(state["history"]) and state["segments"][0]["epoch_from"] == 0
    assert (last.parent / "best.pt").is_file() and last.stat().st_size < 10_500_000
    log = (last.parent / "log.txt").read_text()
    assert "precision" in log and f'"epoch": {state["epoch"]}' in log


def test_temperature_is_the_nll_minimum_even_on_a_tiny_badly_separated_set() -> None:
    """24 validation logits that LBFGS on log T stepped to NaN with (seen in the budget test): the
    fitted T must be finite, inside its bounds and no worse than any T on a fine grid."""
    import torch

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 24)
    z = torch.as_tensor(rng.normal(0, 0.05, (24, 3)) + 4.0 * np.eye(3)[rng.integers(0, 3, 24)], dtype=torch.float32)
    t = train.fit_temperature(z, y)
    assert np.isfinite(t) and 0.05 <= t <= 20.0

    def nll(temp: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / temp, torch.as_tensor(y)))

    assert nll(t) <= min(nll(g) for g in np.geomspace(0.05, 20.0, 400)) + 1e-6
