"""cxr_core.bench on a tiny synthetic run: the JSON contract, not timings (the machine is shared)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cxr_core import bench

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    rc = bench.main(
        ["--out", str(out), "--n", "3", "--synthetic", "--threads", "1", "--batch", "2",
         "--models", "vbreathnet", "--reference-reps", "3", "--quiet"]
    )
    assert rc == 0
    return json.loads(out.read_text())


def _positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_required_keys(tiny: dict) -> None:
    for key in ("pipeline_p50_ms", "pipeline_p95_ms", "stages", "peak_rss_mb", "reference", "ratios",
                "threads", "torch", "date", "batch_throughput", "stages_skipped", "n_images", "source"):
        assert key in tiny, key
    assert tiny["n_images"] == 3 and tiny["source"] == "synthetic"
    assert tiny["threads"] == 1 and tiny["torch"] == torch.__version__
    # timings depend on the CPU's vector units: the record says which the run had
    assert tiny["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_stage_numbers_are_positive(tiny: dict) -> None:
    stages = tiny["stages"]
    for name in ("decode", "preprocess", "forward_vbreathnet", "gradcam_vbreathnet", "pipeline"):
        assert name in stages, name
    for name, s in stages.items():
        assert _positive(s["p50_ms"]) and _positive(s["p95_ms"]), name
        assert s["p95_ms"] >= s["p50_ms"], name
    assert tiny["pipeline_p50_ms"] == stages["pipeline"]["p50_ms"]
    assert _positive(tiny["pipeline_p95_ms"]) and _positive(tiny["peak_rss_mb"])


def test_optional_stages_are_timed_or_explained(tiny: dict) -> None:
    for name in ("quality", "detector", "lungs"):
        assert (name in tiny["stages"]) != (name in tiny["stages_skipped"]), name


def test_reference_and_ratios(tiny: dict) -> None:
    ref = tiny["reference"]
    assert _positive(ref["mobilenet_v2_p50_ms"]) and _positive(ref["densenet121_p50_ms"])
    ratios = tiny["ratios"]
    for name in tiny["stages"]:
        assert _positive(ratios[name]), name
        assert ratios[name] == pytest.approx(tiny["stages"][name]["p50_ms"] / ref["mobilenet_v2_p50_ms"], rel=0.01, abs=1e-3)
    assert _positive(ratios["gradcam_over_forward_vbreathnet"])
    assert ratios["channels_last_over_contiguous_vbreathnet"] == pytest.approx(
        tiny["stages"]["forward_vbreathnet"]["p50_ms"] / tiny["stages"]["forward_vbreathnet_contiguous"]["p50_ms"], rel=0.01)


def test_batch_throughput(tiny: dict) -> None:
    t = tiny["batch_throughput"]["vbreathnet"]
    assert t["batch"] == 2 and _positive(t["images_per_s"])


def test_synthetic_images_decode() -> None:
    from cxr_core.io import load_image

    imgs = bench.synthetic_images(2, size=128)
    assert len(imgs) == 2
    px = load_image(imgs[0]).pixels
    assert px.shape == (128, 128) and 0.0 <= px.min() < px.max() <= 1.0


def test_two_layouts_are_timed_interleaved_and_each_time_goes_to_its_own_function() -> None:
    """The layout comparison alternates a and b per item (order flipped each item), and every timing
    lands with the function that ran: a sleeps 5 ms per call, b does nothing."""
    import time as _time

    from cxr_core import bench

    order: list[str] = []

    def a(x: int) -> None:
        order.append("a")
        _time.sleep(0.005)

    def b(x: int) -> None:
        order.append("b")

    ta, tb = bench._time_interleaved(a, b, [0, 1, 2, 3], warmup=1)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then flipped pairs
    assert len(ta) == len(tb) == len(ta.cpu) == len(tb.cpu) == 4
    assert min(ta) > max(tb)
