"""Choose between recipes of one model (input size, crop, augmentation, a second training stage) on what
generalises, not on validation accuracy alone.

Why: in cxr3 the classes differ by source hospital and age, so the recipe with the best validation
accuracy can be the one that reads those cues best. The lung-crop ablation was once decided on
validation accuracy alone. The rule here:

1. Eligible are the candidates whose validation accuracy lies within one standard error of the best
   (the one-standard-error rule of Breiman et al. 1984; SE = sqrt(p (1 - p) / n), about one point on
   cxr3's 618 validation films). Differences inside it are noise, not evidence.
2. Among the eligible, the one that reads least from outside the lungs wins: the lowest share still
   answered when the lungs are greyed out (context-only probe, `cxr_core.classify.probes`), then the
   smallest mean accuracy drop over the acquisition shifts.
3. A candidate without a probe result cannot be judged on step 2. When an eligible candidate has
   none, the choice falls back to validation accuracy and says so.

Used by the comparison page for the ablations and to decide whether a new training stage ships.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

SHARE_TIE = 0.01  # context-only answered shares within this of the lowest count as equal; the shift drop decides


@dataclass(frozen=True)
class Candidate:
    """One recipe: its validation accuracy on n films and, when run, its probe result (evaluate --probes)."""

    name: str
    val_accuracy: float
    val_n: int
    probes: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Choice:
    chosen: str
    eligible: list[str]
    probed: bool  # True when step 2 decided among the eligible candidates
    explanation: str
    not_probed: list[str] = field(default_factory=list)


def standard_error(accuracy: float, n: int) -> float:
    """Binomial SE of an accuracy on n films; 0 when n is unknown (no tolerance: plain validation order)."""
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / n) if n > 0 else 0.0


def context_answered(probes: Mapping[str, Any] | None) -> float | None:
    """Share the confidence rule still answers on context-only films (lungs greyed out)."""
    value = ((probes or {}).get("context_only") or {}).get("coverage")
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def mean_shift_drop(probes: Mapping[str, Any] | None) -> float | None:
    drops = [s.get("accuracy_drop") for s in ((probes or {}).get("shifts") or {}).values()]
    drops = [float(d) for d in drops if isinstance(d, (int, float)) and not math.isnan(d)]
    return sum(drops) / len(drops) if drops else None


def choose(candidates: list[Candidate]) -> Choice:
    """The rule of the module docstring; `explanation` says in one paragraph what decided."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    best = max(candidates, key=lambda c: c.val_accuracy)
    se = standard_error(best.val_accuracy, best.val_n)
    eligible = [c for c in candidates if c.val_accuracy >= best.val_accuracy - se]
    shown = ", ".join(f"{c.name} {c.val_accuracy:.3f}" for c in eligible)
    head = (f"Within one standard error ({se:.3f}) of the best validation accuracy: {shown}." if len(eligible) > 1
            else f"Only {best.name} is within one standard error ({se:.3f}) of the best validation accuracy "
                 f"({best.val_accuracy:.3f}).")
    not_probed = [c.name for c in eligible if context_answered(c.probes) is None]
    if len(eligible) == 1:
        return Choice(best.name, [best.name], False, head, not_probed)
    if not_probed:
        return Choice(best.name, [c.name for c in eligible], False,
                      f"{head} No probe result for {', '.join(not_probed)}, so the choice falls back to validation "
                      f"accuracy alone ({best.name}), which can favour a model that reads hospital or age cues.",
                      not_probed)

    # shares within SHARE_TIE of the lowest count as equal (not rounded into buckets: 0.529 and 0.539
    # are 1 point apart and equal here, while rounding to whole points would have split them)
    lowest = min(context_answered(c.probes) or 0.0 for c in eligible)
    tied = [c for c in eligible if (context_answered(c.probes) or 0.0) <= lowest + SHARE_TIE + 1e-12]

    def drop_of(c: Candidate) -> float:
        drop = mean_shift_drop(c.probes)
        return drop if drop is not None else float("inf")

    chosen = min(tied, key=lambda c: (drop_of(c), context_answered(c.probes) or 0.0))
    facts = "; ".join(
        f"{c.name}: {context_answered(c.probes):.0%} answered with the lungs greyed out, mean shift drop "
        + (f"{mean_shift_drop(c.probes) * 100:.1f} points" if mean_shift_drop(c.probes) is not None else "not measured")
        for c in eligible)
    why = ("reads least from outside the lungs" if len(tied) == 1 else
           f"answers as few lung-less films as any (within {SHARE_TIE:.0%}) and loses least under the acquisition shifts")
    return Choice(chosen.name, [c.name for c in eligible], True,
                  f"{head} Of these, {chosen.name} {why} ({facts}).")
