"""The page of `fastadapt serve` in a real headless browser (Debian's Chromium, driven by Selenium): strokes of
real Omniglot test characters drawn with mouse events on its canvases, the predicted class read off the page.

Writes a screenshot to $FASTADAPT_TEST_ARTIFACTS (default: test-artifacts/ in the checkout)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install -e '.[serve]') is not installed")
pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")

from fastadapt.serve.app import BackgroundServer  # noqa: E402
from fastadapt.serve.model import serve_run  # noqa: E402
from fastadapt.serve.page import (SHOWN, HeldOutCharacters, canvas_strokes, chromium, chromium_paths,  # noqa: E402
                                  mouse_strokes, wait_for)
from fastadapt.training.threads import using_threads  # noqa: E402
from test_serve import classify  # noqa: E402

ARTIFACTS = Path(os.environ.get("FASTADAPT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture
def browser(tmp_path):
    if chromium_paths() is None:
        pytest.skip("Chromium and its driver are not installed: apt-get install chromium chromium-driver "
                    "(.ci/run installs them)")
    driver = chromium(tmp_path / "profile")
    yield driver
    driver.quit()


CANVASES = ("return [...document.querySelectorAll('#classes canvas, #query-canvas')]"
            ".map((c) => c.toDataURL('image/png'))")


def test_drawing_on_the_page_classifies_test_characters(browser, omniglot_dir, quick_protonet_run):
    characters = HeldOutCharacters(omniglot_dir)
    rng = np.random.default_rng(15)  # the API test's episode
    episode = characters.episode(rng, 5)
    with using_threads(1), BackgroundServer(serve_run(quick_protonet_run)) as url:
        browser.get(url)
        wait_for(browser, "return document.body.dataset.ready === 'true'")
        assert browser.execute_script("return document.getElementById('num-classes').value") == "5"
        class_canvases = browser.find_elements("css selector", "#classes canvas")
        names = browser.find_elements("css selector", "#classes input[type=text]")
        labels = [name.get_attribute("value") for name in names]
        for canvas, (name, support, _) in zip(class_canvases, episode):
            mouse_strokes(browser, canvas, canvas_strokes(characters.image(name, support)))
        query = browser.find_element("id", "query-canvas")
        clear = browser.find_element("css selector", "#query .buttons button:nth-child(2)")
        correct, shown = 0, []
        for label, (name, s, q) in zip(labels, episode):
            for drawing in [q, *[d for d in rng.permutation(20).tolist() if d not in (s, q)][:2]]:
                clear.click()
                mouse_strokes(browser, query, canvas_strokes(characters.image(name, drawing)))
                page = wait_for(browser, SHOWN)
                correct += page["label"] == label
                shown.append((label, page["label"]))
                # the page shows what the API answers for exactly these canvases
                images = browser.execute_script(CANVASES)
                request = {"support": [{"label": lab, "image": image, "drawn": True}
                                       for lab, image in zip(labels, images[:5])],
                           "queries": [{"image": images[5], "drawn": True}], "invert": "auto"}
                status, reply = classify(url, request)
                assert status == 200 and reply["predictions"][0]["class"] == page["label"], (reply, page)
                probabilities = dict(zip(reply["classes"], reply["predictions"][0]["probabilities"]))
                for bar_label, percent in page["bars"]:
                    assert percent == pytest.approx(100 * probabilities[bar_label], abs=0.051)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = ARTIFACTS / "serve-page.png"
        browser.save_screenshot(str(screenshot))
        (ARTIFACTS / "serve-page.json").write_text(json.dumps({"shown": shown, "correct": correct}, indent=1))
    assert correct >= 10, shown  # of 15 drawn queries; the quick model gets about 85% of drawn queries right
    assert screenshot.stat().st_size > 10_000


FOUND = """
const result = document.getElementById('find-result');
if (result.dataset.current !== 'true' || result.dataset.boxes === undefined) return null;
return {boxes: JSON.parse(result.dataset.boxes), summary: document.getElementById('find-summary').textContent,
        rects: document.querySelectorAll('#find-boxes rect.found').length,
        truth: document.querySelectorAll('#find-boxes rect.truth').length,
        scene: document.getElementById('find-scene').getAttribute('src')};
"""


def test_find_it_on_the_page_shows_what_the_api_finds(browser, omniglot_dir):
    """A test character drawn with the mouse in the "find it" pad: the page boxes what POST /api/find answers for
    that drawing, on the scene it shows; "new scene" draws another."""
    from fastadapt.serve.find import SceneFinder, template_matching_detector
    from fastadapt.serve.model import serve_pixels
    from test_serve_find import find

    characters = HeldOutCharacters(omniglot_dir)
    name = characters.names[7]
    finder = SceneFinder(template_matching_detector(), str(omniglot_dir))
    with using_threads(1), BackgroundServer(serve_pixels(), finder=finder) as url:
        browser.get(url)
        wait_for(browser, "return document.body.dataset.ready === 'true'")
        pad = browser.find_element("id", "find-canvas")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)
        mouse_strokes(browser, pad, canvas_strokes(characters.image(name, 0)))
        symbol = browser.execute_script("return document.getElementById('find-canvas').toDataURL('image/png')")
        for seed in (0, 1):
            page = wait_for(browser, FOUND)
            status, reply = find(url, {"symbol": {"image": symbol, "drawn": True}, "characters": 8, "copies": 2,
                                       "seed": seed})
            assert status == 200, reply
            assert page["boxes"] == [d["box"] for d in reply["detections"]] and page["scene"] == reply["scene"]
            assert page["rects"] == len(reply["detections"]) and page["truth"] == 2
            assert page["summary"].startswith(f"{len(reply['detections'])} found;")
            if seed == 0:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(ARTIFACTS / "serve-find.png"))
                browser.find_element("id", "find-new").click()
        browser.find_element("css selector", "#find-symbol .buttons button:nth-child(2)").click()  # clear
        wait_for(browser, "return document.getElementById('find-status').textContent.startsWith('draw a symbol')")
        assert browser.execute_script("return document.getElementById('find-result').dataset.boxes") == "[]"
