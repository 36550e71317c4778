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


def test_a_kept_test_result_is_reused_only_with_the_same_settings_and_code(glyph_folder, tmp_path, monkeypatch):
    """benchmarks/nas.py's RUN_DIR/benchmark.json: reused as it is (no second look at the test set) while the run's
    settings and the code are the same; measured again, the look counted, when either has changed."""
    import json

    from fastadapt.benchmarks import nas, preset_runs
    from fastadapt.config.schema import Config

    cfg = Config(algorithm="fomaml", tasks="folder", data_root=str(glyph_folder), n_way=3, k_shot=1, num_query=1,
                 eval_query=2, conv_channels=4, iterations=2, meta_batch_size=2, log_every=1, val_every=1,
                 checkpoint_every=1, val_tasks=2, test_tasks=4, eval_steps=[], threads=1, output_dir=str(tmp_path))
    first = nas.stage(cfg, "conv4", test=True)
    assert nas.stage(cfg, "conv4", test=True) == first  # reused
    looks = json.loads((tmp_path / "test_looks.json").read_text())
    assert looks == {"1": 1}
    monkeypatch.setattr(preset_runs, "code_version", lambda: "other")
    again = nas.stage(cfg, "conv4", test=True)
    assert again["key"]["code"] == "other" and again["test"] == first["test"]  # the same run and test tasks
    assert json.loads((tmp_path / "test_looks.json").read_text()) == {"1": 2}
    moved = nas.stage(cfg.replace(test_tasks=5), "conv4", test=True)  # another setting: measured again
    assert moved["test"]["num_tasks"] == 5
