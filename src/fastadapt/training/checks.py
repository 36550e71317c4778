"""Every setting of a run checked before it starts: names first (so a typo is reported as one), then
combinations, then sizes against the data."""
from __future__ import annotations

from fastadapt.algorithms.registry import method_names, method_of, methods
from fastadapt.config.families import FAMILIES, check_name, family_names, family_of
from fastadapt.config.schema import WITHIN_ALPHABET, Config
from fastadapt.models.conv4 import NORMS
from fastadapt.training.builders import build_tasks, class_dataset, episodes, eval_settings, within_alphabet_tasks
from fastadapt.training.device import resolve_device
from fastadapt.training.networks import MODELS, POLICIES, build_policy, resolve_model, resolve_norm, resolve_policy
from fastadapt.training.precision import PRECISIONS

META_OPTIMIZERS = ("adam", "sgd")


def check_config(cfg: Config) -> None:
    """Check every setting of a run before it starts: names first (so a typo is reported as one), then
    combinations, then sizes against the data, for training, validation and every evaluation setting."""
    check_name("--algorithm", cfg.method.name, methods())
    check_name("--tasks", cfg.task.family, FAMILIES)
    check_name("--model", cfg.model.name, MODELS)
    check_name("--norm", cfg.model.norm, ("auto", *NORMS))
    check_name("--meta-optimizer", cfg.training.meta_optimizer, META_OPTIMIZERS)
    check_name("--precision", cfg.training.precision, PRECISIONS)
    family_of(cfg).check(cfg)
    resolve_device(cfg.training.device)
    if family_of(cfg).kind == "mdp" or method_of(cfg).rl:
        check_rl_config(cfg)
        return
    for kind in OWN_NETWORK_KINDS:
        if family_of(cfg).kind == kind or getattr(method_of(cfg), kind):
            check_own_network_config(cfg, kind)
            return
    norm, method, spec = resolve_norm(cfg), cfg.method.name, method_of(cfg)
    if resolve_model(cfg) == "conv4" and spec.gradient_based and norm == "batch":
        raise ValueError(f"--norm batch does not work with {method}: its inner loop adapts every task in one "
                         "vmapped call, which cannot update running statistics; use --norm transductive "
                         "(the MAML paper's) or layer")
    if resolve_model(cfg) == "conv4" and not spec.gradient_based and norm == "transductive":
        raise ValueError(f"--norm transductive does not work with {method}: it embeds many episodes in one call, "
                         "so batch statistics would mix episodes and a test episode would depend on others; "
                         "use --norm batch or layer")
    if resolve_model(cfg) == "pixels" and not spec.pixel_input:
        raise ValueError(f"model 'pixels' (no network: raw pixels) serves {method_names(pixel_input=True)} only, "
                         f"not {method}")
    if family_of(cfg).kind == "images":
        if spec.minibatch_trained and cfg.task.augment:
            raise ValueError(f"--augment distorts the images of training episodes, and {method} trains on "
                             "mini-batches of classes instead")
        if spec.minibatch_trained:  # trained on mini-batches: a training episode is never drawn
            class_dataset(cfg, "train")
        else:
            episodes(cfg, "train", cfg.task.n_way, cfg.task.k_shot)
        for split in ("val", "test"):
            for way, shot in eval_settings(cfg) if split == "test" else eval_settings(cfg)[:1]:
                episodes(cfg, split, way, shot)
            if cfg.evaluation.episodes == WITHIN_ALPHABET:
                within_alphabet_tasks(cfg, split)


#: The kinds of family whose methods build their own network: what such a method does (for the message refusing
#: it on another family) and what one of its meta-batches is.
OWN_NETWORK_KINDS = {"segmentation": ("segments a reference's object on a canvas", "one batch of canvases"),
                     "detection": ("finds the instances of K-shot classes on canvases", "one batch of episodes")}


def check_own_network_config(cfg: Config, kind: str) -> None:
    """Segmentation and detection runs: a method of the family's kind on it, with its own network."""
    family, method = cfg.task.family, cfg.method.name
    does, meta_batch = OWN_NETWORK_KINDS[kind]
    if family_of(cfg).kind != kind:
        raise ValueError(f"{method} {does}: use --tasks {' / '.join(family_names(kind))}, not {family!r}")
    if not getattr(method_of(cfg), kind):
        raise ValueError(f"--tasks {family} is a {kind} family: use --algorithm "
                         f"{' / '.join(method_names(**{kind: True}))}, not {method!r}")
    if resolve_model(cfg) != "unet":
        raise ValueError(f"--model {cfg.model.name}: a {kind} method builds its own network (--model auto)")
    if cfg.training.tasks_per_pass is not None:
        raise ValueError(f"--tasks-per-pass is for episodic tasks; a {kind} meta-batch is {meta_batch}")
    if kind == "detection":  # episodes the splits cannot serve (too many shots or ways) are refused here
        for split in ("train", "val", "test"):
            build_tasks(cfg, split)


def check_rl_config(cfg: Config) -> None:
    """Reinforcement-learning runs: an RL method on an MDP family, with a policy that can act there."""
    family, method, spec = cfg.task.family, cfg.method.name, method_of(cfg)
    if family_of(cfg).kind != "mdp":
        raise ValueError(f"{method} learns in MDPs: use --tasks {' / '.join(family_names('mdp'))}, not {family!r}")
    if cfg.training.precision != "fp32" or cfg.training.tasks_per_pass is not None:
        raise ValueError(f"{method}: --precision bf16 and --tasks-per-pass are for image and regression networks; "
                         "an RL policy is a small network stepped with its simulator, and runs in fp32 in one pass")
    if not spec.rl:
        raise ValueError(f"--tasks {family} is a reinforcement-learning family: use --algorithm "
                         f"{' / '.join(method_names(rl=True))}, not {method!r}")
    if spec.bandit:
        if not family_of(cfg).bandit:
            raise ValueError(f"{method} is a bandit algorithm: use --tasks "
                             f"{' / '.join(n for n, f in FAMILIES.items() if f.bandit)}, not {family!r}")
        if cfg.training.iterations > 0:
            raise ValueError(f"{method} is a fixed bandit algorithm with nothing to train: run it with --iterations 0 "
                             "to evaluate it")
        return
    if resolve_model(cfg) != "mlp":
        raise ValueError(f"--model {cfg.model.name} is for images; an RL policy's network is set by --policy "
                         "and --hidden-sizes / --recurrent-size")
    check_name("--policy", cfg.model.policy, POLICIES)
    tasks = build_tasks(cfg, "train")
    policy = resolve_policy(cfg, tasks)
    if (spec.policy == "gru") != (policy == "gru"):
        raise ValueError(f"{method} needs --policy gru (its hidden state is what adapts)" if spec.policy == "gru" else
                         f"{method} adapts a feed-forward policy by gradient steps: use --policy gaussian or "
                         "categorical, not gru")
    build_policy(cfg, tasks)  # a policy that cannot act in these tasks is refused here, before training
