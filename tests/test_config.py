"""Config: sections by concern, flat names for the command line, types checked on load."""
import pytest
import yaml

from fastadapt.config.presets import load_preset, preset_names
from fastadapt.config.schema import FLAT, SECTIONS, Config, ConfigError


def test_flat_names_and_sections_build_the_same_config():
    flat = Config(algorithm="protonet", tasks="omniglot", k_shot=5, model="conv4", meta_lr=0.01)
    nested = Config(method={"name": "protonet"}, task={"family": "omniglot", "k_shot": 5}, model={"name": "conv4"},
                    training={"meta_lr": 0.01})
    assert flat == nested
    assert (flat.method.name, flat.task.family, flat.task.k_shot, flat.model.name, flat.training.meta_lr) == \
        ("protonet", "omniglot", 5, "conv4", 0.01)
    assert flat.replace(k_shot=1).task.k_shot == 1 and flat.task.k_shot == 5  # a copy; the original is untouched


def test_every_flat_name_is_unique_and_round_trips(tmp_path):
    assert len(FLAT) == sum(1 for _ in FLAT.values())
    cfg = Config(k_shot=3, eval_ways=[5, 20], hidden_sizes=[8], first_order=True)
    path = tmp_path / "config.yaml"
    cfg.save(path)
    assert set(yaml.safe_load(path.read_text())) == set(SECTIONS)
    assert Config.load(path) == cfg
    assert Config.from_dict(cfg.flat()) == cfg  # the flat form that config.yaml files before sections hold


def test_config_is_read_only():
    cfg = Config()
    with pytest.raises(AttributeError, match="replace"):
        cfg.task = None
    with pytest.raises(AttributeError):
        cfg.task.k_shot = 3


@pytest.mark.parametrize("text, setting", [
    ("training:\n  meta_lr: 1e-3\n", "training.meta_lr"),       # YAML 1.1 reads this as a string
    ("task:\n  k_shot: 1.5\n", "task.k_shot"),
    ("task:\n  k_shot: true\n", "task.k_shot"),                 # a bool is no integer
    ("method:\n  first_order: 'yes'\n", "method.first_order"),
    ("evaluation:\n  eval_shots: 5\n", "evaluation.eval_shots"),
    ("model:\n  hidden_sizes: [40, forty]\n", "model.hidden_sizes"),
    ("meta_lr: 1e-3\n", "training.meta_lr"),                    # flat form too
])
def test_a_value_of_the_wrong_type_names_its_setting(tmp_path, text, setting):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}: config: {setting} \(--[a-z-]+\) must be") as error:
        load_preset(str(path))
    if "1e-3" in text:
        assert "write 1.0e-3" in str(error.value)
    assert "\n" not in str(error.value)


def test_integers_are_accepted_where_numbers_are_expected():
    assert Config(meta_lr=1).training.meta_lr == 1.0
    assert isinstance(Config(meta_lr=1).training.meta_lr, float)


def test_unknown_settings_suggest_the_closest_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'inner_lrr' \\(did you mean 'inner_lr'\\?\\)"):
        Config(inner_lrr=0.1)
    with pytest.raises(ConfigError, match="unknown option task.kshot \\(did you mean 'k_shot'\\?\\)"):
        Config(task={"kshot": 1})
    path = tmp_path / "broken.yaml"
    path.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        Config.load(path)


def test_every_shipped_preset_is_in_the_sectioned_form():
    for name in preset_names():
        from importlib import resources
        text = resources.files("fastadapt.config.presets").joinpath(f"{name}.yaml").read_text()
        assert set(yaml.safe_load(text)) <= set(SECTIONS), name
        assert isinstance(load_preset(name), Config)


@pytest.mark.parametrize("algorithm, tasks, default", [("maml-rl", "nav2d", 1.0), ("metasgd-rl", "nav2d", 1.0),
                                                       ("pretrained-rl", "nav2d", 1.0), ("rl2", "bandit", 0.3)])
def test_a_setting_left_unset_takes_the_methods_default_when_the_config_is_resolved(algorithm, tasks, default):
    """gae_lambda: the method's (``MethodSpec.defaults``), filled in by ``Config.resolved()``, so that its builder
    reads a number; a value that is set is kept, and a method without such a default leaves it unset."""
    cfg = Config(algorithm=algorithm, tasks=tasks)
    assert cfg.method.gae_lambda is None and cfg.resolved().method.gae_lambda == default
    assert cfg.replace(gae_lambda=0.5).resolved().method.gae_lambda == 0.5
    assert cfg.replace(algorithm="maml", tasks="sinusoid").resolved().method.gae_lambda is None
