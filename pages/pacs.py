"""PACS: search a DICOMweb server, analyse a study, send the SR and secondary capture back after review.

The server comes from `.streamlit/secrets.toml` ([pacs] url / user / password) or the environment
(CXR_PACS_URL / CXR_PACS_USER / CXR_PACS_PASSWORD); the password is never shown. Results stay in
this session's memory until the clinician sends them. Every decision is made in cxr_core.pacs.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from cxr_core import dashboard, settings
from pages import _panels as panels
from pages._common import classifier_status, ensure_navigation, get_classifier, limits_box
from pages._session import GENERIC_ERROR

ensure_navigation()


def server_config() -> dict[str, str | None]:
    """url / user / password from st.secrets [pacs], else the environment."""
    secrets: dict[str, Any] = {}
    try:
        secrets = dict(st.secrets.get("pacs", {}) or {})
    except Exception:  # no secrets.toml: the environment decides
        secrets = {}
    return {
        "url": secrets.get("url") or os.environ.get("CXR_PACS_URL"),
        "user": secrets.get("user") or os.environ.get("CXR_PACS_USER"),
        "password": secrets.get("password") or os.environ.get("CXR_PACS_PASSWORD"),
    }


def _client(config: dict[str, str | None]):
    from cxr_core.pacs import PacsClient

    return PacsClient(config["url"] or "", user=config["user"], password=config["password"])


def _message(exc: Exception) -> str:
    from cxr_core.models import ModelUnavailableError
    from cxr_core.pacs import PacsError

    return str(exc) if isinstance(exc, (PacsError, ModelUnavailableError)) else GENERIC_ERROR


def _study_label(i: int, s: Any, show_ids: bool) -> str:
    date = s.study_date or "no date"
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    text = f"{i + 1}. {date} · {'/'.join(s.modalities) or '?'} · {s.n_instances if s.n_instances is not None else '?'} image(s)"
    if s.description:
        text += f" · {s.description}"
    if show_ids and s.identifiers:
        text += " · " + " ".join(s.identifiers.get(k, "") for k in ("PatientID", "PatientName"))
    return text


def _request(action: str) -> None:
    """Button callback: remembered until the page acts on it (survives a rerun before the button)."""
    st.session_state["pacs_action"] = action


def _requested(action: str) -> bool:
    if st.session_state.get("pacs_action") == action:
        del st.session_state["pacs_action"]
        return True
    return False


def main() -> None:
    st.title("PACS")
    st.caption("Find chest radiographs on the PACS (DICOMweb), analyse a study, and after review send the "
               "structured report and the overlay back into the study as new series.")

    trained_names, display_names = classifier_status()
    with st.sidebar:
        model_name, show_ids = panels.model_sidebar(trained_names, display_names)

    config = server_config()
    if not config["url"]:
        st.info("No PACS is configured. Add a `[pacs]` section with `url`, `user` and `password` to "
                "`.streamlit/secrets.toml`, or set CXR_PACS_URL / CXR_PACS_USER / CXR_PACS_PASSWORD. "
                "For a local test server run `bash scripts/pacs_dev.sh` (docs/pacs.md).", icon=":material/dns:")
        st.stop()
    st.caption(f"Server: `{dashboard.md_escape(config['url'])}`" + (f" as `{dashboard.md_escape(config['user'])}`"
                                                                      if config["user"] else ""))

    with st.container(border=True):
        c1, c2, c3, c4 = st.columns(4)
        patient_id = c1.text_input("Patient ID", key="pacs_patient")
        accession = c2.text_input("Accession number", key="pacs_accession")
        date_from = c3.text_input("From (YYYY-MM-DD)", key="pacs_from")
        date_to = c4.text_input("To (YYYY-MM-DD)", key="pacs_to")
        st.button("Search CR/DX studies", icon=":material/search:", key="pacs_search", on_click=_request, args=("search",))
    searched = _requested("search")
    if searched:
        try:
            st.session_state["pacs_studies"] = _client(config).search_studies(
                patient_id=patient_id or None, accession=accession or None, date_from=date_from or None,
                date_to=date_to or None)
            st.session_state.pop("pacs_result", None)
        except Exception as exc:
            st.session_state.pop("pacs_studies", None)
            st.error(_message(exc), icon=":material/error:")
    studies = st.session_state.get("pacs_studies")
    if studies is None:
        st.stop()
    if not studies:
        st.info("No CR/DX study matches this search.", icon=":material/search_off:")
        st.stop()
    labels = [_study_label(i, s, show_ids) for i, s in enumerate(studies)]
    choice = st.radio(f"Studies ({len(studies)})", labels, key="pacs_study_choice")
    study = studies[labels.index(choice) if choice in labels else 0]
    if not show_ids:
        st.caption("Patient identifiers are hidden. Tick *Show patient identifiers* in the sidebar to see them.")

    if model_name not in trained_names:
        st.warning(f"{display_names.get(model_name, model_name)} is not trained, so studies cannot be analysed.",
                   icon=":material/model_training:")
        st.stop()
    key = (study.study_uid, model_name)
    st.button("Analyse this study", icon=":material/play_arrow:", key="pacs_analyse", on_click=_request,
              args=("analyse",))
    if _requested("analyse"):
        from cxr_core.pacs import analyse_study

        try:
            with st.spinner("Retrieving and analysing the study's frontal CR/DX images..."):
                result = analyse_study(_client(config), study.study_uid, classifier=get_classifier(model_name),
                                       include_identifiers=False)
            st.session_state["pacs_result"] = (key, result)
        except Exception as exc:
            st.session_state.pop("pacs_result", None)
            st.error(_message(exc), icon=":material/error:")
    stored = st.session_state.get("pacs_result")
    if not stored or stored[0] != key:
        st.stop()
    result = stored[1]
    show_result(result, config)


def show_result(result: Any, config: dict[str, str | None]) -> None:
    from cxr_core.pacs.workflow import study_rows

    st.subheader("Results")
    st.dataframe(study_rows(result), hide_index=True, key="pacs_rows")
    st.caption(result.summary())
    card = None
    for i, item in enumerate(result.analysed, 1):
        card = card or item.analysis.card()
        pred = item.analysis.prediction
        title = f"Image {i}: " + ("no suggestion (abstained)" if pred is None or pred.abstained else pred.label)
        with st.expander(title, expanded=i == 1):
            if item.outputs is not None:
                st.image(item.outputs.sc.pixel_array, width="stretch",
                         caption="The secondary capture that will be stored (disclaimer burnt in).")
                d1, d2 = st.columns(2)
                d1.download_button("Structured report (DICOM SR)", item.outputs.sr_bytes, f"result_{i:03d}_sr.dcm",
                                   mime="application/dicom", key=f"pacs_sr_{i}")
                d2.download_button("Secondary capture (DICOM)", item.outputs.sc_bytes, f"result_{i:03d}_sc.dcm",
                                   mime="application/dicom", key=f"pacs_sc_{i}")
            if pred is not None and pred.abstained:
                for reason in pred.reasons:
                    st.warning(reason, icon=":material/warning:")
            for note in item.notes:
                st.warning(note, icon=":material/warning:")
    limits_box(card, expanded=False)
    if not result.outputs():
        st.info("No image of this study could be analysed, so there is nothing to send.", icon=":material/info:")
        return
    if result.pushed:
        st.success(result.push_message, icon=":material/cloud_done:")
        return
    reviewed = st.checkbox("I have reviewed these results", key="pacs_reviewed",
                           help="The results go into the patient's study, where every viewer shows them.")
    st.button("Send results to PACS", icon=":material/cloud_upload:", disabled=not reviewed, key="pacs_push",
              on_click=_request, args=("push",))
    if _requested("push"):
        from cxr_core.pacs import push_results

        try:
            with st.spinner("Storing the SR and secondary capture..."):
                push_results(_client(config), result)
            st.success(result.push_message, icon=":material/cloud_done:")
        except Exception as exc:
            st.error(_message(exc), icon=":material/error:")
    st.caption(settings.DISCLAIMER)


try:
    main()
except Exception:  # st.stop / st.rerun are BaseExceptions and pass through
    st.error(GENERIC_ERROR, icon=":material/error:")
finally:
    st.session_state.pop("pacs_action", None)  # a click acts once, in the run it was made
