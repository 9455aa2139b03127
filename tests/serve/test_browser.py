"""End to end in a real browser: headless Chromium uploads an image through the page and sees the result.

Skipped (with the reason) only when Chromium or chromedriver is not installed (`.ci/run` installs them).
Selenium is given the chromedriver path explicitly and ``SE_OFFLINE=true``, so Selenium Manager never
downloads anything; the browser resolves no host name other than 127.0.0.1.

Environment:
  DP_SCREENSHOT_DIR      also copy the screenshot (serve.png) into this folder.
  DP_SERVE_CHECKPOINT    serve this model instead of a random-weight one (with DP_SERVE_IMAGE: the image
                         to upload); used to make docs/img/serve.png with a trained model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.helpers import chest_like, png_bytes, random_checkpoint, running_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)",
                allow_module_level=True)
pytest.importorskip("selenium")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("pytorch_grad_cam")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from deeppneumonia.serve.app import create_app  # noqa: E402

WAIT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    ckpt = os.environ.get("DP_SERVE_CHECKPOINT") or random_checkpoint(
        tmp_path_factory.mktemp("browser") / "model.safetensors", ("normal", "pneumonia"), size=128)
    app = create_app(ckpt, device="cpu")
    with running_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # belt and braces: the explicit Service path already avoids Selenium Manager
        yield from _chromium()


def _chromium() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--window-size=1100,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _upload(driver: Any, url: str, image: Path) -> None:
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "file").send_keys(str(image))
    driver.find_element(By.ID, "go").click()


def test_upload_shows_probabilities_and_heatmap(server: tuple[str, Any], browser: Any, tmp_path: Path) -> None:
    url, app = server
    classes = app.state.analyzer.predictor.classes
    image = Path(os.environ.get("DP_SERVE_IMAGE") or tmp_path / "chest.png")
    if not image.exists():
        image.write_bytes(png_bytes(chest_like(320, 288)))
    _upload(browser, url, image)
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element(By.ID, "result").get_attribute("data-state") == "done" or d.find_element(
            By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == ""
    rows = browser.find_elements(By.CSS_SELECTOR, "#probs tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == classes
    probs = [float(r.find_elements(By.TAG_NAME, "td")[2].text) for r in rows]
    assert sum(probs) == pytest.approx(1.0, abs=0.01)  # three decimals each
    assert browser.find_element(By.ID, "labels").text in classes
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
        "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0;"))
    natural = browser.execute_script("return document.getElementById('heatmap').naturalWidth")
    assert natural == 512
    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
    if os.environ.get("DP_SCREENSHOT_DIR"):
        target = Path(os.environ["DP_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "serve.png")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no CSP violation, no failed request


def test_bad_upload_shows_the_reason(server: tuple[str, Any], browser: Any, tmp_path: Path) -> None:
    url, _ = server
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image\n")
    _upload(browser, url, bad)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "error").text)
    assert "415" in browser.find_element(By.ID, "error").text
    assert "not an image" in browser.find_element(By.ID, "error").text
