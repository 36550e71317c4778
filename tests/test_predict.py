"""Your own images: image preparation, polarity, the FewShotClassifier API, `fastadapt predict`, and
cross-domain evaluation."""
import io
import json
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import fastadapt
from fastadapt.cli import main
from fastadapt.datasets.preparation import ImagePreparation, dataset_polarity, image_polarity

OMNIGLOT_LIKE = ImagePreparation((28, 28), 1, invert=True, polarity="light-on-dark")


def _ink_on_paper(seed=0, size=40) -> np.ndarray:
    """A black stroke pattern on white paper, uint8 (size, size)."""
    rng = np.random.default_rng(seed)
    paper = np.full((size, size), 255, np.uint8)
    for _ in range(3):
        row, col = rng.integers(8, size - 8, 2)
        paper[row - 1: row + 2, 5: size - 5] = 0
        paper[5: size - 5, col - 1: col + 2] = 0
    return paper


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_input_type_is_prepared_the_same_way(tmp_path):
    ink = _ink_on_paper()
    path = tmp_path / "x.png"
    path.write_bytes(_png(ink))
    inputs = [str(path), path, _png(ink), Image.fromarray(ink), ink, ink[:, :, None], ink.astype(np.float32) / 255,
              np.repeat(ink[:, :, None], 3, 2), torch.from_numpy(ink), torch.from_numpy(ink)[None].float() / 255]
    prepared = OMNIGLOT_LIKE.prepare(inputs)
    assert prepared.shape == (len(inputs), 1, 28, 28) and prepared.dtype == torch.float32
    for i in range(1, len(inputs)):
        torch.testing.assert_close(prepared[i], prepared[0], atol=1.01 / 255, rtol=0, msg=f"input {i}")
    # the Omniglot loader's steps: grey, Lanczos resize, 255 - value, / 255
    expected = 255 - np.asarray(Image.fromarray(ink).resize((28, 28), Image.LANCZOS))
    assert torch.equal(prepared[0, 0], torch.from_numpy(expected).float() / 255)


def test_sizes_and_channels_are_converted_and_bad_arrays_refused():
    rgb = ImagePreparation((20, 24), 3)
    out = rgb.prepare([np.zeros((7, 9), np.uint8), Image.new("RGBA", (50, 30))])
    assert out.shape == (2, 3, 20, 24)
    for bad, message in [(np.zeros((8, 8, 2), np.uint8), "C = 1, 3 or 4"), (torch.zeros(5, 8, 8), "(C, H, W)"),
                         (np.full((8, 8), 1.5), r"in \[0, 1\]"), (np.full((8, 8), 300), "0..255"),
                         ("not/here.png", "does not exist"), (b"not an image", "cannot decode"),
                         (3.0, "expected a file")]:
        with pytest.raises((ValueError, FileNotFoundError, TypeError), match=message):
            rgb.prepare([bad])


def test_polarity_is_detected_and_a_mismatch_refused_unless_told():
    ink = _ink_on_paper()
    assert image_polarity(torch.from_numpy(np.stack([ink, 255 - ink, np.full_like(ink, 128)]))[:, None]) == \
        ["dark-on-light", "light-on-dark", None]
    OMNIGLOT_LIKE.prepare([ink])  # black on white, like Omniglot's files: inverted as they were
    with pytest.raises(ValueError,
                       match="image 1: after inversion .* light strokes on a dark background.*invert=False"):
        OMNIGLOT_LIKE.prepare([ink, 255 - ink])
    kept = OMNIGLOT_LIKE.prepare([255 - ink], invert=False)
    auto = OMNIGLOT_LIKE.prepare([ink, 255 - ink], invert="auto")
    # flipping before or after the Lanczos resize differs by one grey level where it overshoots
    torch.testing.assert_close(auto[0], auto[1], atol=1.01 / 255, rtol=0)
    torch.testing.assert_close(kept[0], auto[1])
    OMNIGLOT_LIKE.prepare([np.full((8, 8), 200, np.uint8)])  # no strokes, no polarity: nothing to refuse
    assert dataset_polarity(torch.from_numpy(np.stack([255 - ink] * 5))[:, None]) == "light-on-dark"


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory):
    """A tiny ProtoNet trained on a folder of black-on-white glyphs (so it records no inversion)."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "glyphs"
    for c in range(10):
        (data / f"class{c}").mkdir(parents=True)
        for i in range(4):
            (data / f"class{c}" / f"{i}.png").write_bytes(_png(_ink_on_paper(seed=c, size=32)))
    run = root / "run"
    assert main(["train", "--algorithm", "protonet", "--tasks", "folder", "--data-root", str(data), "--image-size",
                 "16", "--conv-channels", "8", "--n-way", "2", "--k-shot", "1", "--num-query", "2", "--iterations",
                 "2", "--meta-batch-size", "2", "--val-tasks", "2", "--val-every", "2", "--eval-query", "2",
                 "--no-eval", "--no-progress",
                 "--output-dir", str(run)]) == 0
    return run


def test_the_classifier_takes_every_input_type_and_gives_probabilities(protonet_run, tmp_path):
    clf = fastadapt.FewShotClassifier.from_run(protonet_run)
    assert json.loads((protonet_run / "inputs.json").read_text())["images"]["polarity"] == "dark-on-light"
    support = [_ink_on_paper(seed=s) for s in (1, 2, 3)]
    queries = [_ink_on_paper(seed=s) for s in (3, 1, 2, 1)]
    clf.fit(support, ["c", "a", "b"])
    assert clf.classes_ == ["a", "b", "c"]
    assert list(clf.predict(queries)) == ["b", "c", "a", "c"]
    for as_type in (Image.fromarray, lambda a: torch.from_numpy(a), _png, lambda a: a.astype(np.float64) / 255):
        assert list(clf.predict([as_type(q) for q in queries])) == ["b", "c", "a", "c"]
    proba = clf.predict_proba(queries)
    assert proba.shape == (4, 3) and np.allclose(proba.sum(1), 1) and (proba.argmax(1) == [1, 2, 0, 2]).all()
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf.fit(support, ["a", "a", "a"])
    with pytest.raises(ValueError, match="dark strokes on a light background"):
        clf.fit([255 - s for s in support], ["c", "a", "b"])


def test_classify_from_several_threads_matches_one_thread(protonet_run):
    clf = fastadapt.FewShotClassifier.from_run(protonet_run)
    support = [_ink_on_paper(seed=s) for s in range(4)]
    expected = clf.classify(support, [0, 1, 2, 3], [_ink_on_paper(seed=s) for s in range(4)]).probabilities
    results, errors = [None] * 8, []

    def work(i):
        try:
            results[i] = clf.classify(support, [0, 1, 2, 3], [_ink_on_paper(seed=s) for s in range(4)]).probabilities
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.array_equal(r, expected) for r in results)


def _support_folder(root, classes):
    for name, seeds in classes.items():
        (root / name).mkdir(parents=True)
        for s in seeds:
            (root / name / f"{s}.png").write_bytes(_png(_ink_on_paper(seed=s)))
    return root


def test_predict_prints_a_table_or_json(protonet_run, tmp_path, capsys):
    support = _support_folder(tmp_path / "support", {"alpha": [1, 11], "beta": [2]})
    query = tmp_path / "q.png"
    query.write_bytes(_png(_ink_on_paper(seed=2)))
    assert main(["predict", str(protonet_run), "--support", str(support), "--query", str(query)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["query", "prediction", "alpha", "beta"] and row.split()[:2] == [str(query), "beta"]
    assert main(["predict", str(protonet_run), "--support", str(support), "--query", str(query), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["classes"] == ["alpha", "beta"] and payload["predictions"][0]["class"] == "beta"


@pytest.mark.parametrize("case, message", [
    ("empty class", "holds no images"), ("one class", "has only one class"), ("unreadable", "cannot read image"),
    ("no weights", "holds no trained weights"), ("missing query", "does not exist"),
])
def test_predict_errors_are_one_line(protonet_run, tmp_path, capsys, case, message):
    support = _support_folder(tmp_path / "support", {"a": [1], "b": [2]} if case != "one class" else {"a": [1]})
    run, query = protonet_run, tmp_path / "q.png"
    query.write_bytes(_png(_ink_on_paper(seed=5)))
    if case == "empty class":
        (support / "c").mkdir()
    elif case == "unreadable":
        (support / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    elif case == "no weights":
        run = tmp_path / "untrained"
        run.mkdir()
        (run / "config.yaml").write_text((protonet_run / "config.yaml").read_text())
    elif case == "missing query":
        query = tmp_path / "nothing.png"
    assert main(["predict", str(run), "--support", str(support), "--query", str(query)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cross_domain_eval_on_digits_matches_the_polarity(protonet_run, capsys):
    pytest.importorskip("sklearn")
    assert main(["eval", str(protonet_run), "--tasks", "digits", "--test-tasks", "5", "--eval-ways", "5",
                 "--eval-shots", "1", "2"]) == 0
    out = capsys.readouterr().out
    # the run's glyphs are dark on light; scikit-learn's digits are light on dark, so they are inverted
    assert "evaluated on digits: 10 classes, 1797 images" in out and "inverted" in out
    assert "5-way 1-shot" in out and "5-way 2-shot" in out
    assert main(["eval", str(protonet_run), "--data-root", "/tmp"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_predict_on_omniglot_files_matches_eval_on_the_same_episode(omniglot_dir, tmp_path, capsys):
    """The original PNGs of a fixed test episode, through `fastadapt predict`, give eval's predictions."""
    from fastadapt.datasets.omniglot import _list_archive
    from fastadapt.runs.directory import load_run
    from fastadapt.training.builders import build_tasks

    run = tmp_path / "run"
    assert main(["train", "--algorithm", "protonet", "--tasks", "omniglot", "--data-root", str(omniglot_dir),
                 "--dataset-split", "maml", "--conv-channels", "8", "--iterations", "3", "--meta-batch-size", "2",
                 "--val-tasks", "2", "--val-every", "3", "--n-way", "5", "--k-shot", "2", "--eval-query", "3",
                 "--no-eval", "--no-progress", "--output-dir", str(run)]) == 0
    capsys.readouterr()
    cfg, learner = load_run(run)
    tasks = build_tasks(cfg, "test")
    indices = tasks._fixed_indices(1, "test", 0, shuffle_support=False)[0][0]  # (5 classes, 2 support + 3 query)
    episode = tasks.fixed_tasks(1)
    expected = learner.eval().predict(learner.adapt(episode.support_x, episode.support_y), episode.query_x)[0]

    members = {}
    for archive in ("images_background.zip", "images_evaluation.zip"):
        for name, files in _list_archive(omniglot_dir / archive).items():
            members[name] = (omniglot_dir / archive, files)
    dataset = tasks.dataset
    queries = []
    for label, row in enumerate(indices.tolist()):
        for slot, index in enumerate(row):
            character = dataset.class_names[dataset.labels[index]]
            position = int((dataset.labels[:index] == dataset.labels[index]).sum())
            archive, files = members[character]
            with zipfile.ZipFile(archive) as z:
                data = z.read(files[position])
            target = tmp_path / ("support" if slot < 2 else "query") / (str(label) if slot < 2 else "")
            target.mkdir(parents=True, exist_ok=True)
            file = target / (f"{slot}.png" if slot < 2 else f"{label}-{slot}.png")
            file.write_bytes(data)
            if slot >= 2:
                queries.append(str(file))
    assert main(["predict", str(run), "--support", str(tmp_path / "support"), "--query", *queries, "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)["predictions"]
    assert [int(p["class"]) for p in predicted] == expected.argmax(-1).tolist()
    probabilities = torch.tensor([[p["probabilities"][str(k)] for k in range(5)] for p in predicted],
                                 dtype=torch.float64)
    torch.testing.assert_close(probabilities, torch.softmax(expected, -1).double(), atol=1e-5, rtol=0)


def test_the_cross_domain_benchmark_prints_its_table(protonet_run, tmp_path, capsys):
    pytest.importorskip("sklearn")
    from fastadapt.benchmarks.crossdomain import main as benchmark

    saved = tmp_path / "proto.json"
    assert benchmark([f"ProtoNet={protonet_run}", "--test-tasks", "3", "--ways", "2", "--shots", "1",
                      "--json", str(saved)]) == 0
    first = capsys.readouterr().out
    assert "| ProtoNet (folder test) | " in first and "ProtoNet, 2-way 1-shot: " in first
    assert benchmark(["--combine", str(saved), "--ways", "2", "--shots", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-4:] == first.splitlines()[-4:]


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_are_loaded_weights_only_so_a_foreign_pickle_runs_nothing(tmp_path, capsys):
    from fastadapt.training.checkpoint import load_checkpoint

    torch.save({"learner": _RunsCode(), "config": {}}, tmp_path / "best.pt")
    with pytest.raises(ValueError, match="unreadable or corrupt"):
        load_checkpoint(tmp_path / "best.pt")
    assert "must never run" not in capsys.readouterr().out


def test_digits_are_for_evaluation_only_and_come_light_on_dark():
    pytest.importorskip("sklearn")
    from fastadapt.config.schema import Config
    from fastadapt.training.builders import build_tasks

    with pytest.raises(ValueError, match="for evaluation only"):
        build_tasks(Config(algorithm="protonet", tasks="digits"), "train")
    tasks = build_tasks(Config(algorithm="protonet", tasks="digits", image_size=20, channels=3, n_way=5, k_shot=5),
                        "test")
    assert tasks.dataset.num_classes == 10 and tasks.dataset.image_shape == (3, 20, 20)
    assert dataset_polarity(tasks.dataset.images) == "light-on-dark"
