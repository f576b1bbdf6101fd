"""PACS integration against a real Orthanc (DICOMweb plugin), started by scripts/pacs_dev.sh.

The fixture runs the same script a developer runs; it skips (with the script's reason) only where
Orthanc or its DICOMweb plugin is not installed (.ci/run installs both). Every DICOM is built here.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import chest_phantom, make_dicom, to_uint16

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pacs_dev.sh"

PATIENT_NAME = "Testpatient^Ada"
PATIENT_ID = "PACSID-8841207"
ACCESSION = "ACC-55102"
CT_PATIENT_ID = "PACSID-CT-99172"
IDENTIFIERS = (PATIENT_NAME, "Testpatient", PATIENT_ID, ACCESSION, CT_PATIENT_ID)

DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"

FIXED_BOXES = None  # built lazily (needs cxr_core.detection)


# --- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc():
    """(url, user, password) of a throw-away Orthanc, stopped (storage deleted) after the module."""
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    env: dict[str, str] = {}
    lines = []
    deadline = time.monotonic() + 120  # a start-up guard, not a timing assertion
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.match(r"export (CXR_PACS_\w+)=(.*)$", line.strip())
            if m:
                env[m.group(1)] = m.group(2)
            if line.startswith("[pacs_dev] ready"):
                break
        if len(env) < 3:
            proc.wait(timeout=30)
            err = proc.stderr.read().strip()
            if proc.returncode == 3:  # the script's "not installed" exit
                pytest.skip(f"Orthanc is not installed here: {err}")
            pytest.fail(f"scripts/pacs_dev.sh did not start Orthanc (rc {proc.returncode}): {err[-2000:]}")
        yield env["CXR_PACS_URL"], env["CXR_PACS_USER"], env["CXR_PACS_PASSWORD"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture(scope="module")
def client(orthanc):
    from cxr_core.pacs import PacsClient

    url, user, password = orthanc
    return PacsClient(url, user=user, password=password)


@pytest.fixture
def fixed_boxes(monkeypatch):
    """The detector returns two known boxes (original pixels): the phantom has no lesion to find."""
    from cxr_core import detection
    from cxr_core.detection import Box

    boxes = [Box(41.5, 60.25, 230.0, 300.75, 14, "Active tuberculosis", 0.61, True),
             Box(280.0, 90.0, 470.5, 420.0, 3, "Cardiomegaly", 0.33, False)]
    calls = []

    def fake_detect(image, conf=0.25, classes=None, **kw):
        calls.append(image.meta.original_size)
        return list(boxes)

    monkeypatch.setattr(detection, "detect", fake_detect)
    return boxes, calls


# --- DICOMs built here ----------------------------------------------------------------------------


def _dicom(*, sop_class: str, study_uid: str, series_uid: str, modality: str, view: str | None,
           seed: int, patient_id: str, size: int = 512) -> bytes:
    import pydicom
    from pydicom.uid import generate_uid

    sop_uid = generate_uid()
    data = make_dicom(to_uint16(chest_phantom(size, seed), 12), bits_stored=12, Modality=modality, ViewPosition=view,
                      StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID=sop_uid,
                      SOPClassUID=sop_class, PatientName=PATIENT_NAME, PatientID=patient_id,
                      PatientBirthDate="19700101", PatientSex="F", PatientAge="054Y", AccessionNumber=ACCESSION,
                      StudyDate="20240315", StudyTime="101500", StudyID="S1", SeriesNumber=1,
                      InstanceNumber=seed + 1, BodyPartExamined="CHEST", InstitutionName="Hospital Secret",
                      OtherPatientIDs="OTHER-77", WindowCenter=2048, WindowWidth=4096)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cxr_study(client):
    """A study with a frontal DX (PA), a frontal CR (AP) and a lateral DX, stored by STOW-RS."""
    from pydicom.uid import generate_uid

    study = generate_uid()
    s1, s2 = generate_uid(), generate_uid()
    files = [
        _dicom(sop_class=DX_CLASS, study_uid=study, series_uid=s1, modality="DX", view="PA", seed=0,
               patient_id=PATIENT_ID),
        _dicom(sop_class=DX_CLASS, study_uid=study, series_uid=s1, modality="DX", view="LL", seed=1,
               patient_id=PATIENT_ID),
        _dicom(sop_class=CR_CLASS, study_uid=study, series_uid=s2, modality="CR", view="AP", seed=2,
               patient_id=PATIENT_ID, size=384),
    ]
    client.store(files)
    return study, files


@pytest.fixture(scope="module")
def ct_study(client):
    from pydicom.uid import generate_uid

    study = generate_uid()
    client.store([_dicom(sop_class=CT_CLASS, study_uid=study, series_uid=generate_uid(), modality="CT", view=None,
                         seed=3, patient_id=CT_PATIENT_ID, size=256)])
    return study


def _no_identifiers(*texts: str, extra: tuple[str, ...] = ()) -> None:
    for text in texts:
        for ident in IDENTIFIERS + extra:
            assert ident not in text, f"identifier or secret {ident[:4]}... reached the logs/output"


# --- the round trip ---------------------------------------------------------------------------------


def test_qido_finds_stored_study_by_patient_date_accession(client, cxr_study, ct_study, caplog):
    caplog.set_level(logging.DEBUG)
    study, _ = cxr_study
    by_patient = client.search_studies(patient_id=PATIENT_ID)
    assert [s.study_uid for s in by_patient] == [study]
    assert set(by_patient[0].modalities) == {"CR", "DX"}
    assert by_patient[0].identifiers["PatientID"] == PATIENT_ID  # kept apart, shown only when asked
    assert PATIENT_ID not in repr(by_patient[0])
    assert [s.study_uid for s in client.search_studies(accession=ACCESSION)] == [study]
    assert study in [s.study_uid for s in client.search_studies(date_from="2024-03-01", date_to="2024-03-31")]
    assert study not in [s.study_uid for s in client.search_studies(date_from="2024-04-01", date_to="2024-04-30")]
    # CR/DX only by default: the CT study is not offered, but exists
    assert client.search_studies(patient_id=CT_PATIENT_ID) == []
    assert [s.study_uid for s in client.search_studies(patient_id=CT_PATIENT_ID, modalities=None)] == [ct_study]
    _no_identifiers(caplog.text)


def test_wado_retrieve_gives_the_stored_image(client, cxr_study):
    import pydicom

    study, files = cxr_study
    refs = client.list_instances(study)
    assert len(refs) == 3
    stored = {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID: f for f in files}
    ref = next(r for r in refs if r.view_position == "PA")
    got = pydicom.dcmread(io.BytesIO(client.retrieve(ref)))
    want = pydicom.dcmread(io.BytesIO(stored[ref.sop_uid]))
    assert np.array_equal(got.pixel_array, want.pixel_array)


def test_analyse_push_and_read_back(client, cxr_study, fixed_boxes, caplog, capsys):
    import highdicom as hd
    import pydicom

    from cxr_core.pacs import analyse_study, push_results, read_sr
    from cxr_core.pacs.client import InstanceRef

    caplog.set_level(logging.DEBUG)
    study, files = cxr_study
    boxes, calls = fixed_boxes
    result = analyse_study(client, study, classifier="vbreathnet", heatmap=True)
    by_status = {}
    for r in result.instances:
        by_status.setdefault(r.status, []).append(r)
    assert len(by_status.get("analysed", [])) == 2, [(r.status, r.message) for r in result.instances]
    lateral = by_status["refused"]
    assert len(lateral) == 1 and "lateral" in lateral[0].message and "LL" in lateral[0].message
    assert not result.pushed

    n = push_results(client, result)
    assert n == 4 and result.pushed

    series = {s["modality"]: s for s in client.list_series(study)}
    assert {"DX", "CR", "SR", "OT"} <= set(series)
    assert series["SR"]["series_uid"] == result.sr_series_uid and series["SR"]["n_instances"] == 2
    assert series["OT"]["series_uid"] == result.sc_series_uid and series["OT"]["n_instances"] == 2

    for item in by_status["analysed"]:
        pred = item.analysis.prediction
        sr_ds, sc_ds = item.outputs.sr, item.outputs.sc
        sr_ref = InstanceRef(study, result.sr_series_uid, str(sr_ds.SOPInstanceUID), None, "SR", None, None, None)
        back = pydicom.dcmread(io.BytesIO(client.retrieve(sr_ref)))
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        assert isinstance(hd.sr.srread(io.BytesIO(client.retrieve(sr_ref))), hd.sr.ComprehensiveSR)
        assert back.StudyInstanceUID == study and back.PatientID == PATIENT_ID
        # only what the standard requires is copied from the source
        for keyword in ("PatientAge", "InstitutionName", "OtherPatientIDs"):
            assert keyword not in back
        said = read_sr(back)
        assert said["predicted"] == pred.predicted
        assert said["abstained"] == pred.abstained
        assert said["suggested"] == (None if pred.abstained else pred.predicted)
        assert said["reasons"] == (list(pred.reasons) if pred.abstained else [])
        for c, p in pred.probabilities.items():
            assert said["probabilities"][c] == pytest.approx(p, abs=1e-9)
        assert said["quality"] == item.analysis.quality.verdict
        assert "V-BreathNet" in said["algorithms"]
        # the boxes analyse gave, as image regions on the source image
        assert item.boxes == boxes
        assert len(said["boxes"]) == len(item.boxes)
        for got, want in zip(said["boxes"], item.boxes):
            assert got["label"] == want.label and got["class_id"] == want.class_id
            assert got["confidence"] == pytest.approx(want.confidence, abs=1e-9)
            assert got["validated"] == want.validated
            assert got["box_xyxy"] == pytest.approx([want.x0, want.y0, want.x1, want.y1], abs=1e-3)
            assert got["referenced_sop_uid"] == item.ref.sop_uid
        # algorithm identification with the weights checksum
        raw = client.retrieve(sr_ref)
        assert re.search(rb"weights SHA-256 [0-9a-f]{64}", raw)

        sc_ref = InstanceRef(study, result.sc_series_uid, str(sc_ds.SOPInstanceUID), None, "OT", None, None, None)
        sc = pydicom.dcmread(io.BytesIO(client.retrieve(sc_ref)))
        assert sc.StudyInstanceUID == study and sc.Modality == "OT"
        assert sc.BurnedInAnnotation == "YES" and "not a diagnosis" in sc.ImageComments
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == item.ref.sop_uid
        assert "PatientAge" not in sc and "InstitutionName" not in sc
        px = sc.pixel_array
        src_w, src_h = item.analysis.image.width, item.analysis.image.height
        assert px.shape[1] == src_w and px.shape[0] > src_h  # the burnt-in band sits above the film
        band = px[: px.shape[0] - src_h]
        assert band.max() == 255 and np.median(band) == 0  # white text on black
    assert len(calls) == 2  # the (fake) detector ran once per analysed image

    out = capsys.readouterr()
    _no_identifiers(caplog.text, out.out, out.err)


def test_cli_search_analyse_push(orthanc, cxr_study, fixed_boxes, monkeypatch, caplog, capsys, tmp_path):
    from cxr_core.pacs.__main__ import main

    caplog.set_level(logging.DEBUG)
    url, user, password = orthanc
    monkeypatch.setenv("CXR_PACS_URL", url)
    monkeypatch.setenv("CXR_PACS_USER", user)
    monkeypatch.setenv("CXR_PACS_PASSWORD", password)
    study, _ = cxr_study
    assert main(["search", "--patient-id", PATIENT_ID]) == 0
    out = capsys.readouterr().out
    assert study in out and "1 study" in out
    assert main(["analyse", "--study", study, "--push", "--no-heatmap", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "Stored:" in out.out
    assert re.search(r"\b2 of \d+ instance\(s\) analysed", out.out)  # earlier results (SR/OT) are out of scope
    assert len(list(tmp_path.glob("result_*_sr.dcm"))) == 2
    _no_identifiers(caplog.text, out.out, out.err, extra=(password,))
    # identifiers only when asked for
    assert main(["search", "--patient-id", PATIENT_ID, "--show-identifiers"]) == 0
    assert PATIENT_ID in capsys.readouterr().out


# --- failures become messages ---------------------------------------------------------------------------


def test_wrong_password(orthanc, caplog, capsys):
    from cxr_core.pacs import PacsClient, PacsError
    from cxr_core.pacs.__main__ import EXIT_CONNECTION, main

    url, user, _ = orthanc
    with pytest.raises(PacsError) as err:
        PacsClient(url, user=user, password="not-the-password-42").search_studies(patient_id=PATIENT_ID)
    assert err.value.kind == "unauthorised"
    assert "401" in str(err.value) and "password" in str(err.value)
    rc = main(["search", "--url", url, "--user", user, "--password", "not-the-password-42"])
    out = capsys.readouterr()
    assert rc == EXIT_CONNECTION
    assert "password" in out.err and "Traceback" not in out.err
    _no_identifiers(caplog.text, out.out, out.err, extra=("not-the-password-42",))


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_server_down(capsys):
    from cxr_core.pacs import PacsClient, PacsError
    from cxr_core.pacs.__main__ import EXIT_CONNECTION, main

    url = f"http://127.0.0.1:{_free_port()}/dicom-web"
    with pytest.raises(PacsError) as err:
        PacsClient(url, user="u", password="p").search_studies()
    assert err.value.kind == "unreachable" and "cannot be reached" in str(err.value)
    assert main(["search", "--url", url]) == EXIT_CONNECTION
    out = capsys.readouterr()
    assert "cannot be reached" in out.err and "Traceback" not in out.err


def test_ct_study_is_refused(client, orthanc, ct_study, monkeypatch, capsys):
    from cxr_core.pacs import PacsError, analyse_study
    from cxr_core.pacs.__main__ import EXIT_NOT_ANALYSABLE, main

    with pytest.raises(PacsError) as err:
        analyse_study(client, ct_study, classifier="vbreathnet")
    assert err.value.kind == "refused"
    assert "modality CT" in str(err.value) and "CR/DX" in str(err.value)
    url, user, password = orthanc
    monkeypatch.setenv("CXR_PACS_PASSWORD", password)
    assert main(["analyse", "--url", url, "--user", user, "--study", ct_study, "--push"]) == EXIT_NOT_ANALYSABLE
    out = capsys.readouterr()
    assert "modality CT" in out.err and "Traceback" not in out.err
    assert [s["modality"] for s in client.list_series(ct_study)] == ["CT"]  # nothing was written


def test_unknown_study_and_not_dicomweb(client, orthanc):
    from pydicom.uid import generate_uid

    from cxr_core.pacs import PacsClient, PacsError, analyse_study

    with pytest.raises(PacsError) as err:
        analyse_study(client, generate_uid(), classifier="vbreathnet")
    assert err.value.kind == "not_found"
    url, user, password = orthanc
    # Orthanc's own REST API (not DICOMweb) answers /studies with a list of its ids: not DICOM JSON
    with pytest.raises(PacsError) as err:
        PacsClient(url.removesuffix("/dicom-web"), user=user, password=password).search_studies()
    assert err.value.kind in {"malformed", "not_found", "refused"} and "DICOMweb" in str(err.value)


@pytest.fixture
def not_dicomweb_server():
    """A real HTTP server that answers every request with JSON that is not DICOM JSON."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"studies": "none here", "version": 3}'
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()


def test_malformed_answer(not_dicomweb_server, capsys):
    from cxr_core.pacs import PacsClient, PacsError
    from cxr_core.pacs.__main__ import EXIT_NOT_ANALYSABLE, main

    with pytest.raises(PacsError) as err:
        PacsClient(not_dicomweb_server).search_studies()
    assert err.value.kind == "malformed" and "not valid DICOMweb" in str(err.value)
    assert main(["search", "--url", not_dicomweb_server]) == EXIT_NOT_ANALYSABLE
    assert "Traceback" not in capsys.readouterr().err


# --- without a server ---------------------------------------------------------------------------------------


def test_timeout_and_bad_config_messages(monkeypatch):
    import requests

    from cxr_core.pacs import PacsClient, PacsError

    with pytest.raises(PacsError) as err:
        PacsClient("not a url")
    assert err.value.kind == "config"
    c = PacsClient("http://127.0.0.1:9/dicom-web", timeout=3)

    def slow(**kw):
        raise requests.exceptions.ReadTimeout("read timed out")

    monkeypatch.setattr(c._client, "search_for_studies", slow)
    with pytest.raises(PacsError) as err:
        c.search_studies()
    assert err.value.kind == "timeout" and "did not answer within 3 s" in str(err.value)
    with pytest.raises(PacsError):
        c.search_studies(date_from="March")
    assert "password" not in repr(PacsClient("http://h/dicom-web", user="u", password="password"))


def test_outputs_for_an_uploaded_dicom(fixed_boxes):
    """The Diagnose page's downloads: SR + SC bytes from an Analysis and the upload's bytes."""
    import pydicom
    from pydicom.uid import generate_uid

    from cxr_core import pipeline
    from cxr_core.pacs import dicom_outputs, read_sr

    data = _dicom(sop_class=DX_CLASS, study_uid=generate_uid(), series_uid=generate_uid(), modality="DX",
                  view="PA", seed=5, patient_id=PATIENT_ID, size=256)
    a = pipeline.analyse(data, classifier="vbreathnet")
    shown = a.boxes(conf=0.5)  # only the 0.61 box
    out = dicom_outputs(a, data, boxes=shown, heatmap=False)
    said = read_sr(out.sr_bytes)
    assert [b["label"] for b in said["boxes"]] == ["Active tuberculosis"]
    assert said["probabilities"] == pytest.approx(a.prediction.probabilities, abs=1e-9)
    sc = pydicom.dcmread(io.BytesIO(out.sc_bytes))
    src = pydicom.dcmread(io.BytesIO(data))
    assert sc.StudyInstanceUID == src.StudyInstanceUID != sc.SeriesInstanceUID
    with pytest.raises(ValueError):
        dicom_outputs(a, b"\x89PNG not dicom at all", boxes=None)


# --- the app page ------------------------------------------------------------------------------------------


def test_pacs_page_search_analyse_send(orthanc, cxr_study, fixed_boxes, monkeypatch):
    """The PACS page through AppTest against the real server: search, analyse, review, send."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    url, user, password = orthanc
    monkeypatch.setenv("CXR_PACS_URL", url)
    monkeypatch.setenv("CXR_PACS_USER", user)
    monkeypatch.setenv("CXR_PACS_PASSWORD", password)
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/pacs.py").run()
    assert not at.exception, at.exception
    at.text_input(key="pacs_patient").input(PATIENT_ID)
    at.button(key="pacs_search").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    radio = at.radio(key="pacs_study_choice")
    assert len(radio.options) == 1
    page_text = " ".join(str(m.value) for m in at.markdown) + " ".join(radio.options)
    assert PATIENT_ID not in page_text and PATIENT_NAME not in page_text  # hidden unless asked
    at.button(key="pacs_analyse").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    rows = at.dataframe[0].value
    assert (rows["Status"] == "analysed").sum() == 2
    push = at.button(key="pacs_push")
    assert push.disabled  # only after review
    at.checkbox(key="pacs_reviewed").check()
    at.run()
    at.button(key="pacs_push").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("stored in the study" in s.value for s in at.success)
    st.cache_resource.clear()


def test_a_dicomweb_query_is_a_batch_input(orthanc, client, cxr_study, monkeypatch) -> None:
    """`python -m cxr_core.batch "dicomweb+http://...?StudyInstanceUID=..."`: the frontal CR/DX images of
    the study (not the lateral, not our own SR/SC), each read by WADO in the worker, scored as the app does."""
    import numpy as np

    from cxr_core import pipeline
    from cxr_core.batch import inputs as batch_inputs
    from cxr_core.pacs import batch as pacs_batch

    url, user, password = orthanc
    monkeypatch.setenv("CXR_PACS_USER", user)
    monkeypatch.setenv("CXR_PACS_PASSWORD", password)
    pacs_batch._client.cache_clear()
    study, files = cxr_study
    spec = "dicomweb+" + url + f"?StudyInstanceUID={study}"
    kind, items = batch_inputs.resolve_inputs(spec)
    assert kind == "dicomweb" and len(items) == 2  # PA and AP; the lateral is out of scope
    assert all(i.file.startswith(f"dicomweb://{study}/") and password not in i.source for i in items)
    by_sop = {i.file.rsplit("/", 1)[1]: i for i in items}
    import pydicom

    for data in (files[0], files[2]):
        sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        got = batch_inputs.read_source(by_sop[sop].source)
        a, b = pipeline.analyse(got, classifier="vbreathnet"), pipeline.analyse(data, classifier="vbreathnet")
        np.testing.assert_allclose(list(a.prediction.probabilities.values()),
                                   list(b.prediction.probabilities.values()), atol=1e-6)
    with pytest.raises(batch_inputs.InputError, match="Unknown DICOMweb filter"):
        batch_inputs.resolve_inputs("dicomweb+" + url + "?Modality=CT")
    monkeypatch.setenv("CXR_PACS_PASSWORD", "wrong-password-1")
    pacs_batch._client.cache_clear()
    with pytest.raises(batch_inputs.InputError) as exc:
        batch_inputs.resolve_inputs(spec)
    assert "wrong-password-1" not in str(exc.value)
    pacs_batch._client.cache_clear()
