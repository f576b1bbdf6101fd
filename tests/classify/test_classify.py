"""cxr_core.classify's abstention rule: confidence, quality, and the training population's age scope."""

from __future__ import annotations

import csv
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import chest_phantom, make_dicom, requires_cxr3, to_uint16

from cxr_core import classify, settings
from cxr_core.evaluate import abstention_summary
from cxr_core.io import age_group_for_years, load_image

COVID, NORMAL, VIRAL = (np.eye(3)[i] * 0.9 + 0.1 / 3 for i in range(3))  # confident one-hot-ish rows


@requires_cxr3
def test_trained_age_groups_match_the_training_split() -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    with settings.CXR3_MANIFEST.open() as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "train":
                seen[row["label"]].add(row["age_group"])
    assert {c: tuple(sorted(g)) for c, g in seen.items()} == {
        c: tuple(sorted(g)) for c, g in settings.TRAINED_AGE_GROUPS.items()}


@pytest.mark.parametrize(("years", "group"), [
    (0.5, "other"), (1, "paediatric"), (5.9, "paediatric"), (6, "other"), (17.9, "other"), (18, "adult"), (90, "adult"),
])
def test_age_bands_follow_the_training_data(years: float, group: str) -> None:
    assert age_group_for_years(years) == group


def test_calls_outside_the_training_population_abstain() -> None:
    # no age given: only confidence counts
    assert classify.decide(VIRAL, 0.8) == (2, False, [])
    idx, abstained, reasons = classify.decide(VIRAL, 0.8, age_group="adult")
    assert (idx, abstained) == (2, True) and reasons == [
        "The training data has no Viral Pneumonia in adults, so a Viral Pneumonia call for this patient is "
        "outside what the model learned."]
    assert classify.decide(COVID, 0.8, age_group="paediatric")[1] is True
    assert classify.decide(COVID, 0.8, age_group="adult")[1] is False
    assert classify.decide(NORMAL, 0.8, age_group="paediatric")[1] is False
    assert classify.decide(NORMAL, 0.8, age_group="other")[2][0].startswith("The training data has no patients of this age")
    # every reason is reported, the most basic first (a worklist line shows only the first)
    failed = SimpleNamespace(ok=False, reasons=["too dark"])
    reasons = classify.decide(np.array([0.2, 0.3, 0.5]), 0.8, failed, age_group="adult")[2]
    assert [r[:20] for r in reasons] == ["Image quality check ", "The training data ha", "Confidence 50% is be"]
    with pytest.raises(ValueError, match="Unknown age group 'teen'"):
        classify.decide(NORMAL, 0.8, age_group="teen")


@pytest.mark.parametrize(("age", "group"), [("045Y", "adult"), ("003Y", "paediatric"), ("030M", "paediatric"),
                                           ("010Y", "other"), ("200D", "other"), ("45", None), ("", None)])
def test_dicom_patient_age_gives_the_group_without_identifiers(age: str, group: str | None) -> None:
    image = load_image(make_dicom(to_uint16(chest_phantom(128), 12), bits_stored=12, PatientAge=age or None))
    assert image.meta.age_group == group
    assert image.meta.identifiers == {}  # the age band is kept, the age itself is not


def test_abstention_summary_counts_what_the_scope_rule_stops() -> None:
    probs = np.stack([COVID, VIRAL, VIRAL, NORMAL, np.array([0.4, 0.3, 0.3])])
    y = np.array([0, 0, 2, 1, 0])
    out = abstention_summary(y, probs, 0.8, ["adult", "adult", "paediatric", "adult", "adult"])
    assert out["n_answered"] == 4 and out["accuracy_answered"] == 0.75
    scoped = out["with_age_scope"]
    assert scoped["n_answered"] == 3 and scoped["accuracy_answered"] == 1.0
    assert scoped["stopped_by_age_scope"] == 1 and scoped["stopped_by_age_scope_wrong"] == 1
    assert "with_age_scope" not in abstention_summary(y, probs, 0.8)
