"""`fastadapt serve`: the JSON API on a real server (classification, limits, 1,000 bad requests, concurrent
clients), which model it serves, and the command line with and without the serve extra."""
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (pip install -e '.[serve]') is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (pip install -e '.[serve]') is not installed")

from fastadapt.cli import main  # noqa: E402
from fastadapt.datasets.drawing import render_strokes  # noqa: E402
from fastadapt.runs.directory import TEST_RESULTS, read_test_results  # noqa: E402
from fastadapt.serve import app as web  # noqa: E402
from fastadapt.serve.model import ServedModel, choose_model, image_runs, serve_pixels, serve_run  # noqa: E402
from fastadapt.serve.page import HeldOutCharacters, canvas_drawing, png_base64  # noqa: E402
from fastadapt.training.threads import using_threads  # noqa: E402

# five shapes anyone can tell apart, as strokes on a 210-pixel canvas
SHAPES = {
    "bar": [[[40, 105], [170, 105]]],
    "ring": [[[105 + 60 * np.cos(t), 105 + 60 * np.sin(t)] for t in np.linspace(0, 2 * np.pi, 40)]],
    "cross": [[[50, 50], [160, 160]], [[160, 50], [50, 160]]],
    "tee": [[[40, 45], [170, 45]], [[105, 45], [105, 175]]],
    "zig": [[[40, 60], [170, 60], [40, 160], [170, 160]]],
}


def shape_png(name: str, pen: float = 9, jitter: float = 0.0, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    strokes = [np.array(s, dtype=float) + rng.normal(0, jitter, (len(s), 2)) for s in SHAPES[name]]
    return png_base64(render_strokes(strokes, 210, pen))


def normal_request(query: str = "cross", seed: int = 1) -> dict:
    return {"support": [{"label": name, "image": shape_png(name), "drawn": True} for name in SHAPES],
            "queries": [{"image": shape_png(query, pen=14, jitter=4, seed=seed), "drawn": True}]}


def post(url: str, body: bytes, content_type: str | None = "application/json", method: str = "POST",
         headers: dict | None = None, timeout: float = 30) -> tuple[int, dict | bytes]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        sent = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
        connection.request(method, "/api/classify", body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data


def classify(url: str, request: dict) -> tuple[int, dict]:
    return post(url, json.dumps(request).encode())


@pytest.fixture(scope="module")
def pixel_server():
    with using_threads(1), web.BackgroundServer(serve_pixels()) as url:
        yield url


# --- the API ---
def test_classify_answers_with_classes_probabilities_and_inputs(pixel_server):
    status, reply = classify(pixel_server, {**normal_request(), "return_inputs": True})
    assert status == 200, reply
    assert reply["classes"] == sorted(SHAPES)
    (prediction,) = reply["predictions"]
    assert prediction["class"] == "cross"
    assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert len(reply["inputs"]["support"]) == 5 and reply["inputs"]["queries"][0].startswith("data:image/png;base64,")
    # the same images through FewShotClassifier-level code in this process: the same probabilities
    request = normal_request()
    images = web.decode_images([(item["image"], "x") for item in [*request["support"], *request["queries"]]])
    result, _ = serve_pixels().classify(images[:5], list(SHAPES), images[5:], [True] * 5, [True])
    np.testing.assert_allclose(prediction["probabilities"], result.probabilities[0], atol=1e-6)


def test_the_page_and_the_model_description_are_served(pixel_server):
    host, port = pixel_server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    for path, kind in (("/", "text/html"), ("/static/app.js", "javascript"), ("/static/style.css", "text/css"),
                       ("/api/model", "application/json")):
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200 and kind in response.getheader("content-type"), path
        assert "default-src 'self'" in response.getheader("content-security-policy")
    description = json.loads(body)
    assert description["source"] == "pixels" and description["ways"] == [2, 20]
    assert description["limits"]["max_body_bytes"] == web.MAX_BODY_BYTES
    page = urlopen_text(pixel_server, "/")
    assert "https://" not in page and "http://" not in page.replace('xmlns="http://www.w3.org', "")  # no CDN
    connection.request("GET", "/docs")  # FastAPI's docs page loads scripts from a CDN: not served
    assert connection.getresponse().status == 404


def urlopen_text(url: str, path: str) -> str:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", path)
    return connection.getresponse().read().decode()


def test_a_page_elsewhere_cannot_reach_the_server_by_another_host_name(pixel_server):
    status, reply = post(pixel_server, json.dumps(normal_request()).encode(), headers={"Host": "evil.example:8000"})
    assert status == 400


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 1-bit pixels, with a few bytes of data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def bad_requests(rng: np.random.Generator, count: int):
    """``count`` malformed or oversized requests: (what, body, content type, method, expected status or None for
    any 4xx). Random bytes, wrong types and shapes, missing fields, 0 to 100 classes, bad and huge images."""
    valid = normal_request()
    png = valid["support"][0]["image"]
    huge_side = _b64(_png_claiming(3000, 3000))
    large = png_base64(Image.new("1", (2048, 2048), 1))  # within the side limit; 5 of them exceed the request's
    bomb = _b64(_png_claiming(100_000, 100_000))
    white_on_black = png_base64(Image.fromarray(255 - np.asarray(Image.open(__import__("io").BytesIO(
        __import__("base64").b64decode(png))).convert("L"))))
    blank = png_base64(Image.new("L", (210, 210), 255))
    truncated = _b64(__import__("base64").b64decode(png)[:60])

    def with_support(items, queries=None):
        return json.dumps({"support": items, "queries": queries or valid["queries"]}).encode()

    def classes(n):
        return with_support([{"label": f"c{i}", "image": png, "drawn": True} for i in range(n)])

    def mutate():
        request = json.loads(json.dumps(valid))
        target = request["support"][int(rng.integers(5))] if rng.random() < 0.6 else request["queries"][0]
        key = str(rng.choice(list(target)))
        choice = int(rng.integers(6))
        if choice == 0 and key != "drawn":  # a required field missing
            del target[key]
        else:  # a wrong type, or an empty label or image
            target[key] = [None, 3, [1, 2], {"a": 1}, "", ""][choice]
        return json.dumps(request).encode()

    fixed = [
        ("0 classes", classes(0), None), ("1 class", with_support([{"label": "a", "image": png}] * 2), 422),
        ("21 classes", classes(21), 422), ("100 classes", classes(100), 422),
        ("21 images of a class", with_support([{"label": "a", "image": png}] * 21 + [{"label": "b", "image": png}]),
         422),
        ("21 queries", with_support(valid["support"], valid["queries"] * 21), 422),
        ("image side over the limit", with_support(valid["support"], [{"image": huge_side}]), 413),
        ("decompression bomb", with_support(valid["support"], [{"image": bomb}]), 413),
        ("pixels over the request's limit", with_support(valid["support"], [{"image": large}] * 5), 413),
        ("body over the limit", b'{"support": "' + b"A" * (web.MAX_BODY_BYTES + 10) + b'"}', 413),
        ("image bytes over the limit", with_support(valid["support"], [{"image": "A" * (4 * web.MAX_IMAGE_BYTES)}]),
         None),
        ("empty drawing", with_support(valid["support"], [{"image": blank, "drawn": True}]), 422),
        ("light strokes on dark, invert unset", with_support(valid["support"], [{"image": white_on_black}]), 422),
        ("truncated PNG", with_support(valid["support"], [{"image": truncated}]), 422),
        ("not base64", with_support(valid["support"], [{"image": "%%%not base64%%%"}]), 422),
        ("base64 of text", with_support(valid["support"], [{"image": _b64(b"hello, world")}]), 422),
        ("base64 of SVG", with_support(valid["support"], [{"image": _b64(b"<svg xmlns='x'></svg>")}]), 422),
        ("data URL without base64", with_support(valid["support"], [{"image": "data:image/png,abc"}]), 422),
        ("unknown field", json.dumps({**valid, "model": "other"}).encode(), 422),
        ("invert 'sometimes'", json.dumps({**valid, "invert": "sometimes"}).encode(), 422),
        ("label of 65 characters", with_support([{"label": "x" * 65, "image": png}, *valid["support"]]), 422),
        ("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, 400),
        ("invalid UTF-8", b'{"support": "\xff\xfe"}', 400),
        ("top level a list", b"[]", 422), ("top level null", b"null", 422), ("top level a number", b"3", 422),
        ("images as pixel arrays", with_support([{"label": "a", "image": [[0, 1], [1, 0]]}] * 2), 422),
        ("queries an object", json.dumps({**valid, "queries": {"image": png}}).encode(), 422),
        ("NaN for a flag", json.dumps({**valid, "return_inputs": float("nan")}).encode(), 422),
    ]
    for i in range(count):
        kind = i % 10
        if i < len(fixed):
            what, body, expected = fixed[i]
            yield what, body, "application/json", "POST", expected
        elif kind < 3:
            yield "random bytes", rng.bytes(int(rng.integers(0, 3000))), "application/json", "POST", None
        elif kind == 3:
            yield ("not JSON", rng.bytes(int(rng.integers(0, 300))),
                   str(rng.choice(["text/plain", "multipart/form-data", "application/x-www-form-urlencoded"])),
                   "POST", 415)
        elif kind == 4:
            yield "no content type", json.dumps(valid).encode(), None, "POST", 415
        elif kind == 5:
            yield "wrong method", b"", None, str(rng.choice(["GET", "PUT", "DELETE", "PATCH"])), 405
        elif kind == 6:
            request = json.dumps(valid).encode()
            cut = int(rng.integers(1, len(request) - 1))
            yield "truncated JSON", request[:cut], "application/json", "POST", None
        else:
            yield "a field missing or of the wrong type", mutate(), "application/json", "POST", 422


def test_a_thousand_bad_requests_get_4xx_and_the_server_keeps_serving(pixel_server):
    status, before = classify(pixel_server, normal_request())
    assert status == 200
    rng = np.random.default_rng(0)
    seen = {}
    for what, body, content_type, method, expected in bad_requests(rng, 1000):
        status, reply = post(pixel_server, body, content_type, method, timeout=30)
        assert 400 <= status < 500, (what, status, reply)
        if expected is not None:
            assert status == expected, (what, status, reply)
        if status != 405:
            assert isinstance(reply, dict) and reply.get("error") or reply.get("detail"), (what, reply)
        seen[what] = seen.get(what, 0) + 1
    assert sum(seen.values()) == 1000 and len(seen) >= 30
    status, after = classify(pixel_server, normal_request())
    assert status == 200 and after["predictions"] == before["predictions"]


def test_a_stalled_client_does_not_hold_up_others(pixel_server):
    host, port = pixel_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as stalled:
        stalled.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"support\": [")
        status, reply = classify(pixel_server, normal_request())
        assert status == 200 and reply["predictions"][0]["class"] == "cross"


def test_concurrent_requests_get_the_answers_they_get_alone(pixel_server):
    requests = [normal_request(query, seed) for query in SHAPES for seed in (1, 2)]
    alone = [classify(pixel_server, r)[1]["predictions"] for r in requests]
    answers: dict[int, list] = {}

    def client(index: int) -> None:
        for round_ in range(3):
            k = (index + round_) % len(requests)
            answers[(index, round_)] = (k, classify(pixel_server, requests[k]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 24
    for k, (status, reply) in answers.values():
        assert status == 200 and reply["predictions"] == alone[k]


def test_drawn_test_characters_are_classified_through_the_api(omniglot_dir, quick_protonet_run):
    """The browser test's episode without a browser: real test characters drawn on a canvas as the page does
    (traced strokes, the page's pen), sent as the page sends them: 5 classes, one drawing each, and three
    other drawings of each to classify. The quick model gets about 85% of drawn queries right."""
    characters = HeldOutCharacters(omniglot_dir)
    rng = np.random.default_rng(15)
    episode = characters.episode(rng, 5)
    labels = [f"{name.split('/')[1][:10]} {name[-2:]}" for name, _, _ in episode]
    support = [{"label": label, "image": png_base64(canvas_drawing(characters.image(name, s))), "drawn": True}
               for label, (name, s, _) in zip(labels, episode)]
    truth, queries = [], []
    for label, (name, s, q) in zip(labels, episode):
        for drawing in [q, *[d for d in rng.permutation(20).tolist() if d not in (s, q)][:2]]:
            truth.append(label)
            queries.append({"image": png_base64(canvas_drawing(characters.image(name, drawing))), "drawn": True})
    with using_threads(1), web.BackgroundServer(serve_run(quick_protonet_run)) as url:
        status, reply = classify(url, {"support": support, "queries": queries, "invert": "auto"})
    assert status == 200, reply
    predicted = [p["class"] for p in reply["predictions"]]
    assert sum(p == t for p, t in zip(predicted, truth)) >= 10, list(zip(predicted, truth))


# --- which model is served ---
def test_the_newest_image_run_is_served_and_others_are_skipped(tmp_path, quick_protonet_run, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "sinusoid-maml", "--iterations", "1", "--no-eval", "--no-progress",
                 "--output-dir", str(runs / "sinusoid")]) == 0
    (runs / "broken").mkdir()
    (runs / "broken" / "best.pt").write_bytes(b"not a checkpoint")
    (runs / "broken" / "config.yaml").write_text("task: {family: omniglot}\n")
    image_run = runs / "group" / "protonet"
    image_run.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(quick_protonet_run, image_run)
    os.utime(runs / "broken" / "best.pt")  # the newest, but unreadable: skipped with a note
    assert image_runs(runs)[0] == runs / "broken"
    capsys.readouterr()
    served = choose_model(None, runs_root=runs, allow_training=False)
    assert served.source == "run" and served.run_dir == image_run
    assert "skipping" in capsys.readouterr().err


def test_without_runs_a_quick_protonet_is_trained_if_omniglot_is_here(tmp_path, monkeypatch, quick_protonet_run):
    trained = []

    def fake_training(cfg, evaluate=True, progress=True):  # the real one is the quick_protonet_run fixture's
        trained.append(cfg)
        return quick_protonet_run

    monkeypatch.setattr("fastadapt.serve.model.train_quick_protonet", fake_training)
    monkeypatch.setattr("fastadapt.serve.model.omniglot_here", lambda root: "/data/omniglot")
    served = choose_model(None, runs_root=tmp_path / "runs")
    assert served.source == "quick" and "trained here just now" in served.summary
    assert trained[0].method.name == "protonet" and trained[0].task.data_root == "/data/omniglot"
    assert trained[0].training.output_dir == str(tmp_path / "runs" / "serve-protonet")
    monkeypatch.setattr("fastadapt.serve.model.omniglot_here", lambda root: None)
    assert choose_model(None, runs_root=tmp_path / "runs").source == "pixels"


def test_the_page_shows_the_runs_test_accuracy_and_curves(tmp_path, quick_protonet_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quick_protonet_run, run)
    described = serve_run(run).describe()
    assert described["test_accuracy"] is None and described["method"] == "protonet"
    assert [point[0] for point in described["curves"]["loss"]][-1] == 150
    assert described["best_validation_accuracy"] == max(p[1] for p in described["curves"]["val_accuracy"])
    payload = {"results": {"5-way 1-shot": {"mean": 0.9, "ci95": 0.01, "num_tasks": 600}}}
    (run / TEST_RESULTS).write_text(json.dumps(payload))
    assert serve_run(run).describe()["test_accuracy"] == payload["results"]


def test_train_records_its_test_evaluation(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid-maml", "--iterations", "2", "--test-tasks", "4", "--no-progress",
                 "--output-dir", str(run)]) == 0
    recorded = read_test_results(run)
    assert recorded["tasks"] == "sinusoid" and recorded["results"]["1 step"]["num_tasks"] == 4
    assert f"{recorded['results']['1 step']['mean']:.4f}" in capsys.readouterr().out


def test_the_pixel_model_needs_no_data(pixel_server):
    served = serve_pixels()
    assert isinstance(served, ServedModel) and served.run_dir is None and served.redraws_drawings


# --- the command line ---
def test_serve_without_the_extra_says_which_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails as if it were not installed
    assert main(["serve"]) == 2
    assert "pip install 'fastadapt[serve]'" in capsys.readouterr().err


def test_the_core_imports_and_classifies_without_fastapi():
    """In a Python that cannot import fastapi, uvicorn or starlette: fastadapt, its CLI and FewShotClassifier
    work, and `fastadapt serve` says which extra to install."""
    script = (
        "import sys, importlib.abc\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('fastapi', 'uvicorn', 'starlette'):\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import numpy as np\n"
        "from fastadapt.cli import main\n"
        "from fastadapt.serve.model import serve_pixels\n"
        "a, b = np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8)\n"
        "print(serve_pixels().classifier.classify([a, b], ['a', 'b'], [a]).predictions)\n"
        "sys.exit(main(['serve', '--no-train']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "['a']", done.stderr
    assert done.returncode == 2 and "pip install 'fastadapt[serve]'" in done.stderr, done.stderr


def test_a_busy_port_is_a_one_line_error(capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--no-train"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serving_beyond_this_machine_warns(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(web, "serve", lambda served, host, port, finder=None: calls.append((host, port)))
    monkeypatch.setattr("fastadapt.serve.model.choose_model", lambda *a, **k: serve_pixels())
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    assert main(["serve", "--host", "0.0.0.0", "--port", str(port)]) == 0
    captured = capsys.readouterr()
    assert "warning: serving on 0.0.0.0" in captured.err and calls == [("0.0.0.0", port)]
    assert main(["serve", "--port", str(port)]) == 0
    assert "warning" not in capsys.readouterr().err
