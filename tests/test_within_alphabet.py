"""Lake et al.'s within-alphabet one-shot trials: one alphabet per episode, support and query by different
drawers, fixed and seeded; the background-only rule (a run that may have seen evaluation alphabets refuses
them, in one line); and --augment's random affine distortions of training images."""
import json
import math
import zipfile

import pytest
import torch

from fastadapt.cli import main
from fastadapt.config.schema import Config
from fastadapt.datasets import ClassDataset
from fastadapt.datasets.omniglot import DRAWERS, alphabet_of, drawers_of
from fastadapt.tasks import EpisodeTasks, WithinAlphabetEpisodes
from fastadapt.tasks.episodes import SHIFT, random_affine
from fastadapt.training.builders import build_tasks
from episode_helpers import indices_of, traceable_dataset  # the tests directory is on sys.path under pytest


def alphabet_dataset(sizes=(25, 20, 19, 30, 3), drawers=6) -> tuple[ClassDataset, list[str], torch.Tensor]:
    """Alphabets of ``sizes`` characters, each drawn once by each of ``drawers`` people (in a shuffled order, so
    that a drawer is not a position); image i holds i in pixels 0 and 1 (base 256), as ``indices_of`` reads."""
    names = [f"images_evaluation/A{a}/character{c:02d}" for a, size in enumerate(sizes) for c in range(size)]
    n = len(names) * drawers
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = torch.arange(n) % 256, torch.arange(n) // 256
    labels = torch.arange(len(names)).repeat_interleave(drawers)
    order = torch.randperm(drawers, generator=torch.Generator().manual_seed(3))
    who = torch.cat([order + 1 for _ in names])
    return ClassDataset(images, labels, names), [alphabet_of(name) for name in names], who


def test_an_episode_is_one_alphabet_its_queries_by_other_drawers_than_its_support():
    dataset, alphabets, who = alphabet_dataset()
    tasks = WithinAlphabetEpisodes(dataset, alphabets, who, n_way=20, k_shot=2, num_query=3)
    assert tasks.alphabets_used == ["A0", "A1", "A3"]  # A2 (19 characters) and A4 (3) cannot fill 20 ways
    batch = tasks.sample(300, torch.Generator().manual_seed(0))
    seen = set()
    for t in range(300):
        support, query = indices_of(batch.support_x[t]), indices_of(batch.query_x[t])
        classes = dataset.labels[support]
        assert {alphabets[c] for c in classes.tolist()} == {alphabets[int(classes[0])]}  # one alphabet
        seen.add(alphabets[int(classes[0])])
        assert len(set(classes.tolist())) == 20
        # each label one class, in support and query alike
        label_class = {int(y): int(c) for y, c in zip(batch.support_y[t], classes)}
        assert all(label_class[int(y)] == int(c) for y, c in zip(batch.query_y[t], dataset.labels[query]))
        support_drawers, query_drawers = set(who[support].tolist()), set(who[query].tolist())
        assert len(support_drawers) == 2 and len(query_drawers) == 3 and not support_drawers & query_drawers
    assert seen == {"A0", "A1", "A3"}


def test_fixed_episodes_are_the_same_every_time_and_differ_by_seed_and_split():
    dataset, alphabets, who = alphabet_dataset()
    tasks = WithinAlphabetEpisodes(dataset, alphabets, who)
    first = indices_of(tasks.fixed_tasks(40).support_x)
    again = WithinAlphabetEpisodes(dataset, alphabets, who).fixed_tasks(40)
    assert torch.equal(indices_of(again.support_x), first)
    assert torch.equal(indices_of(tasks.fixed_tasks(10).support_x), first[:10])  # more tasks extend fewer
    chunks = [indices_of(b.query_x) for b in tasks.iter_fixed_tasks(40, 7)]
    assert torch.equal(torch.cat(chunks), indices_of(tasks.fixed_tasks(40).query_x))
    assert not torch.equal(indices_of(tasks.fixed_tasks(40, seed=1).support_x), first)
    assert not torch.equal(indices_of(tasks.fixed_tasks(40, split="val").support_x), first)
    assert torch.equal(tasks.fixed_classes(40), dataset.labels[first])


def test_episodes_the_data_cannot_serve_are_refused():
    dataset, alphabets, who = alphabet_dataset(sizes=(10, 12))
    with pytest.raises(ValueError, match="need an alphabet of 20 classes; the largest has 12"):
        WithinAlphabetEpisodes(dataset, alphabets, who)
    dataset, alphabets, who = alphabet_dataset(drawers=2)
    with pytest.raises(ValueError, match="need 3 images of every class"):  # 3 drawers
        WithinAlphabetEpisodes(dataset, alphabets, who, k_shot=2)
    twice = who.clone()
    twice[1] = twice[0]  # class 0 drawn twice by one person, never by another
    with pytest.raises(ValueError, match="one image of every class by each drawer"):
        WithinAlphabetEpisodes(dataset, alphabets, twice)


def test_drawers_are_the_positions_within_a_character_and_the_archives_agree(omniglot_dir):
    names = [f"images_background/A/c{c}" for c in range(3)]
    dataset = ClassDataset(torch.zeros(60, 1, 2, 2, dtype=torch.uint8), torch.arange(3).repeat(20), names)
    assert drawers_of(dataset).tolist() == [d for d in range(1, 21) for _ in range(3)]
    with pytest.raises(ValueError, match="has 19 images"):
        drawers_of(dataset.subset([0, 1]).concat([dataset.subset([2]), ClassDataset(
            torch.zeros(19, 1, 2, 2, dtype=torch.uint8), torch.zeros(19, dtype=torch.int64), ["x/y/z"])]))
    # what drawers_of relies on: each character's files, sorted, are <id>_01.png ... <id>_20.png
    for name in ("images_background.zip", "images_evaluation.zip"):
        with zipfile.ZipFile(omniglot_dir / name) as archive:
            characters: dict[str, list[str]] = {}
            for member in archive.namelist():
                if member.endswith(".png"):
                    folder, file = member.rsplit("/", 1)
                    characters.setdefault(folder, []).append(file)
        for files in characters.values():
            assert [f[-6:-4] for f in sorted(files)] == [f"{d:02d}" for d in range(1, DRAWERS + 1)]


def train_run(tmp_path, name, *flags):
    out = tmp_path / name
    assert main(["train", "--tasks", "omniglot", "--algorithm", "protonet", "--n-way", "5", "--k-shot", "1",
                 "--iterations", "2", "--val-every", "2", "--val-tasks", "4", "--conv-channels", "8",
                 "--threads", "1", "--no-eval", "--no-progress", "--output-dir", str(out), *flags]) == 0
    return out


def test_a_background_run_reports_the_trials_beside_the_usual_table(tmp_path, fake_omniglot, capsys):
    run = train_run(tmp_path, "lake", "--dataset-split", "background", "--episodes", "within-alphabet")
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--test-tasks", "6", "--eval-ways", "5"]) == 0
    out = capsys.readouterr().out
    assert "6 fixed validation episodes" in out and "5-way 1-shot" in out
    assert any(line.startswith("within-alphabet 20-way 1-shot  0.") for line in out.splitlines())
    assert main(["eval", str(run), "--split", "val", "--test-tasks", "6", "--eval-ways", "5", "--json", "-"]) == 0
    payload = json.loads(capsys.readouterr().out)
    trials = payload["results"]["within-alphabet 20-way 1-shot"]
    assert payload["split"] == "val" and trials["num_tasks"] == 6
    assert trials["mean"] * 120 == pytest.approx(round(trials["mean"] * 120), abs=1e-6)  # 6 trials of 20 queries
    # a random-episodes run of the background split is evaluated on the trials on request
    plain = train_run(tmp_path, "plain", "--dataset-split", "background")
    capsys.readouterr()
    assert main(["eval", str(plain), "--split", "val", "--test-tasks", "6", "--eval-ways", "5"]) == 0
    assert "within-alphabet" not in capsys.readouterr().out
    assert main(["eval", str(plain), "--split", "val", "--test-tasks", "6", "--eval-ways", "5",
                 "--episodes", "within-alphabet"]) == 0
    assert "within-alphabet 20-way 1-shot" in capsys.readouterr().out


@pytest.mark.parametrize("split", ["maml", "vinyals"])
def test_a_run_that_may_have_seen_evaluation_alphabets_refuses_the_trials_in_one_line(tmp_path, fake_omniglot,
                                                                                       capsys, split):
    run = train_run(tmp_path, split, "--dataset-split", split)
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "within-alphabet", "--test-tasks", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastadapt: error: within-alphabet episodes")
    assert f"--dataset-split {split}" in err and "background" in err
    # nor may such a run be trained for them
    assert main(["train", "--tasks", "omniglot", "--algorithm", "protonet", "--dataset-split", split,
                 "--episodes", "within-alphabet", "--output-dir", str(tmp_path / "no")]) == 2
    assert "--dataset-split" in capsys.readouterr().err and not (tmp_path / "no" / "last.pt").exists()
    # a background run started from its weights has seen them too, through init_from
    child = train_run(tmp_path, f"{split}-child", "--dataset-split", "background", "--init-from", str(run))
    capsys.readouterr()
    assert main(["eval", str(child), "--episodes", "within-alphabet", "--test-tasks", "4"]) == 2
    assert f"init_from), and there this run's training classes (--dataset-split {split})" in capsys.readouterr().err


def test_random_affine_moves_within_its_ranges_and_follows_the_generator():
    images = torch.zeros(300, 1, 29, 29)
    images[:, 0, 14, 14] = 1  # a dot at the centre: rotation, shear and scale leave it there, the shift moves it
    moved = random_affine(images, torch.Generator().manual_seed(0))
    assert torch.equal(moved, random_affine(images, torch.Generator().manual_seed(0)))
    mass = moved.sum((1, 2, 3))
    grid = torch.arange(29.0)
    centre_y = (moved[:, 0].sum(2) * grid).sum(1) / mass
    centre_x = (moved[:, 0].sum(1) * grid).sum(1) / mass
    # the shift is up to SHIFT of the size; 10% more for the centroid of a bilinearly resampled dot under scale and
    # shear (a shift applied before the linear map instead, which is how it goes wrong, moved it 0.76 px here)
    bound = SHIFT * 29 * 1.1
    offsets = torch.stack([centre_x - 14, centre_y - 14])
    assert offsets.abs().max() <= bound and offsets.abs().max() > bound / 3
    # a spread-out shape does change: rotation / shear / scale, not just moves
    ring = torch.zeros(1, 1, 29, 29)
    ring[0, 0, 4, 4:25] = 1
    assert not torch.allclose(random_affine(ring, torch.Generator().manual_seed(1)), ring, atol=0.1)


def test_augmented_training_episodes_are_the_same_tasks_distorted_and_evaluation_ones_never():
    dataset = traceable_dataset(classes=8, per_class=5)
    plain = EpisodeTasks(dataset, n_way=3, k_shot=1, num_query=2)
    augmented = EpisodeTasks(dataset, n_way=3, k_shot=1, num_query=2, augment=True)
    a = plain.sample(4, torch.Generator().manual_seed(2))
    b = augmented.sample(4, torch.Generator().manual_seed(2))
    assert torch.equal(a.support_y, b.support_y) and not torch.equal(a.support_x, b.support_x)
    assert torch.equal(plain.fixed_tasks(5).query_x, augmented.fixed_tasks(5).query_x)
    assert math.isclose(float(b.support_x.min()), 0.0, abs_tol=1e-6) and float(b.support_x.max()) <= 1 + 1e-6


def test_within_alphabet_training_episodes_keep_to_one_alphabet_at_one_rotation(fake_omniglot):
    cfg = Config(tasks="omniglot", algorithm="protonet", dataset_split="background", rotate_train_classes=True,
                 within_alphabet=True, n_way=20, k_shot=1, num_query=2, augment=True)
    tasks = build_tasks(cfg, "train")
    assert isinstance(tasks, WithinAlphabetEpisodes) and tasks.augment
    names = tasks.dataset.class_names
    assert len(tasks.alphabets_used) == 4 * 24  # 24 training alphabets of 35 characters (the 25th has 14), 4 turns
    indices = tasks.sample_indices(50, torch.Generator().manual_seed(0))
    for episode in indices:
        groups = {alphabet_of(names[c]) for c in tasks.dataset.labels[episode.flatten()].tolist()}
        assert len(groups) == 1 and all(not name.startswith(("Armenian", "Bengali")) for name in groups)
    with pytest.raises(ValueError, match="Omniglot's alphabets"):
        build_tasks(cfg.replace(tasks="folder", data_root="x"), "train")


def test_support_views_average_the_support_image_with_distorted_copies_at_evaluation_only():
    from fastadapt.algorithms.protonet import SUPPORT_VIEWS_SEED, PrototypicalNetworks
    from fastadapt.models import Conv4

    torch.manual_seed(0)
    encoder = Conv4(1, 8, None, "batch", (28, 28))
    plain, views = PrototypicalNetworks(encoder), PrototypicalNetworks(encoder, support_views=3)
    support_x, support_y = torch.rand(2, 4, 1, 28, 28), torch.arange(4).repeat(2, 1)
    plain.eval(), views.eval()
    prototypes = views.adapt(support_x, support_y)
    assert torch.equal(prototypes, views.adapt(support_x, support_y))  # the same copies every time
    generator = torch.Generator().manual_seed(SUPPORT_VIEWS_SEED)
    copies = [support_x] + [random_affine(support_x, generator) for _ in range(2)]
    expected = torch.stack([encoder(c.flatten(0, 1)).flatten(1).unflatten(0, (2, 4)) for c in copies]).mean(0)
    assert torch.allclose(prototypes, expected, atol=1e-5)
    assert not torch.allclose(prototypes, plain.adapt(support_x, support_y), atol=1e-3)
    views.train()
    assert torch.allclose(views.adapt(support_x, support_y), plain.train().adapt(support_x, support_y))
    with pytest.raises(ValueError, match="support_views must be a positive int"):
        PrototypicalNetworks(encoder, support_views=0)
