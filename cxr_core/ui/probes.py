"""Probe results (docs/probes/<model>.json) -> the comparison page's tables and one-line readings.

`PROBES_NOTE` says on the page what the probes ask and how they were made. The readings are rules on
the measured numbers (the constants below), never hand-written verdicts.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from cxr_core import settings
from cxr_core.provenance import measured_on
from cxr_core.ui.cards import display_name, read_json

PROBES_NOTE = (
    "The probes ask what a model reads, which in-split accuracy cannot: in cxr3 the classes differ by source "
    "hospital and age, so a model can score well by reading the film's surroundings. Context-only: the lungs "
    "(shipped segmenter mask, dilated) replaced by the mean grey of the rest; a model that reads the lungs should "
    "fall to chance and stop answering. Acquisition shifts that differ between hospitals (gamma, contrast, noise, "
    "blur, JPEG, downscale, border crop, burnt-in markers, inversion): the accuracy drop per shift. Made by "
    "`python -m cxr_core.evaluate --model NAME --split test --probes --out docs/probes/NAME.json` "
    "(confidence rule only; 'answered by the app' adds the quality gate where it was measured). 'Measured on' "
    "compares the SHA-256 of the weights each result records with the weights the app now runs."
)

# A model "reads the context" when, with the lungs greyed out, it is clearly above chance or still
# answers more than this share: 10 % answered on films without lungs is already a shortcut signal.
CONTEXT_ANSWERED_MAX = 0.10
CONTEXT_ABOVE_CHANCE = 0.10
SHIFT_DROP_NOTABLE = 0.05  # an accuracy drop of 5 points under one shift is worth a line


def load_probes(names: tuple[str, ...] = settings.CLASSIFIERS) -> dict[str, dict[str, Any]]:
    """Probe results per model that has a file (missing or unreadable files are left out), each with
    the `weights_sha256` of the weights it measured (None in files from before it was recorded)."""
    out = {}
    for name in names:
        data = read_json(settings.PROBES_DIR / f"{name}.json")
        if data and isinstance(data.get("probes"), dict):
            out[name] = {**data["probes"], "weights_sha256": data.get("weights_sha256")}
    return out


def probes_for(pair: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Probe results for the keys of an ablation group (`ablation_pairs`), from docs/probes/<stem>.json
    (e.g. vbreathnet__128px.json for 'vbreathnet (128px)'); keys without a file are left out."""
    from cxr_core.ui.cards import ablation_stem

    stems = {key: ablation_stem(key) for key in pair}
    found = load_probes(tuple(s for s in stems.values() if s))
    return {key: found[stem] for key, stem in stems.items() if stem in found}


def probe_table(probes: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per model: as-is, context-only and the worst shift, accuracy and share answered."""
    rows = []
    for name, p in probes.items():
        base, ctx = p.get("none") or {}, p.get("context_only") or {}
        shifts = p.get("shifts") or {}
        worst = max(shifts, key=lambda k: shifts[k].get("accuracy_drop", float("-inf"))) if shifts else None
        rows.append({
            "Model": display_name(name),
            "accuracy (test, as is)": base.get("accuracy"),
            "answered (as is)": base.get("coverage"),
            "accuracy, lungs greyed out": ctx.get("accuracy"),
            "answered, lungs greyed out": ctx.get("coverage"),
            "answered by the app (gate + rule), lungs greyed out": ctx.get("coverage_with_gate"),
            "chance": p.get("chance_accuracy"),
            "worst shift": worst,
            "accuracy drop, worst shift": shifts[worst].get("accuracy_drop") if worst else None,
            "measured on": measured_on(p, name) or "",
        })
    return pd.DataFrame(rows)


def shift_table(probes: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Accuracy drop (points of accuracy, positive = worse) per shift (rows) and model (columns)."""
    data = {display_name(name): {k: v.get("accuracy_drop") for k, v in (p.get("shifts") or {}).items()}
            for name, p in probes.items()}
    return pd.DataFrame(data)


def readings(name: str, p: Mapping[str, Any]) -> list[str]:
    """One line per probe saying what the numbers mean, by the rules at the top of this module."""
    label = display_name(name)
    out = []
    if measured_on(p, name) == "OTHER weights":
        out.append(f"{label}: these probe figures were measured on other weights than the ones now shipped; "
                   f"rerun `python -m cxr_core.evaluate --model {name} --split test --probes --out "
                   f"docs/probes/{name}.json` before reading them as this model's.")
    ctx, chance = p.get("context_only") or {}, p.get("chance_accuracy")
    if ctx and chance is not None:
        acc, answered = ctx.get("accuracy", float("nan")), ctx.get("coverage", float("nan"))
        if answered > CONTEXT_ANSWERED_MAX or acc > chance + CONTEXT_ABOVE_CHANCE:
            line = (f"{label}: with the lungs greyed out it still answers {answered:.0%} of films "
                    f"(accuracy {acc:.2f}, chance {chance:.2f}) - its confidence comes partly from outside "
                    "the lungs (hospital, age or film cues), and the confidence rule alone does not stop such films.")
        else:
            line = (f"{label}: with the lungs greyed out it answers {answered:.0%} of films at accuracy {acc:.2f} "
                    f"(chance {chance:.2f}) - no sign that it classifies from outside the lungs.")
        gated = ctx.get("coverage_with_gate")
        line += (f" With the app's quality gate in front, {gated:.0%} would be answered."
                 if gated is not None else " (What the quality gate does with these films was not measured for this run.)")
        out.append(line)
    shifts = p.get("shifts") or {}
    bad = {k: v["accuracy_drop"] for k, v in shifts.items() if (v.get("accuracy_drop") or 0) >= SHIFT_DROP_NOTABLE}
    if shifts:
        if bad:
            listed = ", ".join(f"{k} (-{d * 100:.1f} points)" for k, d in sorted(bad.items(), key=lambda kv: -kv[1]))
            out.append(f"{label}: accuracy falls by {SHIFT_DROP_NOTABLE * 100:.0f} points or more under {listed}.")
        else:
            out.append(f"{label}: no shift lowers accuracy by {SHIFT_DROP_NOTABLE * 100:.0f} points or more "
                       f"(largest drop {max((v.get('accuracy_drop') or 0) for v in shifts.values()) * 100:.1f} points).")
    return out
