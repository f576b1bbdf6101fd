"""cxr_core.stats: the patient-group (cluster) bootstrap behind the 95 % intervals of the model cards."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from cxr_core import settings, stats
from cxr_core.classify.val import ECE_BINS, compute_metrics, reliability

LABELS = list(range(len(settings.CLASSES)))


def one_hot_probs(pred: np.ndarray, conf: float | np.ndarray = 0.9) -> np.ndarray:
    """Probabilities whose argmax is `pred`, top probability `conf`, the rest shared out."""
    conf = np.broadcast_to(np.asarray(conf, float), pred.shape)
    p = np.repeat(((1 - conf) / 2)[:, None], 3, axis=1)
    p[np.arange(len(pred)), pred] = conf
    return p


def realistic(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """~90 % accurate, overconfident probabilities; patients with 1-4 films each."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 3.0
    p = np.exp(1.5 * logits)
    p /= p.sum(1, keepdims=True)
    groups = np.repeat(np.arange(n), rng.integers(1, 5, n))[:n]
    return y, p, groups


def f1_sklearn(y: np.ndarray, p: np.ndarray) -> float:
    return float(f1_score(y, p.argmax(1), labels=LABELS, average="macro", zero_division=0))


def test_all_correct_gives_an_interval_of_one():
    y = np.tile(LABELS, 60)
    p = one_hot_probs(y)
    groups = np.arange(len(y)) // 3  # patients of three films
    assert stats.bootstrap_ci("accuracy", y, p, groups) == (1.0, 1.0)
    assert stats.bootstrap_ci("macro_f1", y, p, groups) == (1.0, 1.0)
    lo, hi = stats.bootstrap_ci("ece", y, p, groups)  # all at confidence 0.9, all right: ECE 0.1 exactly
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_the_vectorised_metrics_equal_sklearn_and_reliability():
    y, p, groups = realistic()
    assert stats.ACCURACY(y, p) == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-12)
    assert stats.MACRO_F1(y, p) == pytest.approx(f1_sklearn(y, p), abs=1e-12)
    assert stats.ECE(y, p) == pytest.approx(reliability(y, p)["ece"], abs=1e-12)
    assert stats.ECE_BINS == ECE_BINS
    # and on every replicate: the callable path rebuilds each resample's rows and calls sklearn / reliability
    # on them, from the same draws, so the intervals agree only if every replicate's value does
    for name, slow in (("macro_f1", f1_sklearn), ("ece", lambda a, b: reliability(a, b)["ece"])):
        fast = stats.bootstrap_ci(name, y, p, groups, n_boot=150)
        assert stats.bootstrap_ci(slow, y, p, groups, n_boot=150) == pytest.approx(fast, abs=1e-12)


def test_confidences_on_a_bin_edge_fall_in_the_same_bin_as_in_reliability():
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)[6:]  # 0.4 ... 1.0 exactly: bins are (lo, hi]
    conf = np.repeat(edges, 2)
    y = np.zeros(len(conf), int)
    p = one_hot_probs(np.tile([0, 1], len(edges)), conf)
    assert stats.ECE(y, p) == pytest.approx(reliability(y, p)["ece"], abs=1e-12)
    assert stats.ECE(y, p) != pytest.approx(stats.ECE(y, one_hot_probs(np.tile([0, 1], len(edges)), conf + 1e-9)))


def test_a_class_missing_from_the_sample_scores_zero_f1_as_sklearn_does():
    y = np.array([0, 0, 1, 1])
    p = one_hot_probs(np.array([0, 1, 1, 1]))
    assert stats.MACRO_F1(y, p) == pytest.approx(f1_sklearn(y, p))  # class 2: no support, no prediction


def test_one_big_patient_all_wrong_widens_the_interval():
    """150 films right, each its own patient; 50 films wrong, all of ONE patient. As independent films the
    interval is the binomial one (~0.75 +- 0.06); resampling patients, that one patient is drawn 0, 1, 2...
    times, so accuracy swings between 1.0 and ~0.5."""
    y = np.zeros(200, int)
    p = one_hot_probs(np.r_[np.zeros(150, int), np.ones(50, int)])
    clustered = np.r_[np.arange(150), np.full(50, 150)]
    lo_c, hi_c = stats.bootstrap_ci("accuracy", y, p, clustered)
    lo_i, hi_i = stats.bootstrap_ci("accuracy", y, p, np.arange(200))
    assert lo_i == pytest.approx(0.75 - 1.96 * math.sqrt(0.75 * 0.25 / 200), abs=0.02)
    assert hi_i == pytest.approx(0.75 + 1.96 * math.sqrt(0.75 * 0.25 / 200), abs=0.02)
    assert hi_c == 1.0 and lo_c < 0.65
    assert hi_c - lo_c > 2.5 * (hi_i - lo_i)
    assert stats.bootstrap_ci("accuracy", y, p, None) == (lo_i, hi_i)  # no groups: every row its own


def test_rows_without_a_patient_id_are_their_own_group():
    ids = pd.Series(["p1", None, "p1", np.nan, "", "p2"])
    codes = stats.group_codes(ids, 6)
    assert codes[0] == codes[2] and len(set(codes)) == 5  # p1, p2 and three singletons
    with pytest.raises(ValueError, match="6 rows"):
        stats.group_codes(ids[:5], 6)


def test_the_seed_fixes_the_interval():
    y, p, groups = realistic()
    a = stats.bootstrap_cis(stats.METRICS, y, p, groups, seed=7)
    assert stats.bootstrap_cis(stats.METRICS, y, p, groups, seed=7) == a
    assert stats.bootstrap_cis(stats.METRICS, y, p, groups, seed=8) != a
    assert stats.bootstrap_ci("ece", y, p, groups, seed=7) == a["ece"]  # one metric alone: the same draws
    assert stats.bootstrap_ci("accuracy", y, p, groups) == stats.bootstrap_ci("accuracy", y, p, groups)


def test_the_point_lies_inside_a_plausible_interval_on_real_looking_data():
    y, p, groups = realistic()
    for name, metric in stats.METRICS.items():
        lo, hi = stats.bootstrap_ci(name, y, p, groups)
        point = metric(y, p)
        assert lo <= point <= hi, name
        assert 0.005 < hi - lo < 0.15, (name, lo, hi)  # ~600 films: a few points wide, not 0 and not [0, 1]
    lo99, hi99 = stats.bootstrap_ci("accuracy", y, p, groups, alpha=0.01)
    lo95, hi95 = stats.bootstrap_ci("accuracy", y, p, groups)
    assert lo99 <= lo95 and hi95 <= hi99


def test_coverage_and_accuracy_on_answered():
    y = np.zeros(6, int)
    p = one_hot_probs(np.array([0, 0, 1, 0, 1, 0]), conf=np.array([0.95, 0.95, 0.95, 0.5, 0.5, 0.5]))
    assert stats.coverage(0.9)(y, p) == pytest.approx(0.5)
    assert stats.accuracy_answered(0.9)(y, p) == pytest.approx(2 / 3)
    assert math.isnan(stats.accuracy_answered(0.99)(y, p))
    assert all(math.isnan(v) for v in stats.bootstrap_ci(stats.accuracy_answered(0.99), y, p, None))
    assert stats.bootstrap_ci(stats.coverage(0.99), y, p, None) == (0.0, 0.0)


def test_a_thousand_replicates_of_three_metrics_take_seconds():
    y, p, groups = realistic(620)
    t = time.perf_counter()
    stats.bootstrap_cis(stats.METRICS, y, p, groups, n_boot=1000)
    assert time.perf_counter() - t < 5.0


def test_unknown_metric_names_are_refused():
    y, p, _ = realistic(30)
    with pytest.raises(ValueError, match="unknown metric"):
        stats.bootstrap_ci("auc", y, p, None)
    assert stats.ci_lists({"x": (0.1234567891, float("nan"))}) == {"x": [0.123457, None]}


# --- where the intervals are written -------------------------------------------------------------------


def test_compute_metrics_adds_intervals_and_changes_nothing_else():
    y, p, groups = realistic()
    frame = pd.DataFrame({"source": np.where(y == 2, "kermany", "rad"), "age_group": "adult",
                          stats.GROUP_COLUMN: [f"person{g}" for g in groups]})
    out = compute_metrics(y, p, frame)
    assert set(out["ci95"]) == {"accuracy", "macro_f1", "ece"}
    for key, (lo, hi) in out["ci95"].items():
        assert isinstance(lo, float) and lo <= out[key] <= hi and hi - lo > 0.005, key
    assert out["ci95"]["accuracy"] == pytest.approx(stats.bootstrap_ci("accuracy", y, p, frame[stats.GROUP_COLUMN]),
                                                    abs=1e-6)
    assert out["ci95_method"]["n_groups"] == len(set(groups)) and out["ci95_method"]["n_boot"] == stats.N_BOOT
    plain = compute_metrics(y, p, frame.drop(columns=[stats.GROUP_COLUMN]))
    assert "ci95" not in plain and "ci95_method" not in plain
    assert {k: v for k, v in out.items() if not k.startswith("ci95")} == plain  # every other figure as before
    assert "ci95" not in compute_metrics(y, p)


class _Replay(torch.nn.Module):
    """Returns stored logits in order: score() asks for the val split's, then the test split's."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits, self.pos = torch.as_tensor(logits, dtype=torch.float32), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits[self.pos:self.pos + len(x)]
        self.pos += len(x)
        return out


def test_score_adds_intervals_of_test_coverage_and_accuracy_on_answered():
    from cxr_core.classify.train import score
    from cxr_core.data import CachedSplit

    splits, logits = [], []
    for seed in (1, 2):
        y, p, groups = realistic(300, seed)
        logits.append(np.log(p))
        frame = pd.DataFrame({"source": "rad", "age_group": "adult", stats.GROUP_COLUMN: [f"p{g}" for g in groups]})
        splits.append(CachedSplit(images=np.zeros((300, 8, 8), np.uint8), labels=y, frame=frame))
    val, test = splits
    _, cal, metrics = score(_Replay(np.concatenate(logits)), "imagenet", val, test)
    t = cal["abstain_threshold"]
    test_cal = torch.softmax(torch.as_tensor(logits[1], dtype=torch.float32) / cal["temperature"], 1).numpy()
    answered = test_cal.max(1) >= t
    assert cal["test_coverage"] == pytest.approx(answered.mean())  # the existing figures are unchanged
    assert cal["test_accuracy_answered"] == pytest.approx((test_cal.argmax(1) == test.labels)[answered].mean())
    for key in ("test_coverage", "test_accuracy_answered"):
        lo, hi = cal[f"{key}_ci95"]
        assert lo <= cal[key] <= hi and hi - lo > 0.005, key
    expected = stats.bootstrap_ci(stats.coverage(t), test.labels, test_cal, test.frame[stats.GROUP_COLUMN])
    assert cal["test_coverage_ci95"] == pytest.approx(expected, abs=1e-6)
    assert "ci95" in metrics["test"] and "ci95" in metrics["val"]
