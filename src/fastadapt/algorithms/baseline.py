"""Baseline (Chen, Liu, Kira, Wang and Huang, 2019, "A Closer Look at Few-shot Classification").

No meta-learning: an encoder f and a linear head W are trained as an ordinary classifier over all
training classes, on mini-batches (``tasks.ClassMiniBatches``), by cross-entropy. For a new task the
head is thrown away and a new one, W' x + b' with one row per class of the task, is fitted on the
support set's features with the encoder frozen; the queries are classified by it. With
``finetune="all"`` the encoder is fine-tuned together with the new head, a copy per task.

The new head starts from zero (Chen et al. start it at random): a task's result then depends on its
own support set only, not on the random state or on the other tasks evaluated beside it. It is fitted
by ``finetune_steps`` full-batch Adam steps on the support set's mean cross-entropy (Chen et al.: SGD
with momentum on batches of 4 for 100 epochs). Every task has its own weights and Adam works weight
by weight, so fitting a batch of tasks at once gives each the result it would get alone. Batch
normalisation keeps its running statistics (frozen) while fine-tuning and predicting, so a prediction
depends on its own image only.

``BaselinePlusPlus`` (baseline_pp.py) changes the head to cosine similarities; ``EmbeddingLogisticRegression``
(logreg.py) keeps this training and replaces the fitted head by a logistic regression.
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap

from fastadapt.algorithms.base import MetaLearner, embed_images
from fastadapt.algorithms.protonet import support_one_hot
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.options import POSITIVE_INT, POSITIVE_LR, Options, one_of, read_options, setting
from fastadapt.tasks.base import TaskBatch

FINETUNE = ("head", "all")


class FittedHead(NamedTuple):
    """A head fitted per task: weight (tasks, N, D), bias (tasks, N) or None, and with ``finetune="all"``
    the encoder's fine-tuned parameters, each with a leading task dimension (else None)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    encoder: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class FinetuneOptions(Options):
    """How Baseline and Baseline++ fit a new task (Chen et al. 2019)."""

    finetune: str = setting("head", "Baseline / Baseline++ on a new task: fit a new head on the frozen encoder "
                                    "(head) or fine-tune the encoder with it (all)", rule=one_of(*FINETUNE))
    finetune_steps: int = setting(100, "Baseline / Baseline++: Adam steps that fit a new task's head",
                                  rule=POSITIVE_INT)
    finetune_lr: float = setting(0.01, "Baseline / Baseline++: learning rate of those steps", rule=POSITIVE_LR)


class Baseline(MetaLearner):
    #: the number of fine-tuning steps is a setting of the method, not a sweep of evaluation
    uses_adaptation_steps = False
    has_bias = True

    def __init__(self, encoder: nn.Module, feature_size: int, num_classes: int, finetune: str = "head",
                 finetune_steps: int = 100, finetune_lr: float = 0.01) -> None:
        super().__init__("cross_entropy")
        FinetuneOptions(finetune, finetune_steps, finetune_lr)
        if finetune == "all" and getattr(encoder, "channels_last", False):
            raise ValueError("finetune 'all' fine-tunes a copy of the encoder per task under torch.func.vmap, which "
                             "cannot run a channels-last Conv4: build it with channels_last=False")
        self.encoder = encoder
        self.weight = nn.Parameter(torch.empty(num_classes, feature_size))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if self.has_bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's initialisation
        self.finetune, self.finetune_steps, self.finetune_lr = finetune, finetune_steps, finetune_lr

    # --- the head: what Baseline++ changes ---
    def logits(self, weight: torch.Tensor, bias: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
        """Scores (tasks, examples, classes) of features (tasks, examples, D) under heads (tasks, classes, D)."""
        scores = features @ weight.transpose(1, 2)
        return scores if bias is None else scores + bias.unsqueeze(1)

    def initial_head(self, features: torch.Tensor, one_hot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A new head for each task's N classes, before fitting: zero."""
        tasks, _, width = features.shape
        weight = features.new_zeros(tasks, one_hot.shape[-1], width)
        return weight, (features.new_zeros(tasks, one_hot.shape[-1]) if self.has_bias else None)

    # --- training: one classifier over all training classes ---
    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        name = type(self).__name__
        if tasks.support_x.shape[1]:
            raise ValueError(f"{name} trains on mini-batches of single labelled images (tasks.ClassMiniBatches), "
                             f"got episodes with {tasks.support_x.shape[1]} support examples")
        features = self.encoder(tasks.query_x.flatten(0, 1)).flatten(1)
        outputs = self.logits(self.weight[None], None if self.bias is None else self.bias[None], features[None])
        outputs = outputs[0].unflatten(0, tasks.query_y.shape)
        loss = self.task_losses(outputs, tasks.query_y).mean()
        return loss, self.metrics(outputs, tasks.query_y, loss)

    # --- a new task: fit a new head on the support set ---
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> FittedHead:
        one_hot = support_one_hot(support_x, support_y, type(self).__name__)
        steps = self.finetune_steps if steps is None else steps
        with torch.enable_grad():  # evaluation runs under no_grad; the head is fitted by gradient steps all the same
            if self.finetune == "head":
                with torch.no_grad():
                    features = embed_images(self.encoder, support_x, type(self).__name__)
                return self._fit(None, features, support_x, one_hot, steps)
            encoder = {name: p.detach().expand(len(support_x), *p.shape).clone().requires_grad_()
                       for name, p in self.encoder.named_parameters()}
            with torch.no_grad():
                features = self._embed(encoder, support_x)
            return self._fit(encoder, features, support_x, one_hot, steps)

    def _fit(self, encoder: dict[str, torch.Tensor] | None, features: torch.Tensor, support_x: torch.Tensor,
             one_hot: torch.Tensor, steps: int) -> FittedHead:
        weight, bias = self.initial_head(features, one_hot)
        head = [t.requires_grad_() for t in (weight, bias) if t is not None]
        optimizer = torch.optim.Adam(head + list((encoder or {}).values()), lr=self.finetune_lr)
        targets = one_hot.argmax(-1)
        for _ in range(steps):
            if encoder is not None:
                features = self._embed(encoder, support_x)
            outputs = self.logits(weight, bias, features)
            # the sum over tasks of each task's mean loss: every task's weights get their own task's gradient
            loss = self.task_losses(outputs, targets).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        detached = None if encoder is None else {name: p.detach() for name, p in encoder.items()}
        return FittedHead(weight.detach(), None if bias is None else bias.detach(), detached)

    def _embed(self, encoder: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Features (tasks, examples, D) of x (tasks, examples, ...) under each task's own encoder weights."""
        buffers = dict(self.encoder.named_buffers())

        def one_task(params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
            return functional_call(self.encoder, (params, buffers), (images,)).flatten(1)

        return vmap(one_task)(encoder, x)

    def predict(self, adapted: FittedHead, query_x: torch.Tensor) -> torch.Tensor:
        if query_x.dim() < 3 or query_x.shape[0] != adapted.weight.shape[0]:
            raise ValueError(f"{type(self).__name__}: query_x {tuple(query_x.shape)} must be (tasks, queries, "
                             f"*features) with the {adapted.weight.shape[0]} tasks of the support set")
        if adapted.encoder is None:
            features = embed_images(self.encoder, query_x, type(self).__name__)
        else:
            features = self._embed(adapted.encoder, query_x)
        return self.logits(adapted.weight, adapted.bias, features)


#: The method settings of Baseline and Baseline++ (how a new task's head is fitted).


def finetune_options(method) -> dict:
    return read_options((FinetuneOptions,), method)


def _build(context) -> Baseline:
    return Baseline(*context.encoder(), context.tasks.output_size, **finetune_options(context.cfg.method))


SPECS = (MethodSpec("baseline", Baseline, _build, (FinetuneOptions,), any_way=True, minibatch_trained=True,
                    images_only=True),)
