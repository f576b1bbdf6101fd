"""The recipe selection rule: validation accuracy within one standard error, then what generalises."""

from __future__ import annotations

import json

import pytest

from cxr_core import settings
from cxr_core.classify.select import Candidate, choose, context_answered, mean_shift_drop, standard_error


def probes(answered: float, drops: tuple[float, ...] = (0.02, 0.04)) -> dict:
    return {"context_only": {"coverage": answered, "accuracy": 0.4},
            "shifts": {f"s{i}": {"accuracy_drop": d} for i, d in enumerate(drops)}}


def test_standard_error_is_the_binomial_one() -> None:
    assert standard_error(0.93, 618) == pytest.approx(0.01026, abs=1e-5)
    assert standard_error(0.9, 0) == 0.0  # unknown n: no tolerance
    c = choose([Candidate("a", 0.93, 0, probes(0.6)), Candidate("b", 0.929, 0, probes(0.0))])
    assert c.chosen == "a" and c.eligible == ["a"]


def test_a_clearly_better_validation_accuracy_wins_whatever_the_probes_say() -> None:
    c = choose([Candidate("a", 0.95, 618, probes(0.6)), Candidate("b", 0.90, 618, probes(0.0))])
    assert c.chosen == "a" and c.eligible == ["a"] and not c.probed
    assert "Only a is within one standard error (0.009)" in c.explanation


def test_within_noise_the_model_that_reads_less_outside_the_lungs_wins() -> None:
    """0.932 vs 0.925 on 618 films is inside one SE (0.010): the one answering fewer lung-less films wins,
    although its validation accuracy is lower."""
    c = choose([Candidate("shortcut", 0.932, 618, probes(0.53)), Candidate("lungs", 0.925, 618, probes(0.05))])
    assert c.chosen == "lungs" and c.probed and c.eligible == ["shortcut", "lungs"]
    assert "lungs reads least from outside the lungs" in c.explanation and "53% answered" in c.explanation
    # equal context shares (within 1 point): the smaller mean shift drop decides
    c = choose([Candidate("fragile", 0.93, 618, probes(0.05, (0.2, 0.1))),
                Candidate("robust", 0.93, 618, probes(0.054, (0.01, 0.03)))])
    assert c.chosen == "robust" and "mean shift drop 2.0 points" in c.explanation
    assert "loses least under the acquisition shifts" in c.explanation


def test_shares_within_one_point_of_the_lowest_tie_wherever_they_fall() -> None:
    """The tie is measured from the lowest share, not by rounding into whole-point buckets: 52.9 % and
    53.9 % (6 of 618 films apart; the shipped and second-stage V-BreathNet) are equal, and 52.9 % vs
    54.1 % are not."""
    fragile, robust = probes(0.529, (0.19, 0.15)), probes(0.539, (0.01, 0.02))
    c = choose([Candidate("stage1", 0.932, 618, fragile), Candidate("stage2", 0.924, 618, robust)])
    assert c.chosen == "stage2" and c.eligible == ["stage1", "stage2"]
    c = choose([Candidate("stage1", 0.932, 618, fragile), Candidate("stage2", 0.924, 618, probes(0.541, (0.01,)))])
    assert c.chosen == "stage1" and "stage1 reads least from outside the lungs" in c.explanation


def test_without_probes_the_rule_falls_back_to_validation_and_says_so() -> None:
    c = choose([Candidate("a", 0.932, 618, probes(0.5)), Candidate("b", 0.930, 618, None)])
    assert c.chosen == "a" and not c.probed and c.not_probed == ["b"]
    assert "No probe result for b" in c.explanation and "can favour" in c.explanation
    with pytest.raises(ValueError):
        choose([])


def test_probe_summaries_ignore_missing_numbers() -> None:
    assert context_answered(None) is None and context_answered({"context_only": {"coverage": float("nan")}}) is None
    assert mean_shift_drop({"shifts": {"a": {"accuracy_drop": 0.1}, "b": {}}}) == pytest.approx(0.1)
    assert mean_shift_drop({}) is None


@pytest.mark.skipif(not (settings.PROBES_DIR / "vbreathnet.json").is_file()
                    or not (settings.PROBES_DIR / "vbreathnet__128px.json").is_file(), reason="probe files absent")
def test_the_committed_probe_files_feed_the_rule() -> None:
    """The shipped V-BreathNet and its 128 px ablation, from their committed cards and probe files."""
    from cxr_core.ui.cards import ablation_stem
    from cxr_core.ui.probes import load_probes

    assert ablation_stem("vbreathnet (128px)") == "vbreathnet__128px" and ablation_stem("vbreathnet") == "vbreathnet"
    assert ablation_stem("mobilenet_v2 (variant)") is None
    found = load_probes(("vbreathnet", "vbreathnet__128px"))
    cards = {n: json.loads(p.read_text()) for n, p in (("vbreathnet", settings.WEIGHTS_DIR / "vbreathnet.json"),
                                                      ("vbreathnet__128px", settings.WEIGHTS_DIR / "ablations" / "vbreathnet__128px.json"))}
    cands = [Candidate(n, c["metrics"]["val"]["accuracy"], c["metrics"]["val"]["n"], found[n]) for n, c in cards.items()]
    choice = choose(cands)
    assert choice.chosen in cards and all(context_answered(found[n]) is not None for n in cards)
