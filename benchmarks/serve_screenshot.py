"""The README's screenshot of `fastadapt serve`: a run served, one drawing each of five Omniglot test
characters drawn on the page with the mouse (strokes traced from the images) in headless Chromium, then
another drawing of one of them classified; saved as a small palette PNG.

    python benchmarks/serve_screenshot.py RUN_DIR --output docs/serve.png [--data-root DIR] [--seed N]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from fastadapt.serve.app import BackgroundServer
from fastadapt.serve.model import omniglot_here, serve_run
from fastadapt.serve.page import SHOWN, HeldOutCharacters, canvas_strokes, chromium, mouse_strokes, wait_for
from fastadapt.training.threads import using_threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the trained run to serve")
    parser.add_argument("--output", default="docs/serve.png", help="where the PNG goes (default: docs/serve.png)")
    parser.add_argument("--data-root", help="Omniglot's archives (default: $FASTADAPT_DATA or the cache)")
    parser.add_argument("--seed", type=int, default=0, help="which test characters (default: 0)")
    args = parser.parse_args()
    data = omniglot_here(args.data_root)
    if data is None:
        parser.error("no Omniglot archives found: give --data-root DIR")
    characters = HeldOutCharacters(data)
    rng = np.random.default_rng(args.seed)
    episode = characters.episode(rng, 5)
    asked = int(rng.integers(5))
    with tempfile.TemporaryDirectory() as profile, using_threads(1), \
            BackgroundServer(serve_run(args.run_dir)) as url:
        browser = chromium(profile)
        try:
            browser.get(url)
            wait_for(browser, "return document.body.dataset.ready === 'true'")
            for canvas, (name, support, _) in zip(browser.find_elements("css selector", "#classes canvas"), episode):
                mouse_strokes(browser, canvas, canvas_strokes(characters.image(name, support)))
            name, _, query = episode[asked]
            mouse_strokes(browser, browser.find_element("id", "query-canvas"),
                          canvas_strokes(characters.image(name, query)))
            shown = wait_for(browser, SHOWN)
            png = Path(tempfile.mkdtemp()) / "page.png"
            browser.save_screenshot(str(png))
        finally:
            browser.quit()
    labels = "ABCDE"
    print(f"drew {', '.join(n for n, _, _ in episode)}; the query is class {labels[asked]}, the page shows "
          f"{shown['label']}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.open(png).convert("RGB").quantize(colors=48, method=Image.Quantize.MEDIANCUT).save(output, optimize=True)
    print(f"wrote {output} ({output.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
