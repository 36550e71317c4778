"""ClassDataset validation and class surgery; image folders: colour modes, resizing, and bad input."""
import pytest
import torch
from PIL import Image

from fastadapt.datasets import ClassDataset, load_image_folder


def small_dataset(classes: int = 3, per_class: int = 4, side: int = 5) -> ClassDataset:
    """Image i is filled with the value i, so every image can be traced back after any selection."""
    n = classes * per_class
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, side, side).contiguous()
    return ClassDataset(images, torch.arange(classes).repeat_interleave(per_class), [f"c{i}" for i in range(classes)])


def test_properties():
    dataset = ClassDataset(
        torch.zeros(5, 3, 4, 6, dtype=torch.uint8), torch.tensor([1, 0, 1, 1, 2]), ["a", "b", "c"]
    )
    assert dataset.num_classes == 3 and len(dataset) == 5 and dataset.image_shape == (3, 4, 6)
    assert dataset.images_per_class.tolist() == [1, 3, 1]
    table, counts = dataset.class_index_table()
    assert counts.tolist() == [1, 3, 1] and table[1].tolist() == [0, 2, 3] and table[:, 0].tolist() == [1, 0, 4]


@pytest.mark.parametrize(
    "images, labels, names, message",
    [
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"], "images must be a uint8 tensor"),
        (torch.zeros(2, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], r"\(N, C, H, W\)"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0.0, 1.0]), ["a", "b"], "labels must be an int64"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 1]), ["a", "b"], "2 images but 3 labels"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"], r"labels must lie in \[0, 2\)"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "a"], "repeated: \\['a'\\]"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 0]), ["a", "b"], r"empty: \['b'\]"),
        (torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), [], "no classes at all"),
    ],
)
def test_validation_names_the_problem(images, labels, names, message):
    with pytest.raises(ValueError, match=message):
        ClassDataset(images, labels, names)


def test_subset_relabels_in_the_given_order():
    dataset = small_dataset()
    part = dataset.subset(["c2", 0])
    assert part.class_names == ["c2", "c0"] and part.labels.tolist() == [1] * 4 + [0] * 4  # images keep their order
    assert part.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    with pytest.raises(KeyError, match="no class named 'c9'"):
        dataset.subset(["c9"])
    with pytest.raises(IndexError, match="class index 3 out of range"):
        dataset.subset([3])
    with pytest.raises(ValueError, match="more than once"):
        dataset.subset([1, "c1"])


def test_concat_appends_classes():
    a, one = small_dataset(2), small_dataset(1)
    b = ClassDataset(one.images, one.labels, ["other"])
    both = ClassDataset.concat([a, b])
    assert both.class_names == ["c0", "c1", "other"] and both.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    with pytest.raises(ValueError, match="unique"):
        ClassDataset.concat([a, a])
    with pytest.raises(ValueError, match="different image shapes"):
        ClassDataset.concat([a, small_dataset(side=6).subset(["c2"])])


def test_with_rotations_adds_rotated_classes():
    images = torch.arange(8, dtype=torch.uint8).view(2, 1, 2, 2)
    dataset = ClassDataset(images, torch.tensor([0, 1]), ["x", "y"]).with_rotations((0, 90))
    assert dataset.class_names == ["x/rot000", "y/rot000", "x/rot090", "y/rot090"]
    assert torch.equal(dataset.images[2, 0], torch.tensor([[1, 3], [0, 2]], dtype=torch.uint8))  # counter-clockwise
    with pytest.raises(ValueError, match="multiples of 90"):
        dataset.with_rotations((0, 45))
    wide = ClassDataset(torch.zeros(1, 1, 2, 3, dtype=torch.uint8), torch.tensor([0]), ["w"])
    with pytest.raises(ValueError, match="square"):
        wide.with_rotations()
    assert wide.with_rotations((0, 180)).num_classes == 2


def write_image(path, size=(6, 4), mode="RGB", color=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def test_image_folder_keeps_colour_and_orders_classes(tmp_path):
    write_image(tmp_path / "b" / "1.png", color=(0, 0, 255))
    write_image(tmp_path / "a" / "2.png")
    write_image(tmp_path / "a" / "1.jpg", color=(0, 255, 0))
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    dataset = load_image_folder(tmp_path)
    assert dataset.class_names == ["a", "b"] and dataset.labels.tolist() == [0, 0, 1]
    assert dataset.images.shape == (3, 3, 4, 6)  # (N, C, H, W) of 6 wide x 4 high files
    assert dataset.images[0, :, 0, 0].tolist()[1] > 200 and dataset.images[2, :, 0, 0].tolist() == [0, 0, 255]


def test_image_folder_grayscale_and_resize(tmp_path):
    write_image(tmp_path / "a" / "1.png", mode="L", color=(200,))
    write_image(tmp_path / "b" / "1.png", size=(10, 10), mode="L", color=(50,))
    dataset = load_image_folder(tmp_path, image_size=(3, 5))
    assert dataset.images.shape == (2, 1, 3, 5) and dataset.images[:, 0, 1, 2].tolist() == [200, 50]
    rgb = load_image_folder(tmp_path, image_size=4, channels=3)
    assert rgb.images.shape == (2, 3, 4, 4) and rgb.images[1, :, 0, 0].tolist() == [50, 50, 50]
    gray = load_image_folder(tmp_path, image_size=4, channels=1)
    assert gray.images.shape == (2, 1, 4, 4)


def test_image_folder_mixed_sizes_name_two_files(tmp_path):
    write_image(tmp_path / "a" / "1.png")
    write_image(tmp_path / "b" / "1.png", size=(7, 7))
    with pytest.raises(ValueError, match=r"a/1.png is 6x4 .* but .*b/1.png is 7x7; pass image_size"):
        load_image_folder(tmp_path)


def test_image_folder_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    write_image(tmp_path / "a" / "1.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder .*empty holds no images"):
        load_image_folder(tmp_path)
    (tmp_path / "empty" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="channels must be"):
        load_image_folder(tmp_path, channels=2)
    with pytest.raises(ValueError, match="image_size must be"):
        load_image_folder(tmp_path, image_size=(4, 0))
