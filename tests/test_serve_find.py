"""The page's "find it" mode through its JSON API (POST /api/find): a drawn symbol found in a scene of Omniglot
test characters drawn the benchmark's way, or in an uploaded scene; the same answer for the same request; bad
requests answered 4xx with one message."""
import base64
import http.client
import io
import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (pip install -e '.[serve]') is not installed")

from fastadapt.datasets.drawing import render_strokes  # noqa: E402
from fastadapt.serve import app as web  # noqa: E402
from fastadapt.serve.find import SceneFinder, template_matching_detector  # noqa: E402
from fastadapt.serve.model import serve_pixels  # noqa: E402
from fastadapt.serve.page import png_base64  # noqa: E402
from fastadapt.tasks.boxes import box_iou  # noqa: E402
from fastadapt.training.threads import using_threads  # noqa: E402
from test_serve import SHAPES, shape_png  # noqa: E402


def find(url: str, request: dict | bytes) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        body = request if isinstance(request, bytes) else json.dumps(request).encode()
        connection.request("POST", "/api/find", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def find_server(omniglot_dir):
    finder = SceneFinder(template_matching_detector(), str(omniglot_dir))
    with using_threads(1), web.BackgroundServer(serve_pixels(), finder=finder) as url:
        yield url


def _image(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_a_drawn_symbol_is_hidden_in_a_drawn_scene_and_boxed(find_server):
    request = {"symbol": {"image": shape_png("cross"), "drawn": True}, "characters": 6, "copies": 2, "seed": 1}
    status, reply = find(find_server, request)
    assert status == 200, reply
    scene, mask = _image(reply["scene"]), _image(reply["mask"])
    assert scene.shape == (96, 96, 3) and mask.shape == (96, 96, 4) and _image(reply["reference"]).shape == (32, 32, 3)
    truth = torch.tensor(reply["truth"], dtype=torch.float64)
    assert truth.shape == (2, 4)
    for left, top, w, h in truth.int().tolist():  # each copy is drawn there, last, so never covered
        assert scene[top:top + h, left:left + w].any()
    found = torch.tensor([d["box"] for d in reply["detections"]], dtype=torch.float64).reshape(-1, 4)
    scores = [d["score"] for d in reply["detections"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= reply_min_score(find_server)
    assert (box_iou(truth, found).amax(1) > 0.5).any()  # template matching boxes at least one copy of a cross
    assert (mask[..., 3] > 0).sum() == reply["mask_pixels"] > 0
    again = find(find_server, request)[1]
    assert {k: v for k, v in again.items() if k != "milliseconds"} == {k: v for k, v in reply.items()
                                                                       if k != "milliseconds"}
    other = find(find_server, {**request, "seed": 2})[1]
    assert other["truth"] != reply["truth"]


def reply_min_score(url: str) -> float:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", "/api/model")
    return json.loads(connection.getresponse().read())["find"]["min_score"]


def test_an_uploaded_scene_is_searched_at_the_symbols_scale(find_server):
    """Two tees drawn as on the symbol's canvas, on a wider sheet, and a bar: both tees are boxed."""
    tee = np.asarray(render_strokes([np.array(s, float) for s in SHAPES["tee"]], 210, 9))
    bar = np.asarray(render_strokes([np.array(s, float) for s in SHAPES["bar"]], 210, 9))
    sheet = np.full((300, 700), 255, np.uint8)
    sheet[40:250, 20:230] = tee
    sheet[60:270, 460:670] = tee
    sheet[50:260, 240:450] = np.minimum(sheet[50:260, 240:450], bar)
    status, reply = find(find_server, {"symbol": {"image": shape_png("tee"), "drawn": True},
                                       "scene": {"image": png_base64(Image.fromarray(sheet))}})
    assert status == 200, reply
    assert reply["truth"] is None and reply["reference"] is None and (reply["width"], reply["height"]) == (700, 300)
    found = torch.tensor([d["box"] for d in reply["detections"]], dtype=torch.float64).reshape(-1, 4)
    tees = torch.tensor([[55, 80, 140, 140], [495, 100, 140, 140]], dtype=torch.float64)  # their ink boxes
    # each tee boxed by one of the two best (a narrower tee is part of a tee, and may score as high)
    assert (box_iou(tees, found[:2]).amax(1) >= 0.5).all(), reply["detections"]


@pytest.mark.parametrize("change, status, message", [
    ({"symbol": {"image": png_base64(Image.new("L", (210, 210), 255)), "drawn": True}}, 422, "empty"),
    ({"copies": 5}, 422, "copies"),
    ({"characters": 3, "copies": 4}, 422, "do not fit"),
    ({"characters": 0}, 422, "characters"),
    ({"seed": -1}, 422, "seed"),
    ({"symbol": {"image": "not base64!", "drawn": True}}, 422, "not valid base64"),
    ({"scene": {"image": base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()}}, 422, "the scene"),
    ({"scene": {"image": png_base64(Image.new("L", (5, 5), 255))}}, 422, "at least 8"),
    ({"scene": {"image": png_base64(Image.new("L", (50, 50), 255))}}, 200, None),
    ({"extra": 1}, 422, "extra"),
])
def test_bad_requests_are_4xx_with_one_message(find_server, change, status, message):
    request = {"symbol": {"image": shape_png("tee"), "drawn": True}, **change}
    got, reply = find(find_server, request)
    assert got == status, reply
    if message:
        assert set(reply) == {"error"} and message in reply["error"] and "\n" not in reply["error"]
    else:
        assert reply["detections"] == []  # a blank scene holds nothing


def test_without_omniglot_a_drawn_scene_is_refused_and_an_uploaded_one_served():
    finder = SceneFinder(template_matching_detector(), None)
    with using_threads(1), web.BackgroundServer(serve_pixels(), finder=finder) as url:
        status, reply = find(url, {"symbol": {"image": shape_png("tee"), "drawn": True}})
        assert status == 422 and "upload a scene" in reply["error"]
        sheet = png_base64(Image.fromarray(np.full((120, 160), 255, np.uint8)))
        assert find(url, {"symbol": {"image": shape_png("tee"), "drawn": True}, "scene": {"image": sheet}})[0] == 200


def test_serve_refuses_a_detector_run_that_finds_nothing_in_one_line(tmp_path, capsys):
    from fastadapt.cli import main

    run = tmp_path / "sinusoid"
    assert main(["train", "--tasks", "sinusoid", "--algorithm", "maml", "--iterations", "0", "--no-eval",
                 "--no-progress", "--output-dir", str(run)]) == 0
    capsys.readouterr()
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    assert main(["serve", "--port", str(port), "--detector", str(run), "--no-train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finds no objects" in err, err
