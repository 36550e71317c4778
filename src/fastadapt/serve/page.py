"""What the page draws with, read from its own files, and Omniglot's test characters as a person draws them
on the page (strokes traced along each image's skeleton, scaled to the page's canvas, drawn with its pen):
the workload of the tests, the latency benchmark and the README's screenshot, which also draw them with
the mouse in a real browser (Debian's Chromium through Selenium, ``chromium`` / ``mouse_strokes``)."""
from __future__ import annotations

import base64
import io
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fastadapt.datasets.drawing import OMNIGLOT_SIZE, ink_mask, render_strokes, trace_strokes
from fastadapt.datasets.omniglot import _list_archive

STATIC = Path(__file__).parent / "static"
#: The page's canvases are this many canvas pixels square; its pen is this many wide.
CANVAS = int(re.search(r'id="query-canvas" width="(\d+)"', (STATIC / "index.html").read_text()).group(1))
PAGE_PEN = float(re.search(r"const PEN_WIDTH = ([\d.]+);", (STATIC / "app.js").read_text()).group(1))
#: How far a traced stroke may stray from the skeleton, in pixels at 105x105 (fewer mouse moves).
TOLERANCE = 0.7


def canvas_strokes(image: Image.Image, canvas: int = CANVAS) -> list[np.ndarray]:
    """The pen strokes of an Omniglot-like drawing (dark on light), in the page canvas's pixel coordinates."""
    scale = canvas / OMNIGLOT_SIZE
    return [(stroke + 0.5) * scale for stroke in trace_strokes(ink_mask(image), TOLERANCE)]


def canvas_drawing(image: Image.Image, pen: float = PAGE_PEN, canvas: int = CANVAS) -> Image.Image:
    """The drawing as the page's canvas holds it once drawn over: black strokes on white."""
    return render_strokes(canvas_strokes(image, canvas), canvas, pen)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class HeldOutCharacters:
    """The 423 test characters of Omniglot's 'vinyals' split (the last of the evaluation set), 20 drawings
    each, read from images_evaluation.zip in ``omniglot_dir``."""

    def __init__(self, omniglot_dir: str | Path) -> None:
        path = Path(omniglot_dir) / "images_evaluation.zip"
        members = _list_archive(path)
        self.names = sorted(members)[-423:]
        self.drawings = {name: members[name] for name in self.names}
        self.archive = zipfile.ZipFile(path)  # its directory read once

    def image(self, name: str, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self.archive.read(self.drawings[name][index]))).convert("L")

    def episode(self, rng: np.random.Generator, way: int) -> list[tuple[str, int, int]]:
        """``way`` distinct characters, each with two distinct drawings (support, query)."""
        picked = rng.choice(len(self.names), way, replace=False)
        return [(self.names[c], *map(int, rng.choice(20, 2, replace=False))) for c in picked]


# --- a real browser ---
#: No network here or in CI: these keep Chromium from trying to reach Google's servers.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1240,980")


def chromium_paths() -> tuple[str, str] | None:
    """The system's Chromium and chromedriver (Debian's chromium and chromium-driver), or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def chromium(profile: str | Path) -> Any:
    """A headless Chromium under Selenium, with a fresh profile folder; never a downloaded browser or driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise FileNotFoundError("Chromium and its driver are not installed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(paths[1]), options=options)


def mouse_strokes(driver: Any, canvas: Any, strokes: list[np.ndarray]) -> None:
    """Draw strokes (canvas pixel coordinates) on a canvas element with the mouse: press, move, release."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = canvas.size["width"], canvas.size["height"]
    actions = ActionChains(driver, duration=0)
    for stroke in strokes:
        # offsets from the canvas's centre, in CSS pixels
        points = [(round(x * width / CANVAS - width / 2), round(y * height / CANVAS - height / 2)) for x, y in stroke]
        actions.move_to_element_with_offset(canvas, *points[0]).click_and_hold()
        for point in points[1:]:
            actions.move_to_element_with_offset(canvas, *point)
        actions.release()
    actions.perform()


def wait_for(driver: Any, script: str, timeout: float = 60) -> Any:
    """The first truthy value of a script run in the page, polled until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    status = driver.execute_script("return document.getElementById('status').textContent")
    raise TimeoutError(f"the page never satisfied: {script}; its status line: {status}")


#: The page's prediction once it is up to date with the canvases: {label, bars: [[label, percent], ...]}.
SHOWN = """
const result = document.getElementById('result');
const label = document.getElementById('prediction').dataset.class;
if (result.dataset.current !== 'true' || !label) return null;
return {label, bars: [...document.querySelectorAll('#bars .bar')].map(
  (bar) => [bar.dataset.label, parseFloat(bar.querySelector('.value').textContent)])};
"""
