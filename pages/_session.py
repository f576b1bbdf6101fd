"""Per-session memory for the Diagnose page: decoded uploads and their `pipeline.Analysis`.

Uploads are held in memory only (this session's state), never written to disk or logged. Each
upload is decoded once per session and analysed once per (model, age group); Streamlit reruns the
page on every widget change, and these caches are what keep a slider move from decoding a
12-bit DICOM or running the model again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable

import streamlit as st

from cxr_core import pipeline, settings

MAX_CACHED = 24  # entries kept per session (a small worklist), oldest dropped first
GENERIC_ERROR = "Something went wrong while analysing this image. The result is not shown; try again or use another file."
_USER_FACING = {"ModelUnavailableError", "ImageLoadError", "FileNotFoundError"}


def friendly(exc: Exception) -> str:
    """The message a user sees: our own user-facing errors verbatim, anything else generic."""
    return str(exc) if type(exc).__name__ in _USER_FACING else GENERIC_ERROR


def cached(key: tuple, compute: Callable[[], Any]) -> tuple[str, Any]:
    """Memoise per session: ('ok', value) or ('error', user-facing message)."""
    store: OrderedDict = st.session_state.setdefault("dx_cache", OrderedDict())
    if key in store:
        store.move_to_end(key)
        return store[key]
    try:
        value = ("ok", compute())
    except Exception as exc:  # shown as a message, never as a traceback
        value = ("error", friendly(exc))
    store[key] = value
    while len(store) > MAX_CACHED:
        store.popitem(last=False)
    return value


def attempt(compute: Callable[[], Any]) -> tuple[str, Any]:
    """Like `cached` without memory: for layers the `Analysis` caches itself."""
    try:
        return "ok", compute()
    except Exception as exc:
        return "error", friendly(exc)


def digest_of(upload: Any) -> str:
    """sha256 of the upload's bytes, hashed once per uploaded file and session: every rerun asks
    for it several times (decode, analysis, correction, worklist), and a DICOM can be 30 MB."""
    file_id = getattr(upload, "file_id", None)
    if file_id is None:
        return hashlib.sha256(upload.getvalue()).hexdigest()
    memo: dict = st.session_state.setdefault("dx_digests", {})
    if file_id not in memo:
        memo[file_id] = hashlib.sha256(upload.getvalue()).hexdigest()
    return memo[file_id]


def age_options(from_header: str | None) -> dict[str, str | None]:
    """Age-group choices; with a DICOM age the header's band is the default and "Not given" is not offered."""
    options: dict[str, str | None] = {} if from_header else {"Not given": None}
    return options | {settings.AGE_GROUP_LABELS[g] + (" (DICOM header)" if g == from_header else ""): g
                      for g in settings.AGE_GROUPS}


def age_key(digest: str) -> str:
    return f"dx_age_{digest[:16]}"


REVIEWED_STORE = "dx_reviewed"  # {digest: True}: the reader's own "reviewed" mark per film
AGE_STORE = "dx_age_choice"  # {digest: age group or None}: outlives the per-film widget's state


def age_store() -> dict[str, str | None]:
    """The age group chosen per film. Streamlit drops a widget's state when the widget is not drawn
    (another worklist film is open), so the choice is kept here and fed back as the widget's default."""
    return st.session_state.setdefault(AGE_STORE, {})


def remember_age(digest: str, from_header: str | None) -> None:
    """on_change of the age widget: keep its current choice for this film."""
    label = st.session_state.get(age_key(digest))
    options = age_options(from_header)
    if label in options:
        age_store()[digest] = options[label]


def age_index(digest: str, from_header: str | None) -> int:
    """Index of the film's remembered age group among its options (the header's band by default)."""
    values = list(age_options(from_header).values())
    stored = age_store().get(digest, from_header)
    return values.index(stored) if stored in values else values.index(from_header)


def chosen_age(digest: str, from_header: str | None) -> str | None:
    """The age group picked for this upload (remembered per film), else the header's band."""
    label = st.session_state.get(age_key(digest))
    options = age_options(from_header)
    if label in options:
        return options[label]
    stored = age_store().get(digest, from_header)
    return stored if stored in options.values() else from_header


def decoded(upload: Any, show_ids: bool) -> tuple[str, Any]:
    """('ok', CXRImage) or ('error', message), decoded once per upload and identifier choice."""
    digest = digest_of(upload)
    return cached(("image", digest, show_ids),
                  lambda: pipeline.decode(upload.getvalue(), upload.name, include_identifiers=show_ids))


def analysed(upload: Any, image: Any, clf: Any, model_name: str, age_group: str | None,
             show_ids: bool) -> tuple[str, Any]:
    """('ok', Analysis) or ('error', message) for this upload, model and age group.

    The worklist overview and the single-image view use the same keys, so neither computes
    what the other already did. `id(clf)` is in the key: a model reloaded after training is new.
    """
    key = ("analysis", digest_of(upload), show_ids, model_name if clf is not None else None, id(clf), age_group)
    return cached(key, lambda: pipeline.analyse(image, classifier=clf, age_group=age_group,
                                                include_identifiers=show_ids))


MAX_ROWS = 64  # worklist overview lines kept per session (a few strings each)


def overview_row(upload: Any, model_name: str, clf: Any, show_ids: bool) -> dict[str, str]:
    """One worklist line (quality verdict, suggestion or abstention), memoised per file, model and age."""
    from cxr_core import dashboard

    digest = digest_of(upload)
    rows: OrderedDict = st.session_state.setdefault("dx_rows", OrderedDict())
    status, image = decoded(upload, show_ids)
    age = chosen_age(digest, image.meta.age_group) if status == "ok" else None
    key = (digest, model_name, id(clf), age, show_ids)
    if key not in rows:
        status, value = status, image
        if status == "ok":
            status, value = analysed(upload, value, clf, model_name, age, show_ids)
        rows[key] = (dashboard.worklist_row(upload.name, value.quality, value.prediction) if status == "ok"
                     else dashboard.worklist_row(upload.name, error=value))
        while len(rows) > MAX_ROWS:
            rows.popitem(last=False)
    return rows[key] | {"File": upload.name}


CORRECTED_STORE = "dx_corrected"  # digest -> True when the user asked to turn that film upright


def set_correction(digest: str, on: bool) -> None:
    """on_click of the correction buttons: remember the choice per film."""
    st.session_state.setdefault(CORRECTED_STORE, {})[digest] = on


def with_correction(upload: Any, analysis: Any, model_name: str, clf: Any, age_group: str | None,
                    show_ids: bool) -> tuple[Any, str | None]:
    """(analysis to show, error message). The corrected analysis when the user asked for it and the
    orientation check found a rotated or inverted film; memoised like the analysis itself."""
    digest = digest_of(upload)
    if not st.session_state.get(CORRECTED_STORE, {}).get(digest):
        return analysis, None
    key = ("corrected", digest, show_ids, model_name if clf is not None else None, id(clf), age_group)
    status, fixed = cached(key, analysis.corrected)
    if status != "ok":
        return analysis, fixed
    return (fixed if fixed is not None else analysis), None
