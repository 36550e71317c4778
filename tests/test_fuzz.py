"""Fuzzing, with Hypothesis, of what users and files control: episode sizes against the data, config files,
image folders, and checkpoint files. Each either works and satisfies its invariants, or is refused with a
one-line error of the documented kind; nothing else (no other exception, no silent nonsense).

Examples per property (FUZZ_EXAMPLES below) are chosen to keep the whole file under a minute on 2 cores."""
import io
import shutil
import typing

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st
from PIL import Image

from fastadapt.config.schema import FLAT, Config, ConfigError, base_type
from fastadapt.datasets import ClassDataset, load_image_folder
from fastadapt.runs.directory import train
from fastadapt.tasks import EpisodeTasks
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.trainer import Trainer

FUZZ_EXAMPLES = {"episodes": 150, "config": 300, "folders": 40, "checkpoints": 40}
def fuzz(kind: str) -> settings:
    """Deterministic examples (derandomize: every run tries the same inputs), no per-example deadline."""
    return settings(max_examples=FUZZ_EXAMPLES[kind], deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# --- the episode sampler ---
@st.composite
def datasets(draw):
    counts = draw(st.lists(st.integers(1, 7), min_size=1, max_size=8))
    labels = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))]
    # image i holds the value i, so every drawn image can be traced back to its index
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return ClassDataset(images, labels, [f"c{i}" for i in range(len(counts))])


@fuzz("episodes")
@given(dataset=datasets(), way=st.integers(-1, 9), shot=st.integers(-1, 7), query=st.integers(-1, 7),
       tasks=st.integers(1, 5), seed=st.integers(0, 2**31), shuffle=st.booleans())
def test_episodes_are_valid_or_refused(dataset, way, shot, query, tasks, seed, shuffle):
    counts = dataset.images_per_class
    possible = way >= 2 and shot >= 1 and query >= 1 and way <= dataset.num_classes and counts.min() >= shot + query
    event("refused" if not possible else "sampled")
    if not possible:
        with pytest.raises(ValueError):
            EpisodeTasks(dataset, way, shot, query)
        return
    episodes = EpisodeTasks(dataset, way, shot, query)
    sampled = episodes.sample(tasks, torch.Generator().manual_seed(seed))
    fixed = episodes.fixed_tasks(tasks, "test", seed=seed % 1000, shuffle_support=shuffle)
    for batch in (sampled, fixed):
        assert batch.support_x.shape == (tasks, way * shot, 1, 2, 2)
        assert batch.query_x.shape == (tasks, way * query, 1, 2, 2)
        for t in range(tasks):
            support = (batch.support_x[t, :, 0, 0, 0] * 255).round().long()
            query_ids = (batch.query_x[t, :, 0, 0, 0] * 255).round().long()
            assert len(set(support.tolist()) | set(query_ids.tolist())) == way * (shot + query)  # all different
            classes = {}
            for ids, labels in ((support, batch.support_y[t]), (query_ids, batch.query_y[t])):
                for image, label in zip(ids.tolist(), labels.tolist()):
                    classes.setdefault(label, set()).add(int(dataset.labels[image]))
            assert sorted(classes) == list(range(way))
            assert all(len(c) == 1 for c in classes.values())  # one dataset class per label
            assert len({next(iter(c)) for c in classes.values()}) == way  # different classes per label
            assert sorted(batch.support_y[t].tolist()) == sorted(list(range(way)) * shot)


# --- config files ---
junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
                 st.sampled_from(["1e-3", "0.1", "maml", "omniglot", "auto"]))
junk_values = st.one_of(junk, st.lists(junk, max_size=3), st.dictionaries(st.text(max_size=6), junk, max_size=2))


def of_its_type(setting):
    """Values of the setting's own type, mostly in a plausible range (so that many configs load)."""
    base = base_type(setting.hint)
    if typing.get_origin(base) is list:
        return st.lists(st.integers(-1, 30), max_size=3)
    return {bool: st.booleans(), int: st.integers(-1, 100), float: st.floats(-1, 10, allow_nan=False),
            str: st.sampled_from(["maml", "omniglot", "auto", "runs/x", "cpu", ""])}[base]


@st.composite
def settings_files(draw):
    """A config file: flat names and/or sections, values of the right type or junk, and unknown names."""
    values = {}
    for name in draw(st.lists(st.sampled_from(sorted(FLAT)), max_size=5, unique=True)):
        value = draw(st.one_of(of_its_type(FLAT[name]), junk_values) if draw(st.booleans()) else
                     of_its_type(FLAT[name]))
        if name in values or draw(st.booleans()):  # "model" is both a flat name and a section
            section = values.get(FLAT[name].section)
            values[FLAT[name].section] = {**(section if isinstance(section, dict) else {}), FLAT[name].name: value}
        else:
            values[name] = value
    if draw(st.integers(0, 9)) == 0:
        values[draw(st.text(max_size=10))] = draw(junk_values)
    return values


@fuzz("config")
@given(values=settings_files())
def test_config_files_load_or_are_refused_in_one_line(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    try:
        cfg = Config.load(path)
    except ConfigError as error:
        event("refused")
        assert "\n" not in str(error) and str(error).startswith(f"{path}: config: ")
        return
    event("loaded")
    cfg.save(path)
    assert Config.load(path) == cfg


# --- image folders ---
@st.composite
def image_files(draw):
    broken = draw(st.integers(0, 19)) == 0  # one file in twenty is not an image
    kind = draw(st.sampled_from(["corrupt", "empty", "text"] if broken else ["png-L", "png-RGB", "png-RGBA",
                                                                              "png-1", "jpeg"]))
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    if kind in ("corrupt", "empty", "text"):
        return {"corrupt": b"\x89PNG\r\n\x1a\nnot really", "empty": b"", "text": b"hello"}[kind], ".png"
    mode = kind.split("-")[1] if "-" in kind else "RGB"
    array = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 256, (*size[::-1], 4), dtype=np.uint8)
    image = Image.fromarray(array, "RGBA").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if kind == "jpeg" else "PNG")
    return buffer.getvalue(), ".jpg" if kind == "jpeg" else ".png"


@fuzz("folders")
@given(classes=st.lists(st.lists(image_files(), min_size=1, max_size=3) | st.just([]), min_size=0, max_size=4),
       image_size=st.sampled_from([None, 1, 5, 8]), channels=st.sampled_from([None, 1, 3]))
def test_image_folders_load_or_are_refused_in_one_line(tmp_path_factory, classes, image_size, channels):
    root = tmp_path_factory.mktemp("folder")
    for c, files in enumerate(classes):
        (root / f"class{c}").mkdir()
        for i, (data, suffix) in enumerate(files):
            (root / f"class{c}" / f"{i}{suffix}").write_bytes(data)
    try:
        dataset = load_image_folder(root, image_size, channels)
    except (ValueError, FileNotFoundError) as error:
        event("refused")
        assert "\n" not in str(error)
        return
    event("loaded")
    assert dataset.num_classes == len(classes) and len(dataset) == sum(len(f) for f in classes)
    assert dataset.images.shape[1] in (1, 3)
    if image_size is not None:
        assert dataset.images.shape[2:] == (image_size, image_size)


def test_pre_split_folders_sharing_a_class_are_refused(tmp_path, glyph_folder):
    for split in ("train", "val", "test"):
        shutil.copytree(glyph_folder / "class00", tmp_path / split / f"{split}-only" )
    shutil.copytree(glyph_folder / "class01", tmp_path / "train" / "shared")
    shutil.copytree(glyph_folder / "class01", tmp_path / "test" / "shared")
    from fastadapt.training.builders import build_tasks
    with pytest.raises(ValueError, match=r"train/ and test/ share the class name\(s\) \['shared'\]"):
        build_tasks(Config(algorithm="protonet", tasks="folder", data_root=str(tmp_path), n_way=2), "train")


# --- checkpoint files ---
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = Config(tasks="sinusoid", k_shot=5, meta_batch_size=2, iterations=10, val_every=5, checkpoint_every=5,
                 log_every=5, val_tasks=5, test_tasks=5, output_dir=str(run))
    train(cfg, progress=False)
    return cfg, run


@fuzz("checkpoints")
@given(cut=st.floats(0, 1, exclude_max=True), flips=st.lists(st.integers(0, 10**9), max_size=4))
def test_a_damaged_checkpoint_is_a_clear_error_and_the_run_resumes_from_best(finished_run, tmp_path_factory,
                                                                             cut, flips):
    cfg, run = finished_run
    data = bytearray((run / "last.pt").read_bytes())
    data = data[: int(cut * len(data))] if not flips else data
    for position in flips:
        data[position % len(data)] ^= 0xFF
    copy = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(run, copy)
    (copy / "last.pt").write_bytes(bytes(data))
    try:
        load_checkpoint(copy / "last.pt")
    except ValueError as error:
        event("refused")
        assert "last.pt" in str(error) and "\n" not in str(error).split(" (")[0]
        trainer = Trainer(cfg.replace(output_dir=str(copy)), *_fresh(cfg), progress=False)
        assert trainer.resume() == load_checkpoint(copy / "best.pt")["iteration"]


def _fresh(cfg):
    from fastadapt.runs.directory import build_learner
    from fastadapt.training.builders import build_tasks
    tasks = build_tasks(cfg)
    return build_learner(cfg, tasks), tasks
