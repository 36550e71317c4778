"""MANN: memory-augmented neural network (Santoro et al., 2016).

An LSTM controller reads a sequence of (image embedding, previous label) pairs
and keeps what it has seen in an external memory M (slots x width). At step t,
for every read head (the paper's equations, with n = the number of read heads):

    controller   (h_t, c_t) = LSTM([x_t ; y_{t-1} ; r_{t-1}], (h_{t-1}, c_{t-1}))
    key, gate    k_t = tanh(W_k h_t),  alpha_t = W_alpha h_t
    LRUA write   w^w_t = sigmoid(alpha_t) w^r_{t-1} + (1 - sigmoid(alpha_t)) w^lu_{t-1}
                 the least-used slot, argmin_i w^u_{t-1}(i), is set to zero, then
                 M_t(i) = M_{t-1}(i) + sum_heads w^w_t(i) k_t
    read         K(k, m) = k.m / (|k| |m|)                  (cosine similarity)
                 w^r_t(i) = softmax_i K(k_t, M_t(i)),   r_t = sum_i w^r_t(i) M_t(i)
    usage        w^u_t = gamma w^u_{t-1} + sum_heads (w^r_t + w^w_t)
    least used   w^lu_t(i) = 1 if w^u_t(i) is among the n smallest usages, else 0
    output       o_t = W_o [h_t ; r_t]                      (logits)

Labels are shown one step late (y_{t-1} with x_t; zeros at t = 1), so the
network must bind each image to its label in memory and recall the binding at
the class's next presentation: the paper's sequential protocol, available as
``sequence_logits`` and scored by ``accuracy_by_instance``.

On the shared few-shot interface, ``adapt`` reads the support set as such a
sequence (no gradient steps) and returns the controller and memory state;
``predict`` answers every query as one more step from that same state, fed the
last support label, so queries never see each other. ``meta_loss`` trains the
paper's way, with a loss at every step: each support step (predicted from the
steps before it) and each query; the support order is shuffled per task so
that the sequence is as random as the paper's episodes.

x_t is the encoder's embedding of the image (the paper fed raw pixels), so
MANN runs on the same encoder and episodes as the other methods. """
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.base import MetaLearner, check_labels, check_no_steps, check_queries, embed_images
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.tasks.base import TaskBatch


class MemoryState(NamedTuple):
    """Everything MANN carries from one step to the next; every field leads with the batch dimension."""

    hidden: torch.Tensor  # (B, controller_size)
    cell: torch.Tensor  # (B, controller_size)
    memory: torch.Tensor  # (B, slots, width)
    usage: torch.Tensor  # (B, slots)          w^u
    read_weights: torch.Tensor  # (B, heads, slots)   w^r
    reads: torch.Tensor  # (B, heads, width)   r

    def repeat_each(self, times: int) -> "MemoryState":
        """Repeat every batch entry ``times`` times in a row, to branch several next steps from one state."""
        return MemoryState(*(field.repeat_interleave(times, dim=0) for field in self))


class Adapted(NamedTuple):
    """What MANN keeps from a support set: the state after reading it, and its last label (fed with each query)."""

    state: MemoryState
    last_label: torch.Tensor  # (tasks, n_way) one-hot


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """w^lu: 1 on the ``n`` least-used slots of each row of ``usage`` (B, slots), 0 elsewhere.

    A stable sort breaks ties by slot index, so an unused memory fills up in order.
    """
    if not 1 <= n <= usage.shape[-1]:
        raise ValueError(f"cannot pick the {n} least-used slots of a memory with {usage.shape[-1]} slots")
    slots = torch.argsort(usage, dim=-1, stable=True)[..., :n]
    return torch.zeros_like(usage).scatter_(-1, slots, 1.0)


def lrua_write(
    memory: torch.Tensor,
    usage: torch.Tensor,
    read_weights: torch.Tensor,
    keys: torch.Tensor,
    gate_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-recently-used access: write each head's key and return (M_t, w^w_t).

    memory (B, slots, width) is M_{t-1}; usage (B, slots) is w^u_{t-1};
    read_weights (B, heads, slots) is w^r_{t-1}; keys (B, heads, width) is k_t;
    gate_logits (B, heads) is alpha_t. w^lu_{t-1} takes as many slots as there are heads.
    """
    gate = torch.sigmoid(gate_logits).unsqueeze(-1)
    write_weights = gate * read_weights + (1 - gate) * least_used(usage, keys.shape[1]).unsqueeze(1)
    keep = 1 - F.one_hot(usage.argmin(-1), usage.shape[-1]).to(memory.dtype)
    memory = memory * keep.unsqueeze(-1) + write_weights.transpose(1, 2) @ keys
    return memory, write_weights


def content_read(memory: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Read by cosine similarity: returns (w^r_t (B, heads, slots), r_t (B, heads, width))."""
    similarity = F.normalize(keys, dim=-1) @ F.normalize(memory, dim=-1).transpose(1, 2)
    weights = similarity.softmax(-1)
    return weights, weights @ memory


class MANN(MetaLearner):
    """Defaults are the paper's Omniglot settings: 200 LSTM units, 128 x 40 memory, 4 read heads, gamma 0.95."""

    reads_support_in_order = True  # meta_loss shuffles the support sequence; evaluation must not sort it by class

    def __init__(
        self,
        encoder: nn.Module,
        encoder_dim: int,
        n_way: int,
        controller_size: int = 200,
        memory_slots: int = 128,
        memory_width: int = 40,
        num_reads: int = 4,
        gamma: float = 0.95,
    ) -> None:
        super().__init__("cross_entropy")
        for name, value in (("encoder_dim", encoder_dim), ("n_way", n_way), ("controller_size", controller_size),
                            ("memory_slots", memory_slots), ("memory_width", memory_width), ("num_reads", num_reads)):
            if value < 1:
                raise ValueError(f"MANN: {name} must be a positive integer, got {value}")
        if num_reads > memory_slots:
            raise ValueError(f"MANN: num_reads ({num_reads}) cannot exceed memory_slots ({memory_slots})")
        if not 0 <= gamma <= 1:
            raise ValueError(f"MANN: the usage decay gamma must lie in [0, 1], got {gamma}")
        self.encoder, self.encoder_dim, self.n_way = encoder, encoder_dim, n_way
        self.memory_slots, self.memory_width, self.num_reads, self.gamma = memory_slots, memory_width, num_reads, gamma
        reads_size = num_reads * memory_width
        self.controller = nn.LSTMCell(encoder_dim + n_way + reads_size, controller_size)
        self.key = nn.Linear(controller_size, reads_size)
        self.gate = nn.Linear(controller_size, num_reads)
        self.output = nn.Linear(controller_size + reads_size, n_way)

    def initial_state(self, batch: int, like: torch.Tensor) -> MemoryState:
        """An empty memory: zero state, zero usage, no previous reads (``like`` gives device and dtype)."""
        size = self.controller.hidden_size
        shapes = [(size,), (size,), (self.memory_slots, self.memory_width), (self.memory_slots,),
                  (self.num_reads, self.memory_slots), (self.num_reads, self.memory_width)]
        return MemoryState(*(like.new_zeros(batch, *shape) for shape in shapes))

    def step(
        self, features: torch.Tensor, last_label: torch.Tensor, state: MemoryState
    ) -> tuple[torch.Tensor, MemoryState]:
        """One time step: features (B, D), the previous one-hot label (B, n_way) -> (logits (B, n_way), new state)."""
        batch = features.shape[0]
        hidden, cell = self.controller(torch.cat([features, last_label, state.reads.flatten(1)], -1),
                                       (state.hidden, state.cell))
        keys = torch.tanh(self.key(hidden)).view(batch, self.num_reads, self.memory_width)
        memory, write_weights = lrua_write(state.memory, state.usage, state.read_weights, keys, self.gate(hidden))
        read_weights, reads = content_read(memory, keys)
        usage = self.gamma * state.usage + read_weights.sum(1) + write_weights.sum(1)
        logits = self.output(torch.cat([hidden, reads.flatten(1)], -1))
        return logits, MemoryState(hidden, cell, memory, usage, read_weights, reads)

    def _read(self, x: torch.Tensor, y: torch.Tensor, names: tuple[str, str] = ("support_x", "support_y")
              ) -> tuple[torch.Tensor, Adapted]:
        """Read examples x (tasks, steps, *features) with labels y (tasks, steps) shown one step late.

        Returns the logits of every step (tasks, steps, n_way) and what the sequence leaves:
        the state after its last step, and its last label.
        """
        check_labels(x, y, self.n_way, "MANN", *names)
        features = embed_images(self.encoder, x, "MANN", self.encoder_dim)
        labels = F.one_hot(y, self.n_way).to(features.dtype)
        shown = torch.cat([labels.new_zeros(y.shape[0], 1, self.n_way), labels[:, :-1]], 1)
        state = self.initial_state(y.shape[0], features)
        logits = []
        for t in range(y.shape[1]):
            step_logits, state = self.step(features[:, t], shown[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, 1), Adapted(state, labels[:, -1])

    def sequence_logits(self, x_seq: torch.Tensor, y_seq: torch.Tensor) -> torch.Tensor:
        """The paper's protocol: logits (tasks, steps, n_way) at every step of an episode sequence
        x_seq (tasks, steps, *features), y_seq (tasks, steps), each label shown at the next step."""
        return self._read(x_seq, y_seq, ("x_seq", "y_seq"))[0]

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Adapted:
        check_no_steps(steps, "MANN")
        return self._read(support_x, support_y)[1]

    def predict(self, adapted: Adapted, query_x: torch.Tensor) -> torch.Tensor:
        """Each query as its own next step from the support state: (tasks, queries, n_way)."""
        check_queries(query_x, adapted.state.hidden.shape[0], "MANN")
        tasks, queries = query_x.shape[:2]
        features = embed_images(self.encoder, query_x, "MANN", self.encoder_dim)
        logits, _ = self.step(
            features.flatten(0, 1),
            adapted.last_label.repeat_interleave(queries, dim=0),
            adapted.state.repeat_each(queries),
        )
        return logits.view(tasks, queries, self.n_way)

    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy at every step: each support step (in a shuffled order), then each query.

        Support and query images go through the encoder in separate calls, exactly as in
        ``adapt`` and ``predict``, so batch-statistics normalisation sees the same batches
        in training as in evaluation.
        """
        check_labels(tasks.query_x, tasks.query_y, self.n_way, "MANN", "query_x", "query_y")
        support_x, support_y = shuffle_sequence(tasks.support_x, tasks.support_y)
        support_logits, adapted = self._read(support_x, support_y)
        query_logits = self.predict(adapted, tasks.query_x)
        logits = torch.cat([support_logits, query_logits], 1)
        loss = self.task_losses(logits, torch.cat([support_y, tasks.query_y], 1)).mean()
        return loss, self.metrics(query_logits, tasks.query_y, loss)


def shuffle_sequence(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Put each task's examples (tasks, examples, ...) in a fresh random order, the same for x and y."""
    order = torch.rand(y.shape[:2], device=y.device).argsort(1)
    x_order = order.view(*order.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, x_order), y.gather(1, order)


def accuracy_by_instance(
    logits: torch.Tensor, labels: torch.Tensor, instances: Sequence[int] = (1, 2, 3, 5, 10)
) -> dict[int, float]:
    """Accuracy at the k-th presentation of a class, for each k in ``instances`` (the paper's Table 1).

    logits (tasks, steps, classes) come from ``MANN.sequence_logits``; labels are (tasks, steps).
    A k that never occurs in the sequences gets NaN.
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"accuracy_by_instance: logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} + (classes,)"
        )
    seen = F.one_hot(labels, logits.shape[-1]).cumsum(1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    correct = (logits.argmax(-1) == labels).float()
    return {k: correct[seen == k].mean().item() if (seen == k).any() else float("nan") for k in instances}


SPECS = (MethodSpec("mann", MANN, lambda context: MANN(*context.encoder(), n_way=context.cfg.task.n_way),
                    pixel_input=True, images_only=True),)
