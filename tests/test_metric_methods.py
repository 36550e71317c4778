"""Prototypical Networks, Matching Networks and k-NN: their equations, their errors, and that they learn."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms import MatchingNetworks, NearestNeighbours, PrototypicalNetworks
from fastadapt.algorithms.base import per_task_metric
from fastadapt.algorithms.base import embed_images
from fastadapt.models import Conv4
from fastadapt.tasks.base import TaskBatch


def synthetic_tasks(num_tasks, n_way=5, k_shot=1, queries=2, side=16, noise=0.4, seed=0, dtype=torch.float32):
    """N-way K-shot episodes over a fixed pool of 30 random blocky binary 'characters'; examples are noisy
    copies. Each task draws its classes from the pool; the pool is the same whatever the seed."""
    pool = (torch.rand(30, 1, side // 4, side // 4, generator=torch.Generator().manual_seed(1234)) > 0.5).to(dtype)
    pool = pool.repeat_interleave(4, 2).repeat_interleave(4, 3)
    g = torch.Generator().manual_seed(seed)
    classes = torch.rand(num_tasks, len(pool), generator=g).argsort(1)[:, :n_way]

    def draw(copies):
        x = pool[classes].repeat_interleave(copies, 1)
        x = (x + noise * torch.randn(x.shape, generator=g, dtype=dtype)).clamp(0, 1)
        return x, torch.arange(n_way).repeat_interleave(copies).expand(num_tasks, -1).clone()

    return TaskBatch(*draw(k_shot), *draw(queries))


def flat_encoder(side=16, width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(side * side, width))


# --- Prototypical Networks ---


def test_prototypes_are_class_means_and_logits_negative_squared_distances():
    torch.manual_seed(0)
    batch = synthetic_tasks(3, n_way=4, k_shot=3, queries=2, seed=1)
    perm = torch.randperm(12)  # shuffled support order: prototypes must not rely on it
    support_x, support_y = batch.support_x[:, perm], batch.support_y[:, perm]
    learner = PrototypicalNetworks(flat_encoder())
    prototypes = learner.adapt(support_x, support_y)
    assert prototypes.shape == (3, 4, 8)
    features = learner.encoder(support_x.flatten(0, 1)).view(3, 12, 8)
    for t in range(3):
        for k in range(4):
            assert torch.allclose(prototypes[t, k], features[t][support_y[t] == k].mean(0), atol=1e-6)
    logits = learner.predict(prototypes, batch.query_x)
    queries = learner.encoder(batch.query_x.flatten(0, 1)).view(3, 8, 1, 8)
    assert torch.allclose(logits, -((queries - prototypes.unsqueeze(1)) ** 2).sum(-1), atol=1e-4)


def test_cosine_distance_is_scaled_cosine_similarity():
    torch.manual_seed(0)
    batch = synthetic_tasks(2, n_way=3, k_shot=2)
    learner = PrototypicalNetworks(flat_encoder(), distance="cosine")
    prototypes = learner.adapt(batch.support_x, batch.support_y)
    queries = embed_images(learner.encoder, batch.query_x, "test")
    expected = 10 * F.cosine_similarity(queries.unsqueeze(2), prototypes.unsqueeze(1), dim=-1)
    assert torch.allclose(learner.predict(prototypes, batch.query_x), expected, atol=1e-5)


def test_one_call_meta_loss_equals_adapt_then_predict_without_batch_statistics():
    torch.manual_seed(0)
    batch = synthetic_tasks(3)
    learner = PrototypicalNetworks(Conv4(hidden=8, norm="layer"))
    calls = []
    learner.encoder.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    loss, metrics = learner.meta_loss(batch)
    assert calls == [3 * (5 + 10)]  # every support and query image of every task, in one encoder call
    outputs = learner.predict(learner.adapt(batch.support_x, batch.support_y), batch.query_x)
    assert torch.allclose(loss, F.cross_entropy(outputs.flatten(0, 1), batch.query_y.flatten()), atol=1e-6)
    assert set(metrics) == {"loss", "accuracy"}


def test_clear_errors():
    batch = synthetic_tasks(2, n_way=3)
    learner = PrototypicalNetworks(flat_encoder())
    with pytest.raises(ValueError, match="task 0 has no support example of class 1"):
        learner.adapt(batch.support_x, torch.tensor([[0, 2, 2], [0, 1, 2]]))
    with pytest.raises(ValueError, match="query_y labels must lie in 0..2"):
        learner.meta_loss(TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y + 1))
    with pytest.raises(ValueError, match="must be \\(tasks, examples\\) to match"):
        learner.adapt(batch.support_x, batch.support_y[:, :2])
    with pytest.raises(TypeError, match="int64"):
        learner.adapt(batch.support_x, batch.support_y.float())
    with pytest.raises(ValueError, match="not by gradient steps"):
        learner.adapt(batch.support_x, batch.support_y, steps=3)
    with pytest.raises(ValueError, match="same tasks"):
        learner.predict(learner.adapt(batch.support_x, batch.support_y), batch.query_x[:1])
    with pytest.raises(ValueError, match="loss must be 'cross_entropy'"):
        PrototypicalNetworks(flat_encoder(), loss="mse")
    with pytest.raises(ValueError, match="unknown distance"):
        PrototypicalNetworks(flat_encoder(), distance="manhattan")
    with pytest.raises(ValueError, match="embedding_size"):
        MatchingNetworks(flat_encoder(), full_context_embeddings=True)
    with pytest.raises(ValueError, match="encoder gives 8 features"):
        MatchingNetworks(flat_encoder(), True, embedding_size=5).adapt(batch.support_x, batch.support_y)


# --- Matching Networks ---


@pytest.mark.parametrize("fce", [False, True])
def test_matching_outputs_are_log_probabilities_of_attention(fce):
    torch.manual_seed(0)
    batch = synthetic_tasks(2, n_way=3, k_shot=2, queries=2)
    learner = MatchingNetworks(flat_encoder(), full_context_embeddings=fce, embedding_size=8, processing_steps=2)
    adapted = learner.adapt(batch.support_x, batch.support_y)
    attention = learner.attention(adapted, embed_images(learner.encoder, batch.query_x, "test"))
    assert attention.shape == (2, 6, 6) and (attention > 0).all()
    assert torch.allclose(attention.sum(-1), torch.ones(2, 6))
    log_probs = learner.predict(adapted, batch.query_x)
    assert log_probs.shape == (2, 6, 3)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 6), atol=1e-6)
    per_class = torch.stack([attention[..., batch.support_y[0] == k].sum(-1) for k in range(3)], -1)
    assert torch.allclose(log_probs.exp(), per_class, atol=1e-6)
    # the shared cross-entropy on these outputs is the negative log-likelihood -log P(y | x, S)
    nll = -log_probs.gather(-1, batch.query_y.unsqueeze(-1)).mean()
    assert torch.allclose(learner.meta_loss(batch)[0], nll, atol=1e-5)


def test_matching_without_fce_is_softmax_of_cosines():
    torch.manual_seed(0)
    batch = synthetic_tasks(2, n_way=3)
    learner = MatchingNetworks(flat_encoder())
    support = embed_images(learner.encoder, batch.support_x, "test")
    queries = embed_images(learner.encoder, batch.query_x, "test")
    cosines = F.cosine_similarity(queries.unsqueeze(2), support.unsqueeze(1), dim=-1)
    attention = learner.attention(learner.adapt(batch.support_x, batch.support_y), queries)
    assert torch.allclose(attention, cosines.softmax(-1), atol=1e-6)


def test_matching_cosine_scale_is_learned_and_safe_from_underflow():
    torch.manual_seed(0)
    batch = synthetic_tasks(2, n_way=3)
    learner = MatchingNetworks(flat_encoder(), cosine_scale=10.0)
    assert any(p is learner.scale for p in learner.parameters())
    support = embed_images(learner.encoder, batch.support_x, "test")
    queries = embed_images(learner.encoder, batch.query_x, "test")
    cosines = F.cosine_similarity(queries.unsqueeze(2), support.unsqueeze(1), dim=-1)
    attention = learner.attention(learner.adapt(batch.support_x, batch.support_y), queries)
    assert torch.allclose(attention, (10 * cosines).softmax(-1), atol=1e-6)
    with torch.no_grad():
        learner.scale.fill_(1e4)  # most attention weights underflow to 0 in float32
    loss = learner.meta_loss(batch)[0]
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(learner.scale.grad)
    with pytest.raises(ValueError, match="cosine_scale must be positive"):
        MatchingNetworks(flat_encoder(), cosine_scale=0.0)


def test_fce_queries_do_not_influence_each_other():
    torch.manual_seed(0)
    batch = synthetic_tasks(2, n_way=3)
    learner = MatchingNetworks(flat_encoder(), True, embedding_size=8, processing_steps=3)
    adapted = learner.adapt(batch.support_x, batch.support_y)
    changed = batch.query_x.clone()
    changed[:, 1:] = torch.rand_like(changed[:, 1:])
    assert torch.allclose(learner.predict(adapted, batch.query_x)[:, 0], learner.predict(adapted, changed)[:, 0])


# --- k nearest neighbours ---


def _points(rows):
    """Tasks of 1x1x2 'images' from (x, y) pairs: (tasks, examples, 1, 1, 2)."""
    return torch.tensor(rows, dtype=torch.float32).view(1, len(rows), 1, 1, 2)


def test_knn_in_pixel_space_on_a_hand_made_example():
    support_x = _points([[0, 0], [0, 1], [5, 5], [5, 6], [6, 5], [10, 0]])
    support_y = torch.tensor([[0, 0, 1, 1, 1, 2]])
    query_x = _points([[0.2, 0.2], [9, 0], [3, 3.2], [4, 4]])
    one = NearestNeighbours(k=1)
    assert one.predict(one.adapt(support_x, support_y), query_x).argmax(-1).tolist() == [[0, 2, 1, 1]]
    three = NearestNeighbours(k=3)
    # [9, 0]: its nearest is class 2, but the next two are class 1, which wins the vote
    scores = three.predict(three.adapt(support_x, support_y), query_x)
    assert scores.shape == (1, 4, 3)
    assert scores.argmax(-1).tolist() == [[0, 1, 1, 1]]
    assert scores[0, 0].floor().tolist() == [2, 1, 0]  # the integer part is the vote count
    two = NearestNeighbours(k=2)
    # [9, 0] with k=2: one vote each for classes 2 and 1; class 2's neighbour is nearer and wins the tie
    scores = two.predict(two.adapt(support_x, support_y), query_x)
    assert torch.allclose(scores[0, 1], torch.tensor([0, 1 + 1 / 3, 1 + 2 / 3]))


def test_knn_uses_the_encoder_and_has_nothing_to_meta_train():
    batch = synthetic_tasks(2, n_way=3)
    knn = NearestNeighbours(flat_encoder(), k=1)
    assert knn.predict(knn.adapt(batch.support_x, batch.support_y), batch.query_x).shape == (2, 6, 3)
    with pytest.raises(RuntimeError, match="nothing to meta-train"):
        knn.meta_loss(batch)
    with pytest.raises(ValueError, match="only 3 examples"):
        NearestNeighbours(k=4).adapt(batch.support_x, batch.support_y)
    with pytest.raises(ValueError, match="k must be at least 1"):
        NearestNeighbours(k=0)


# --- learning ---


def _accuracy(learner, batch):
    with torch.no_grad():
        outputs = learner.predict(learner.adapt(batch.support_x, batch.support_y), batch.query_x)
        return per_task_metric(outputs, batch.query_y, "cross_entropy").mean().item()


@pytest.mark.parametrize("make", [
    lambda: PrototypicalNetworks(Conv4(hidden=8)),
    lambda: MatchingNetworks(Conv4(hidden=8)),
    lambda: MatchingNetworks(Conv4(hidden=8), True, embedding_size=8, processing_steps=2),
], ids=["protonet", "matching", "matching-fce"])
def test_meta_training_lowers_the_loss_and_raises_accuracy(make):
    torch.manual_seed(0)
    learner = make()
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    held_out = synthetic_tasks(10, seed=1000)
    before = (learner.meta_loss(held_out)[0].item(), _accuracy(learner, held_out))
    for step in range(30):
        loss, _ = learner.meta_loss(synthetic_tasks(4, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = (learner.meta_loss(held_out)[0].item(), _accuracy(learner, held_out))
    assert after[0] < before[0] - 0.05
    assert after[1] > before[1] + 0.15
