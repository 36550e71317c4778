import math

import pytest
import torch
from torch import nn

from fastadapt.algorithms.mann import MANN, accuracy_by_instance, content_read, least_used, lrua_write, shuffle_sequence
from episode_helpers import FEATURES, N_WAY, SIDE, fixed_episodes, meta_train  # tests/ is on sys.path


def tiny_mann() -> MANN:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, FEATURES), nn.ReLU())
    return MANN(encoder, FEATURES, N_WAY, controller_size=32, memory_slots=8, memory_width=8, num_reads=2)


def test_least_used_takes_the_n_smallest_and_breaks_ties_by_slot():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.0, 0.0, 0.0, 0.0]])
    assert least_used(usage, 1).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]
    assert least_used(usage, 2).tolist() == [[0, 1, 0, 1], [1, 1, 0, 0]]
    with pytest.raises(ValueError, match="least-used"):
        least_used(usage, 5)


def test_lrua_write_matches_a_hand_computed_example():
    memory = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]).unsqueeze(0)  # 4 slots, width 3
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3]])  # slot 1 is least used
    read_weights = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]])
    key = torch.tensor([[[1.0, 2.0, 3.0]]])
    gate_logit = torch.zeros(1, 1)  # sigmoid(0) = 1/2

    new_memory, write_weights = lrua_write(memory, usage, read_weights, key, gate_logit)

    # w^w = 0.5 * w^r + 0.5 * w^lu with w^lu = [0, 1, 0, 0]
    expected_write = torch.tensor([0.05, 0.6, 0.15, 0.2])
    torch.testing.assert_close(write_weights[0, 0], expected_write)
    # slot 1 is zeroed before writing, then every slot gets w^w(i) * key
    expected_memory = torch.tensor([
        [1.05, 0.1, 0.15],
        [0.6, 1.2, 1.8],
        [0.15, 0.3, 1.45],
        [1.2, 1.4, 1.6],
    ])
    torch.testing.assert_close(new_memory[0], expected_memory)


def test_content_read_is_a_softmax_of_cosine_similarity():
    memory = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    weights, reads = content_read(memory, torch.tensor([[[1.0, 0.0]]]))
    expected = torch.tensor([math.e, 1.0]) / (math.e + 1)
    torch.testing.assert_close(weights[0, 0], expected)
    torch.testing.assert_close(reads[0, 0], expected @ memory[0])


def test_shapes_and_queries_answered_independently():
    torch.manual_seed(0)
    model, tasks = tiny_mann(), fixed_episodes(tasks=2, queries=2)
    outputs = model.predict(model.adapt(tasks.support_x, tasks.support_y), tasks.query_x)
    assert outputs.shape == (2, N_WAY * 2, N_WAY)
    # Each query is the step right after the support sequence, as if it were the only one.
    for j in range(tasks.query_x.shape[1]):
        x_seq = torch.cat([tasks.support_x, tasks.query_x[:, j : j + 1]], 1)
        y_seq = torch.cat([tasks.support_y, tasks.query_y[:, j : j + 1]], 1)
        torch.testing.assert_close(outputs[:, j], model.sequence_logits(x_seq, y_seq)[:, -1])


def test_labels_are_shown_one_step_late():
    torch.manual_seed(0)
    model, tasks = tiny_mann(), fixed_episodes(tasks=2)
    logits = model.sequence_logits(tasks.support_x, tasks.support_y)
    assert logits.shape == (2, N_WAY, N_WAY)
    changed = tasks.support_y.clone()
    changed[:, -1] = (changed[:, -1] + 1) % N_WAY  # the last label is never fed to the model
    torch.testing.assert_close(model.sequence_logits(tasks.support_x, changed), logits)
    changed[:, 0] = (changed[:, 0] + 1) % N_WAY  # the first label is fed at step 2
    changed_logits = model.sequence_logits(tasks.support_x, changed)
    torch.testing.assert_close(changed_logits[:, 0], logits[:, 0])
    assert not torch.allclose(changed_logits[:, 1], logits[:, 1])


def test_accuracy_by_instance_counts_presentations_per_class():
    labels = torch.tensor([[0, 1, 0, 0, 1]])
    predicted = torch.tensor([[1, 1, 0, 2, 1]])  # correct at steps 1, 2, 4
    logits = torch.nn.functional.one_hot(predicted, 3).float()
    result = accuracy_by_instance(logits, labels)
    assert list(result) == [1, 2, 3, 5, 10]
    assert result[1] == 0.5 and result[2] == 1.0 and result[3] == 0.0
    assert math.isnan(result[5]) and math.isnan(result[10])
    with pytest.raises(ValueError, match="logits"):
        accuracy_by_instance(logits[:, :-1], labels)


def test_sequence_protocol_on_a_shuffled_episode():
    torch.manual_seed(0)
    model, tasks = tiny_mann(), fixed_episodes(tasks=2, queries=4)  # 3 classes x 5 instances in all
    x_seq, y_seq = shuffle_sequence(torch.cat([tasks.support_x, tasks.query_x], 1),
                                    torch.cat([tasks.support_y, tasks.query_y], 1))
    assert sorted(y_seq[0].tolist()) == sorted(torch.cat([tasks.support_y, tasks.query_y], 1)[0].tolist())
    logits = model.sequence_logits(x_seq, y_seq)
    result = accuracy_by_instance(logits, y_seq, instances=(1, 2, 5, 6))
    assert list(result) == [1, 2, 5, 6] and math.isnan(result[6])
    # the same figures counted one step at a time
    for k in (1, 2, 5):
        hits = []
        for task in range(2):
            seen = {}
            for step, label in enumerate(y_seq[task].tolist()):
                seen[label] = seen.get(label, 0) + 1
                if seen[label] == k:
                    hits.append(logits[task, step].argmax().item() == label)
        assert result[k] == pytest.approx(sum(hits) / len(hits))


def test_meta_loss_goes_down():
    torch.manual_seed(0)
    losses = meta_train(tiny_mann(), fixed_episodes(), lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]


def test_clear_errors():
    model, tasks = tiny_mann(), fixed_episodes(tasks=2)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        model.adapt(tasks.support_x, tasks.support_y + 1)
    with pytest.raises(ValueError, match="support_y"):
        model.adapt(tasks.support_x, tasks.support_y[:, :-1])
    with pytest.raises(TypeError, match="int64"):
        model.adapt(tasks.support_x, tasks.support_y.float())
    with pytest.raises(ValueError, match="gradient steps"):
        model.adapt(tasks.support_x, tasks.support_y, steps=1)
    with pytest.raises(ValueError, match="encoder_dim=20"):
        MANN(model.encoder, 20, N_WAY).adapt(tasks.support_x, tasks.support_y)
    with pytest.raises(ValueError, match="query_x"):
        model.predict(model.adapt(tasks.support_x, tasks.support_y), tasks.query_x[:1])
    with pytest.raises(ValueError, match="num_reads"):
        MANN(nn.Identity(), 4, 3, memory_slots=2, num_reads=4)
