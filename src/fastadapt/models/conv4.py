"""The four-block convolutional network of the few-shot literature (Vinyals et al.
2016; Finn et al. 2017; Snell et al. 2017), in its two published forms.

``pooling="max"``: each block is a 3x3 convolution (padding 1), a normalisation
layer, ReLU and 2x2 max-pooling; a 28x28 image leaves the fourth block as
64 x 1 x 1 features, which are flattened. The network of Matching and
Prototypical Networks, and of MAML on miniImageNet.

``pooling="stride"``: the MAML paper's Omniglot network (Finn et al. 2017,
section 5.2: "strided convolutions instead of max-pooling"): each block is a 3x3
convolution with stride 2 (padding 1), the normalisation layer and ReLU, so a
28x28 image shrinks 28 -> 14 -> 7 -> 4 -> 2 and the features are the mean of
the last block's 64 x 2 x 2 output over its positions (as in the paper's code,
``tf.reduce_mean(hidden4, [1, 2])``). Every convolution after the first runs
on a quarter of the positions it has under max-pooling: about 3.7x fewer
FLOPs on Omniglot.

With ``output_size`` a linear head turns the features into N-way logits
(MAML-style classifiers); without it the network is an embedding function
(metric-based learners).

Normalisation decides where statistics may come from:

* ``"transductive"``: batch normalisation with the statistics of the current
  batch, always, and no running averages (``BatchStatisticsNorm2d``). Under
  MAML each task is one vmapped call, so each task is normalised with its own
  statistics: support images with the support set's during adaptation, query
  images with the query set's at prediction. That is the MAML paper's choice,
  and it is transductive: a query prediction depends on the other queries of
  its batch. Metric learners embed many tasks in one call, so there the
  statistics span every task of the call. Nothing is carried from one call to
  the next, and a convolution feeding this norm has no bias (it would cancel).
* ``"layer"``: per-example normalisation over (channels, height, width)
  (``GroupNorm`` with one group), with a learned per-channel scale and shift.
  No statistic is shared between examples, so a prediction depends on its own
  image only: the non-transductive option. Normalising queries with their
  task's *support* statistics would also avoid the leak, but the model would
  then need to see the support set whenever it sees a query, which ``MAML.predict``
  (one call on the query set alone) does not offer.
* ``"batch"``: standard ``nn.BatchNorm2d``: batch statistics while training,
  running averages (frozen once trained) in eval mode, so a test prediction
  depends on its own image only. The usual choice of the metric- and
  model-based learners, which embed a whole meta-batch in one call; not for
  MAML, whose vmapped inner loop cannot update running statistics.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.threads import network_built

NORMS = ("transductive", "layer", "batch")
POOLINGS = ("max", "stride")


class BatchStatisticsNorm2d(nn.Module):
    """Batch normalisation that always uses the current batch's per-channel mean and (biased) variance,
    then a learned per-channel scale and shift; it keeps no running statistics.

    Why not ``nn.BatchNorm2d(track_running_stats=False)``, which computes the same thing: under
    ``torch.func.vmap`` its fused kernel gives wrong second-order gradients (MAML's meta-gradient was off
    by about 1% against a per-task loop; cf. functorch issue #534 on its backward's batching rule).
    Under torch.func transforms the batch is instead viewed as one example with C channels of
    (batch, height, width) values, which group normalisation with one group per channel normalises
    exactly as batch normalisation would; its
    gradients are exact to second order under vmap and it costs little more than the fused kernel
    (a version from elementary tensor operations was about three times slower).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch._C._functorch.is_functorch_wrapped_tensor(x):
            # Outside torch.func transforms the fused kernel is exact to second order, and fast on channels-last
            # input: MAML's per-task query pass and any plain use take this branch.
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        as_one_example = x.transpose(0, 1).unsqueeze(0)  # (1, C, batch, H, W)
        normalised = F.group_norm(as_one_example, x.shape[1], self.weight, self.bias, self.eps)
        return normalised.squeeze(0).transpose(0, 1).contiguous()


def to_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor (images, convolution weights) with channels-last strides; other tensors as they are.

    ``tensor.contiguous(memory_format=torch.channels_last)`` leaves a one-channel tensor (grey images, a first
    convolution's weight) with its NCHW strides, since either order is contiguous then; the convolution reads
    those as NCHW and the whole first block, the largest, runs in the slower layout. The strides are set here.
    """
    if tensor.dim() != 4:
        return tensor
    batch, channels, height, width = tensor.shape
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor.as_strided(tensor.shape, (height * width * channels, 1, width * channels, channels))


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "transductive":
        return BatchStatisticsNorm2d(channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


class Conv4(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        output_size: int | None = None,
        norm: str = "transductive",
        image_size: int | tuple[int, int] = 28,
        channels_last: bool = False,
        pooling: str = "max",
    ) -> None:
        """``image_size`` (height, width) only matters with ``output_size`` and max-pooling: it fixes the
        head's input size. ``pooling``: "max" (2x2 max-pooling after each block) or "stride" (stride-2
        convolutions, features averaged over the last block's positions), see the module docstring.

        ``channels_last`` stores weights and activations as NHWC, which oneDNN convolves about 1.5x faster
        on CPU (Omniglot batches, forward + backward); it is left off under MAML's vmapped inner loop.
        """
        super().__init__()
        network_built("conv4")  # torch's thread count for this network (fastadapt.threads)
        if in_channels < 1 or hidden < 1 or (output_size is not None and output_size < 1):
            raise ValueError(
                f"Conv4 sizes must be positive, got in_channels={in_channels}, hidden={hidden}, "
                f"output_size={output_size}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        self.in_channels, self.hidden, self.pooling = in_channels, hidden, pooling
        conv_bias = norm == "layer"  # a bias right before batch normalisation would cancel
        stride = 2 if pooling == "stride" else 1
        blocks = []
        for i in range(4):
            layers = [nn.Conv2d(in_channels if i == 0 else hidden, hidden, kernel_size=3, stride=stride, padding=1,
                                bias=conv_bias),
                      _norm_layer(norm, hidden),
                      nn.ReLU()]
            if pooling == "max":
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.channels_last = channels_last
        if channels_last:
            self.blocks.to(memory_format=torch.channels_last)
        self.head = None
        if output_size is not None:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            self.head = nn.Linear(self.feature_size(size), output_size)

    def feature_size(self, image_shape: Sequence[int]) -> int:
        """How many features the four blocks give for an image shaped (height, width) or (channels, height, width)."""
        if len(image_shape) == 3:
            if image_shape[0] != self.in_channels:
                raise ValueError(
                    f"Conv4 has {self.in_channels} input channels, image shape {tuple(image_shape)} has "
                    f"{image_shape[0]}"
                )
            image_shape = image_shape[1:]
        if len(image_shape) != 2:
            raise ValueError(
                f"image_shape must be (height, width) or (channels, height, width), got {tuple(image_shape)}"
            )
        if self.pooling == "stride":  # any image leaves at least one position, and positions are averaged
            if min(image_shape) < 1:
                raise ValueError(f"Conv4 needs images of at least 1x1 pixels, got {tuple(image_shape)}")
            return self.hidden
        height, width = (side // 16 for side in image_shape)  # four 2x2 poolings, each rounding down
        if height < 1 or width < 1:
            raise ValueError(f"Conv4 needs images of at least 16x16 pixels, got {tuple(image_shape)}")
        return self.hidden * height * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, height, width) -> (batch, features), or (batch, output_size) logits with a head."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv4 expects images (batch, {self.in_channels}, height, width), got shape {tuple(x.shape)}"
            )
        if self.channels_last:
            x = to_channels_last(x)
        features = self.blocks(x)
        features = features.mean((2, 3)) if self.pooling == "stride" else features.flatten(1)
        if self.head is None:
            return features
        if features.shape[1] != self.head.in_features:
            raise ValueError(
                f"Conv4's head was built for {self.head.in_features} features, but images of shape "
                f"{tuple(x.shape[1:])} give {features.shape[1]}: pass the image_size the images have"
            )
        return self.head(features)
