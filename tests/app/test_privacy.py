"""Privacy and safe rendering of uploads.

* Uploads never touch the disk: no file is opened for writing while the Diagnose page handles an
  upload (a `sys.addaudithook` records every `open`), and no new file appears in the temp dir or
  the working directory.
* DICOM patient identifiers (PatientName, PatientID, ...) never reach the logs (cxr_core and
  streamlit loggers captured at DEBUG, plus stdout/stderr) or the rendered page unless the user
  ticks "Show patient identifiers".
* Every `torch.load` in cxr_core/ uses `weights_only=True` (no pickle code execution from a file).
* File names and DICOM metadata are rendered as text, never as HTML.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from conftest import chest_phantom, make_dicom, to_uint16

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")

# Distinctive identifiers: if any of these strings shows up somewhere, it leaked.
IDENTIFIERS = {
    "PatientName": "Zebulon^Quixotic",
    "PatientID": "PID-98765-XQZ",
    "PatientBirthDate": "19230417",
    "InstitutionName": "Saint Qwerty Infirmary",
    "AccessionNumber": "ACC-5551212",
    "ReferringPhysicianName": "Dr^Hypatia^Vexillum",
}
XSS_NAME = "<img src=x onerror=alert(1)>.png"


def _dicom_with_identifiers(**extra) -> bytes:
    return make_dicom(to_uint16(chest_phantom(256, 2), 12), bits_stored=12, **{**IDENTIFIERS, **extra})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def page_weights(tmp_path, monkeypatch):
    """Fixture V-BreathNet and model card in a tmp weights dir (plus the real OOD statistics)."""
    from app_fixtures import page_weights

    yield from page_weights(tmp_path, monkeypatch, copy_ood=True)


def _app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _upload(at, name: str, data: bytes, mime: str = "image/png"):
    at.file_uploader(key="dx_upload").set_value([(name, data, mime)]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _elements(at) -> list:
    """Every rendered element (leaf) of the page, walking the AppTest element tree."""
    out = []

    def walk(node) -> None:
        children = getattr(node, "children", None)
        if isinstance(children, dict):
            for child in children.values():
                walk(child)
        elif getattr(node, "proto", None) is not None:
            out.append(node)

    walk(at._tree)
    return out


def _rendered(at) -> str:
    return "\n".join(str(e.proto) for e in _elements(at))


# --- uploads never touch the disk ------------------------------------------------------------------------


class _WriteRecorder:
    """Records every open-for-writing in this process while `active` (audit hooks cannot be removed,
    so the hook stays installed but idle after the test)."""

    active = False
    events: list[tuple[str, str]] = []
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return

        def hook(event: str, args: tuple) -> None:
            if not cls.active or event not in ("open", "os.rename", "os.replace", "shutil.copyfile", "os.mkdir"):
                return
            if event == "open":
                path, mode, flags = (tuple(args) + (None, None, None))[:3]
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
                if not writing or isinstance(path, int):
                    return
            elif event == "os.mkdir":  # makedirs(exist_ok=True) of an existing folder creates nothing
                path = args[0]
                if isinstance(path, (str, bytes, os.PathLike)) and os.path.isdir(path):
                    return
            else:  # rename / replace / copyfile: (src, dst, ...)
                path = args[1] if len(args) > 1 else args[0]
            cls.events.append((event, str(path)))

        sys.addaudithook(hook)
        cls._installed = True


def _snapshot(*dirs: Path) -> set[str]:
    files = set()
    for d in dirs:
        for root, _, names in os.walk(d):
            files.update(os.path.join(root, n) for n in names)
    return files


def test_uploads_never_touch_disk(page_weights, tmp_path, monkeypatch):
    from app_fixtures import chest_png_bytes

    tmp_dir, cwd = tmp_path / "tmpdir", tmp_path / "cwd"
    tmp_dir.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_dir))
    monkeypatch.setenv("TMPDIR", str(tmp_dir))
    monkeypatch.chdir(cwd)
    assert tempfile.gettempdir() == str(tmp_dir)

    at = _app()  # start-up (imports, caches of libraries) is not an upload: not recorded
    png = chest_png_bytes(256, seed=7)
    before = _snapshot(tmp_dir, cwd)
    _WriteRecorder.install()
    _WriteRecorder.events = []
    _WriteRecorder.active = True
    try:
        _upload(at, "chest.png", png)
        assert at.image and "Image quality" in [s.value for s in at.subheader]
        _upload(at, "study.dcm", _dicom_with_identifiers(), "application/dicom")
        assert at.image
        _upload(at, "broken.png", png[:500])
        assert "could not be used" in "\n".join(e.value for e in at.error)
    finally:
        _WriteRecorder.active = False
    writes = list(_WriteRecorder.events)
    assert writes == [], f"files written while handling uploads: {writes}"
    assert _snapshot(tmp_dir, cwd) == before, "new files appeared in the temp dir or the working directory"


# --- identifiers never reach logs or the page (unless asked) --------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            text = str(record.msg)
        with self._lock2:
            self.lines.append(text)


@pytest.fixture
def debug_logs():
    """Capture every record of the root, cxr_core and streamlit loggers at DEBUG."""
    handler = _Collect()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    names = ["", "cxr_core", "streamlit", "pages"]
    saved = []
    for n in names:
        lg = logging.getLogger(n)
        saved.append((lg, lg.level))
        lg.setLevel(logging.DEBUG)
        lg.addHandler(handler)
    yield handler
    for lg, level in saved:
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_dicom_identifiers_stay_out_of_logs_and_page(page_weights, debug_logs, capfd):
    at = _app()
    at = _upload(at, "study.dcm", _dicom_with_identifiers(), "application/dicom")
    assert at.image, "the DICOM was decoded and shown"
    page = _rendered(at)
    for tag, value in IDENTIFIERS.items():
        assert value not in page, f"{tag} rendered without being asked for"
    # toggling a display option re-runs everything; still hidden
    at.slider(key="dx_contrast").set_value(1.5).run()
    assert not at.exception
    assert not any(v in _rendered(at) for v in IDENTIFIERS.values())

    # the user asks: now they are shown (in the details table), and only then
    at.checkbox(key="dx_show_ids").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert IDENTIFIERS["PatientName"] in _rendered(at)

    logs = "\n".join(debug_logs.lines)
    out, err = capfd.readouterr()
    assert debug_logs.lines is not None
    for tag, value in IDENTIFIERS.items():
        assert value not in logs, f"{tag} reached the logs"
        assert value not in out and value not in err, f"{tag} was printed"


def test_core_keeps_identifiers_out_unless_requested(debug_logs, capfd):
    from cxr_core import quality
    from cxr_core.io import load_image

    data = _dicom_with_identifiers()
    image = load_image(data, "study.dcm")
    assert image.meta.identifiers == {}
    assert not any(v in repr(image.meta) for v in IDENTIFIERS.values())
    rep = quality.assess(image)
    assert not any(v in " ".join(rep.reasons) for v in IDENTIFIERS.values())
    asked = load_image(data, "study.dcm", include_identifiers=True)
    assert asked.meta.identifiers["PatientName"] == IDENTIFIERS["PatientName"]
    out, err = capfd.readouterr()
    text = "\n".join(debug_logs.lines) + out + err
    assert not any(v in text for v in IDENTIFIERS.values())


# --- torch.load is always weights_only=True -----------------------------------------------------------------


def _torch_load_calls() -> dict[str, list[tuple[int, bool]]]:
    """{relative file: [(line, uses weights_only=True)]} for every torch.load(...) call in cxr_core/."""
    out: dict[str, list[tuple[int, bool]]] = {}
    for path in sorted((ROOT / "cxr_core").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else (f.id if isinstance(f, ast.Name) else "")
            base = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if name != "load" or base != "torch":
                continue
            ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                     for k in node.keywords)
            out.setdefault(str(path.relative_to(ROOT)), []).append((node.lineno, ok))
    return out


_CALLS = _torch_load_calls()


@pytest.mark.parametrize("path", sorted(_CALLS))
def test_every_torch_load_is_weights_only(path):
    unsafe = [line for line, ok in _CALLS[path] if not ok]
    assert not unsafe, f"{path}: torch.load without weights_only=True at line(s) {unsafe}"


def test_torch_load_scan_finds_the_registry():
    assert "cxr_core/models/__init__.py" in _CALLS  # the scan itself works
    assert sum(len(v) for v in _CALLS.values()) >= 3


def test_no_pickle_loading_in_cxr_core():
    for path in (ROOT / "cxr_core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path


# --- names and metadata are text, never HTML -------------------------------------------------------------


def _html_leaks(at, needle: str) -> list[str]:
    """Elements that would render `needle` as HTML: markdown with allow_html, or st.html."""
    leaks = []
    for el in _elements(at):
        proto = el.proto
        text = str(proto)
        if needle not in text:
            continue
        kind = type(proto).__name__
        if kind == "Markdown" and proto.allow_html:
            leaks.append(f"markdown(allow_html): {text[:120]}")
        elif kind in ("Html", "IFrame") or getattr(el, "type", "") in ("html", "iframe"):
            leaks.append(f"{kind}: {text[:120]}")
    return leaks


def test_filename_rendered_as_text_not_html(page_weights):
    from app_fixtures import chest_png_bytes

    at = _upload(_app(), XSS_NAME, chest_png_bytes(256, 3))
    assert at.image
    assert "<img src=x onerror=alert(1)>" in _rendered(at), "the name is shown (as text)"
    assert _html_leaks(at, "onerror") == []
    # the refusal message for a bad file with the same name
    at = _upload(at, XSS_NAME, b"not an image at all, just text")
    assert "could not be used" in "\n".join(e.value for e in at.error)
    assert _html_leaks(at, "onerror") == []


def test_dicom_metadata_rendered_as_text_not_html(page_weights):
    dcm = make_dicom(to_uint16(chest_phantom(256, 4), 12), bits_stored=12, ViewPosition="<b>AP</b>",
                     Modality="<i>DX</i>")
    at = _upload(_app(), "meta.dcm", dcm, "application/dicom")
    assert at.image
    assert _html_leaks(at, "<b>AP</b>") == [] and _html_leaks(at, "<i>DX</i>") == []


def test_no_page_enables_unsafe_html_with_user_content():
    """Static check: pages never pass unsafe_allow_html / st.html (user text would become HTML)."""
    for path in [ROOT / "streamlit_app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        assert "unsafe_allow_html=True" not in text and "st.html(" not in text, path


MD_LINK_NAME = "[Click here to re-upload](https://evil.example/login).png"


def _unescaped_links(at, needle: str) -> list[str]:
    """Markdown-rendered bodies (markdown, headings, captions, alerts) in which a link in the file
    name would become a live, clickable link: `](https://...` not preceded by a backslash."""
    hits = []
    for el in _elements(at):
        proto = el.proto
        body = getattr(proto, "body", None)
        if isinstance(body, str) and needle in body and re.search(r"(?<!\\)\]\(" + re.escape(needle), body):
            hits.append(f"{type(proto).__name__}: {body[:140]}")
    return hits


def test_filename_markdown_is_not_rendered_as_a_link(page_weights):
    from app_fixtures import chest_png_bytes

    at = _upload(_app(), MD_LINK_NAME, b"not an image, just some text")  # the error message path
    assert "could not be used" in "\n".join(e.value for e in at.error)
    assert _unescaped_links(at, "https://evil.example/login") == []
    at = _upload(at, MD_LINK_NAME, chest_png_bytes(256, 5))  # the result path (heading with the name)
    assert _unescaped_links(at, "https://evil.example/login") == []
