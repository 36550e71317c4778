"""Baseline++ (Chen, Liu, Kira, Wang and Huang, 2019): Baseline with a cosine-similarity head.

The head scores class k by a scaled cosine between the features and the class's weight vector,

    s_k(x) = scale * cos(f(x), w_k),

in training (over all training classes) and on a new task, where a new such head is fitted on the
support set as in ``Baseline``. Normalising both sides makes the scores depend on directions only,
which Chen et al. found to reduce intra-class variation and to matter most for shallow encoders such
as the Conv-4. The scale is fixed (theirs: 2 with up to 200 classes, 10 with more; here one value for
training and test, 10 by default) and the head has no bias, as theirs.

A new task's head starts from the mean unit-length feature vector of each class (weight imprinting),
a start that depends on the support set only; a zero start, Baseline's, has no direction to normalise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.baseline import Baseline, FinetuneOptions, finetune_options
from fastadapt.algorithms.matching import CosineScaleOptions
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.options import check_option


class BaselinePlusPlus(Baseline):
    has_bias = False

    def __init__(self, encoder: nn.Module, feature_size: int, num_classes: int, scale: float = 10.0,
                 **finetune_options) -> None:
        super().__init__(encoder, feature_size, num_classes, **finetune_options)
        check_option(CosineScaleOptions, "cosine_scale", scale)
        self.scale = scale

    def logits(self, weight: torch.Tensor, bias: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).transpose(1, 2)

    def initial_head(self, features: torch.Tensor, one_hot: torch.Tensor) -> tuple[torch.Tensor, None]:
        sums = one_hot.transpose(1, 2) @ F.normalize(features, dim=-1)
        return sums / one_hot.sum(1).unsqueeze(-1), None


def _build(context) -> BaselinePlusPlus:
    method = context.cfg.method
    scale = {} if method.cosine_scale is None else {"scale": method.cosine_scale}
    return BaselinePlusPlus(*context.encoder(), context.tasks.output_size, **finetune_options(method), **scale)


SPECS = (MethodSpec("baseline++", BaselinePlusPlus, _build, (FinetuneOptions, CosineScaleOptions), any_way=True,
                    minibatch_trained=True, images_only=True),)
