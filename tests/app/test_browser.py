"""One real-browser run: headless Chromium drives `streamlit run` on 127.0.0.1.

Upload a chest image, wait for the prediction, toggle the heatmap, save screenshots under the
test's tmp dir (their paths are printed; run with -s to see them). The server reads a tmp weights
dir holding a fixture (randomly initialised) V-BreathNet, so the test never depends on training.
Skips with a reason when Chromium / chromedriver / selenium are missing
(Debian: `apt-get install -y chromium chromium-driver`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from app_fixtures import chest_png_bytes
from browser_support import Server, make_driver, missing_browser, quit_driver, write_fixture_weights
from browser_support import click_label as _click_label
from browser_support import wait_idle as _wait_idle
from browser_support import wait_text as _wait_text

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))


@pytest.fixture
def server(tmp_path):
    weights = write_fixture_weights(tmp_path / "weights")
    with Server(weights, log_path=tmp_path / "streamlit.log", torch_threads=1) as srv:
        yield srv.url


@pytest.fixture
def browser(tmp_path):
    driver = make_driver(tmp_path / "chrome-profile")
    yield driver
    quit_driver(driver, tmp_path / "chrome-profile")


WIDTH = 1400  # px: the screenshots are taken at this width
SCREENS = os.environ.get("CXR_SCREENSHOT_DIR")  # optional: also copy the screenshots here for review


def _shoot(driver, path: Path) -> Path:
    """A screenshot of the whole page at WIDTH px: the window is made as tall as the page's content."""
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]') || document.body;"
        "return Math.max(m.scrollHeight, document.body.scrollHeight);")
    driver.set_window_size(WIDTH, min(max(int(height) + 120, 900), 7000))
    time.sleep(1.0)  # plotly relayouts to the new size
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 1600)
    if SCREENS:
        Path(SCREENS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENS) / path.name)
    assert driver.get_window_size()["width"] == WIDTH
    return path


def test_upload_predict_heatmap_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "chest_phantom.png"
    image.write_bytes(chest_png_bytes(512, seed=2))
    t0 = time.time()
    browser.get(server)
    _wait_text(browser, "Diagnose a chest X-ray")
    _wait_text(browser, "Decision support, not a diagnosis")

    from selenium.webdriver.support.ui import WebDriverWait

    upload = WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, 'input[type="file"]'))[0]
    upload.send_keys(str(image))
    print(f"\n[{time.time() - t0:.1f}s] uploaded")
    _wait_text(browser, "Calibrated confidence")
    print(f"[{time.time() - t0:.1f}s] prediction shown")
    _wait_text(browser, "Image quality")
    _wait_idle(browser)
    shot1 = _shoot(browser, tmp_path / "diagnose_prediction.png")

    _click_label(browser, "Heatmap")
    _wait_text(browser, "CAM method")
    _wait_idle(browser)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Heatmap unavailable" not in body
    assert "Traceback" not in body
    assert "Original" in body and "With layers" in body  # side by side
    print(f"[{time.time() - t0:.1f}s] heatmap shown")
    shot2 = _shoot(browser, tmp_path / "diagnose_heatmap.png")
    # the toggle labels are shown in full (not cut off with an ellipsis)
    for label in ("Heatmap", "Abnormality boxes", "Lung outline"):
        el = next(e for e in browser.find_elements(By.CSS_SELECTOR, "label") if e.text.strip() == label)
        assert el.size["width"] > 0 and el.text.strip() == label

    _click_label(browser, "Zoom and pan (mouse wheel, drag)")
    _wait_idle(browser)
    WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .layer-above image, .js-plotly-plot image"))
    _shoot(browser, tmp_path / "diagnose_interactive.png")

    for page, marker in (("compare", "Per-class precision"), ("detector", "Box size per class"),
                         ("about", "Intended use"), ("pacs", "PACS")):
        browser.get(f"{server}/{page}")
        _wait_text(browser, marker)
        _wait_idle(browser)
        _shoot(browser, tmp_path / f"{page}.png")
        print(f"[{time.time() - t0:.1f}s] {page} page")
        assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text

    for shot in (shot1, shot2):
        assert shot.stat().st_size > 20_000
    print(f"\nscreenshots: {tmp_path}")


def test_worklist_and_dicom_in_chromium(server, browser, tmp_path):
    """A two-film worklist (PNG + DICOM): overview table, then the DICOM with identifiers on."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from conftest import chest_phantom, make_dicom, to_uint16

    png = tmp_path / "a_chest.png"
    png.write_bytes(chest_png_bytes(512, seed=3))
    dcm = tmp_path / "b_study.dcm"
    dcm.write_bytes(make_dicom(to_uint16(chest_phantom(512), 12), bits_stored=12, PatientSex="F",
                               PatientAge="045Y", StudyDate="20240131"))
    browser.get(server)
    _wait_text(browser, "Diagnose a chest X-ray")
    upload = WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, 'input[type="file"]'))[0]
    upload.send_keys(f"{png}\n{dcm}")
    _wait_text(browser, "Worklist overview (2 files)")
    _wait_idle(browser)
    _click_label(browser, "2. b_study.dcm")
    _wait_text(browser, "DICOM SR")
    _click_label(browser, "Show patient identifiers (DICOM)")
    _wait_text(browser, "Patient name")
    _wait_idle(browser)
    browser.find_element(By.XPATH, "//*[contains(text(), 'Worklist overview')]").click()
    _wait_idle(browser)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "DICOM secondary capture" in body and "Study date" in body and "Traceback" not in body
    _shoot(browser, tmp_path / "diagnose_worklist_dicom.png")
