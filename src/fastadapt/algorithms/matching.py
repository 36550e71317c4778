"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, 2016).

A query x^ is labelled by attending over the support set S = {(x_i, y_i)}:

    P(y^ | x^, S) = sum_i a(x^, x_i) y_i,      a(x^, x_i) = softmax_i c(f(x^), g(x_i)),

with y_i one-hot and c the cosine similarity. The outputs are log P(y^ | x^, S):
since P already sums to 1 over classes, softmax(log P) = P, so the shared
cross-entropy on these "logits" is exactly the paper's negative log-likelihood.

Without full context embeddings, f = g = the encoder. With them:

* g embeds each support example in the context of the whole (ordered) support
  set with a bidirectional LSTM, g(x_i) = h->_i + h<-_i + g'(x_i);
* f reads the embedded support set for K processing steps with an attention LSTM
  that starts from zero state and, at step k,

      r_{k-1} = sum_i softmax_i(h_{k-1} . g(x_i)) g(x_i)
      h^_k, c_k = LSTM(f'(x^), [h_{k-1}, r_{k-1}], c_{k-1})
      h_k = h^_k + f'(x^)

  and f(x^) = h_K. An LSTM cell with input [f'(x^), r_{k-1}] and hidden state
  h_{k-1} has exactly these gates (its weights on [h_{k-1}, r_{k-1}] are only
  split between its input and recurrent matrices), so ``nn.LSTMCell`` is used.

Each query has its own attention LSTM, so queries never influence each other.

With ``cosine_scale`` s the attention is softmax_i(s * c(f(x^), g(x_i))), s learned from
that starting value. The paper's plain cosine (s = 1) keeps attention weights within a
factor e^2 of each other, so the loss has a high floor (0.43 at 5-way 1-shot) and weak
gradients; a learned scale, as in cosine-classifier few-shot methods, removes both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastadapt.algorithms.protonet import EmbeddedSupport, MetricLearner, check_pair, cosine_similarities
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.options import POSITIVE, Options, check_option, setting


@dataclass(frozen=True)
class MatchingOptions(Options):
    """Matching Networks' own option."""

    full_context_embeddings: bool = setting(False, "Matching Networks: full context embeddings")


@dataclass(frozen=True)
class CosineScaleOptions(Options):
    """The scale of a cosine-similarity classifier (Matching Networks, Baseline++)."""

    cosine_scale: float | None = setting(None, "Matching Networks: learned scale on the cosine, from this value; "
                                               "Baseline++: the fixed scale of its cosine head (default 10)",
                                         rule=POSITIVE)


class MatchingNetworks(MetricLearner):
    def __init__(
        self,
        encoder: nn.Module,
        full_context_embeddings: bool = False,
        embedding_size: int | None = None,
        processing_steps: int = 5,
        loss: str = "cross_entropy",
        cosine_scale: float | None = None,
    ) -> None:
        """``embedding_size`` (the encoder's output width) and ``processing_steps`` (K) only matter for
        full context embeddings, whose LSTMs need the width up front."""
        super().__init__(encoder, loss)
        self.full_context_embeddings = full_context_embeddings
        check_option(CosineScaleOptions, "cosine_scale", cosine_scale)
        self.scale = None if cosine_scale is None else nn.Parameter(torch.tensor(float(cosine_scale)))
        if full_context_embeddings:
            if embedding_size is None or embedding_size < 1:
                raise ValueError(
                    "full context embeddings need embedding_size, the width of the encoder's output, "
                    f"got {embedding_size}"
                )
            if processing_steps < 1:
                raise ValueError(f"processing_steps must be at least 1, got {processing_steps}")
            self.processing_steps = processing_steps
            self.support_lstm = nn.LSTM(embedding_size, embedding_size, batch_first=True, bidirectional=True)
            self.query_lstm = nn.LSTMCell(2 * embedding_size, embedding_size)

    def adapt_embedded(self, support: torch.Tensor, one_hot: torch.Tensor) -> EmbeddedSupport:
        if self.full_context_embeddings:
            if support.shape[-1] != self.support_lstm.input_size:
                raise ValueError(f"the encoder gives {support.shape[-1]} features, but embedding_size is "
                                 f"{self.support_lstm.input_size}")
            forward, backward = self.support_lstm(support)[0].chunk(2, dim=-1)
            support = forward + backward + support
        return EmbeddedSupport(support, one_hot)

    def _read_support(self, queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """f(x^): the attention LSTM, for queries (tasks, Q, D) over full-context support embeddings (tasks, S, D)."""
        h = torch.zeros_like(queries)
        c = torch.zeros_like(queries).flatten(0, 1)
        for _ in range(self.processing_steps):
            read = torch.softmax(h @ support.transpose(1, 2), dim=-1) @ support
            h_hat, c = self.query_lstm(torch.cat([queries, read], -1).flatten(0, 1), (h.flatten(0, 1), c))
            h = h_hat.view_as(queries) + queries
        return h

    def log_attention(self, adapted: EmbeddedSupport, queries: torch.Tensor) -> torch.Tensor:
        """log a(x^, x_i) for query embeddings (tasks, Q, D): (tasks, Q, S)."""
        check_pair(queries, adapted.features)
        if self.full_context_embeddings:
            queries = self._read_support(queries, adapted.features)
        similarities = cosine_similarities(queries, adapted.features)
        if self.scale is not None:
            similarities = self.scale * similarities
        return torch.log_softmax(similarities, dim=-1)

    def attention(self, adapted: EmbeddedSupport, queries: torch.Tensor) -> torch.Tensor:
        """a(x^, x_i) for query embeddings (tasks, Q, D): (tasks, Q, S), each row summing to 1."""
        return self.log_attention(adapted, queries).exp()

    def predict_embedded(self, adapted: EmbeddedSupport, queries: torch.Tensor) -> torch.Tensor:
        """log P(y^ | x^, S), (tasks, Q, classes): a log-sum-exp of each class's log attention weights, exact
        even where a scaled softmax underflows."""
        per_class = self.log_attention(adapted, queries).unsqueeze(-1) + adapted.one_hot.log().unsqueeze(1)
        return torch.logsumexp(per_class, dim=2)


def _build(context) -> MatchingNetworks:
    encoder, width = context.encoder()
    method = context.cfg.method
    return MatchingNetworks(encoder, method.full_context_embeddings, embedding_size=width,
                            cosine_scale=method.cosine_scale)


SPECS = (MethodSpec("matching", MatchingNetworks, _build, (MatchingOptions, CosineScaleOptions), any_way=True,
                    images_only=True),)
