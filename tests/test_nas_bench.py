"""The NAS benchmark's pieces: the equal-size Conv-4 and the table."""
from fastadapt.benchmarks.nas import matched_conv4_width, table
from fastadapt.models import Conv4
from fastadapt.models.darts import count_parameters


def test_matched_conv4_is_the_closest_in_parameters():
    size = lambda h: count_parameters(Conv4(1, h, 5, image_size=28))  # noqa: E731
    width = matched_conv4_width(20_000, 5, (1, 28, 28))
    assert abs(size(width) - 20_000) <= min(abs(size(width - 1) - 20_000), abs(size(width + 1) - 20_000))
    assert size(width) != size(width + 1)


def test_table_lists_parameters_flops_and_accuracy_per_way():
    def run(name, way, mean, parameters):
        return {"name": name, "way": way, "parameters": parameters, "flops": 2.5e6,
                "test": {"mean": mean, "ci95": 0.004, "num_tasks": 600}}

    lines = table([run("searched", 5, 0.9512, 27_000), run("searched", 20, 0.8011, 27_500),
                   run("Conv-4-31", 5, 0.9433, 26_900), {"name": "search", "way": 5}]).splitlines()
    assert lines[0] == "| network | parameters | MFLOPs per image | 5-way 1-shot | 20-way 1-shot |"
    assert lines[2] == "| searched | 27,000 / 27,500 | 2.50 | 95.12 ± 0.40 | 80.11 ± 0.40 |"
    assert lines[3] == "| Conv-4-31 | 26,900 | 2.50 | 94.33 ± 0.40 | - |"
    assert len(lines) == 4
