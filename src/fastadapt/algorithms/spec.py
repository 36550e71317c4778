"""What a method is, declared next to its learner: a ``MethodSpec``.

Each method file ends with the specifications of the methods it implements (``SPECS``), and
``algorithms.registry`` collects them, one line per file. Everything else (the command line, the trainer,
the run directories, the classifier, the server) asks the specification what a method can do instead of
keeping its own list of names.

``build`` receives the run's building context (``runs.directory.BuildContext``): ``cfg`` (the run's
settings, ``cfg.method`` its method's options), ``tasks`` (the training task distribution), and
``model(head=True)``, ``encoder()`` (an embedding network and its width) and ``trained_learner(run_dir)``,
so that a method file needs nothing from the training package.

``options`` are the method's options dataclasses (``fastadapt.options``: each setting with its default, help
and rule), declared next to the learner that reads them; a dataclass that several methods read (MAML's inner
loop) is declared once, by the file of the method that owns it, and listed by each. The run configuration's
``method`` section is made of them (``config.schema``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class MethodSpec:
    """A method: its name (``--algorithm``), learner class, builder and traits."""

    name: str
    learner: type[nn.Module]
    build: Callable[[Any], nn.Module]
    #: the options dataclasses whose settings (``cfg.method`` fields) it reads (``fastadapt.options``)
    options: tuple[type, ...] = field(default=())
    #: its values of settings of those options that a config may leave unset (None, whose value then depends on
    #: the method): {name: value}, filled in by ``Config.resolved()``, so that ``build`` reads a value
    defaults: dict[str, Any] = field(default_factory=dict, hash=False)
    #: adapts a network by gradient steps on the support set (MAML's family): per-task batch statistics by default
    gradient_based: bool = False
    #: compares queries with the support set, so one trained model serves any number of ways (and shots)
    any_way: bool = False
    #: built for the training shot count too (SNAIL's sequence length)
    fixed_shot: bool = False
    #: may read raw pixels instead of an embedding (model "pixels")
    pixel_input: bool = False
    #: trained as one classifier over all training classes, on mini-batches (tasks.ClassMiniBatches)
    minibatch_trained: bool = False
    #: classifies images only (it embeds them with a network that has no head)
    images_only: bool = False
    #: acts in MDPs instead of reading support sets (an ``RLMetaLearner``)
    rl: bool = False
    #: RL: its meta-batch may split over processes (--nproc); TRPO averages its gradient, Fisher-vector
    #: products and line-search values over them, PPO (RL^2) normalises over the whole batch and does not
    splits_over_processes: bool = True
    #: RL: the policy it adapts: "feedforward" (by policy-gradient steps) or "gru" (its hidden state adapts);
    #: None for a bandit algorithm, which has none
    policy: str | None = None
    #: a hand-designed bandit algorithm: nothing to train, bandit tasks only
    bandit: bool = False
    #: searches an architecture (a DARTS supernet's alphas) along with the weights
    searches_architecture: bool = False
    #: finds a reference's object on a canvas and outputs its mask: the segmentation families only
    segmentation: bool = False
    #: finds every instance of a few classes, each shown by K references, on canvases (boxes with classes and
    #: scores): the detection families only
    detection: bool = False

    def __post_init__(self) -> None:
        if self.policy not in (None, "feedforward", "gru") or (self.policy is not None and not self.rl):
            raise ValueError(f"method {self.name}: policy is 'feedforward' or 'gru' for an RL method, else None")
        if not all(dataclasses.is_dataclass(group) and isinstance(group, type) for group in self.options):
            raise TypeError(f"method {self.name}: options are options dataclasses (fastadapt.options), "
                            f"got {self.options}")
        unknown = sorted(set(self.defaults) - set(self.option_names))
        if unknown:
            raise ValueError(f"method {self.name}: defaults {unknown} are not settings of its options")

    @property
    def option_names(self) -> tuple[str, ...]:
        """The names of the method settings it reads."""
        return tuple(f.name for group in self.options for f in dataclasses.fields(group))
