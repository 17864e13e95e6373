"""The web page of `resnets serve` in a real browser: Debian's chromium driven by Selenium.

Needs chromium and chromium-driver (`apt-get install chromium chromium-driver`); nothing is
downloaded at run time. Skips, saying why, when they are absent. With
RESNETS_UPDATE_SCREENSHOT=1 the screenshot also replaces docs/img/serve_page.png (README).
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from _data_helpers import SHARED_DATA  # noqa: E402
from test_serve import CLASSES, NAME, RunningServer, save_tiny_model, write_images  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "chromium-driver")
PHOTOS = SHARED_DATA / "imagenette-224-train.zip"
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "serve_page.png"
MAX_SCREENSHOT_BYTES = 300_000


def _first_on_path(names: tuple[str, ...]) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver = _first_on_path(BROWSERS), _first_on_path(DRIVERS)
    if binary is None or driver is None:
        reason = "no chromium on PATH" if binary is None else "no chromedriver on PATH"
        print(f"skipped: {reason} (apt-get install chromium chromium-driver)")
        pytest.skip(f"{reason}: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1360,860", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    session.set_page_load_timeout(30)
    yield session
    session.quit()


def a_photo(folder: Path) -> Path:
    """A real photo when the shared data is there (it looks like what users send), else a made-up one."""
    if PHOTOS.is_file():
        with zipfile.ZipFile(PHOTOS) as archive:
            name = next(n for n in sorted(archive.namelist()) if n.lower().endswith((".jpg", ".jpeg")))
            path = folder / "photo.jpg"
            path.write_bytes(archive.read(name))
            return path
    return write_images(folder)[2]


def test_page_classifies_an_uploaded_photo(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = save_tiny_model(tmp_path / "tiny.safetensors")
    photo = a_photo(tmp_path)
    server = RunningServer(model, "--backend", "eager")
    try:
        api_top = next(iter(httpx.post(f"{server.url}/predictions/{NAME}", content=photo.read_bytes(),
                                       timeout=30).json()))
        browser.get(server.url + "/")
        WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "card").text.strip())
        assert "Parameters" in browser.find_element(By.ID, "card").text
        upload = browser.find_element(By.ID, "file")
        browser.execute_script("arguments[0].hidden = false;", upload)  # the drop zone's hidden input
        upload.send_keys(str(photo))
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bars .bar"))
        WebDriverWait(browser, 60).until(lambda d: d.execute_script(
            "const o = document.getElementById('overlay'); return !o.hidden && o.complete && o.naturalWidth > 0;"))
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
        assert len(bars) == 5
        shown_top = bars[0].find_element(By.CLASS_NAME, "name").text
        assert shown_top == api_top
        assert not browser.find_element(By.ID, "error").text
        browser.execute_script("arguments[0].hidden = true;", upload)
        shot = tmp_path / "serve_page.png"
        _save_small_png(browser.get_screenshot_as_png(), shot)
        assert shot.stat().st_size < MAX_SCREENSHOT_BYTES
        if os.environ.get("RESNETS_UPDATE_SCREENSHOT") == "1":
            README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, README_SCREENSHOT)
    finally:
        server.stop()


def test_page_shows_a_multi_label_models_labels_at_or_above_its_threshold(browser, tmp_path):
    """Every label the API answers (not a fixed top k), under a heading naming the threshold."""
    import torch

    from resnets.factory import create_model
    from resnets.multilabel import mark_multi_label
    from resnets.weights.format import save_weights
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    torch.manual_seed(5)
    model = mark_multi_label(create_model("resnet20", num_classes=len(CLASSES)), threshold=0.45)
    path = save_weights(tmp_path / "multi.safetensors", model, class_names=CLASSES)
    photo = a_photo(tmp_path)
    server = RunningServer(path, "--backend", "eager")
    try:
        api = list(httpx.post(f"{server.url}/predictions/{NAME}", content=photo.read_bytes(), timeout=30).json())
        browser.get(server.url + "/")
        WebDriverWait(browser, 20).until(lambda d: "45.0%" in d.find_element(By.ID, "bars-title").text)
        upload = browser.find_element(By.ID, "file")
        browser.execute_script("arguments[0].hidden = false;", upload)
        upload.send_keys(str(photo))
        WebDriverWait(browser, 30).until(lambda d: "Classifying" not in d.find_element(By.ID, "bars").text)
        shown = [bar.find_element(By.CLASS_NAME, "name").text
                 for bar in browser.find_elements(By.CSS_SELECTOR, "#bars .bar")]
        assert shown == api
        if not api:
            assert "No label at or above 45.0%" in browser.find_element(By.ID, "bars").text
        assert not browser.find_element(By.ID, "error").text
    finally:
        server.stop()


def _save_small_png(png: bytes, path: Path) -> None:
    """The screenshot as a palette PNG (a page of flat colours loses nothing visible at 256 colours)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
