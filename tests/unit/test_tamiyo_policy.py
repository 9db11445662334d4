"""The GNN policy: shapes, valid probabilities, determinism, the same decisions with either scatter backend."""

from __future__ import annotations

import torch

from services.tamiyo.policy import TamiyoPolicy, chain_graph
from services.tamiyo.scatter import NativeScatter, TorchScatter


def make(scatter=None, seed=0):
    torch.manual_seed(seed)
    return TamiyoPolicy(in_features=12, hidden=32, layers=3, blueprints=5, scatter=scatter)


def test_outputs_are_shaped_and_bounded():
    x, edges = chain_graph(40, 12)
    out = make().decide(x, edges)
    assert out.node_scores.shape == (40,) and out.blueprint_probabilities.shape == (5,)
    assert 0 < float(out.adapt_probability) < 1 and 0 < float(out.urgency) < 1
    torch.testing.assert_close(out.blueprint_probabilities.sum(), torch.tensor(1.0))
    assert out.value.shape == ()


def test_inference_is_deterministic_and_leaves_no_graph():
    policy = make()
    policy.train()
    x, edges = chain_graph(50, 12, seed=3)
    a, b = policy.decide(x, edges), policy.decide(x, edges)
    assert torch.equal(a.node_scores, b.node_scores) and not a.node_scores.requires_grad
    assert policy.training, "decide() restores the mode it found"
    assert make().version() == policy.version() and make(seed=1).version() != policy.version()


def test_both_scatter_backends_give_the_same_decisions():
    x, edges = chain_graph(300, 12, seed=5)
    native = make(NativeScatter()).decide(x, edges)
    extension = make(TorchScatter()).decide(x, edges)
    for field in ("adapt_probability", "node_scores", "blueprint_probabilities", "urgency", "value"):
        torch.testing.assert_close(getattr(native, field), getattr(extension, field), rtol=1e-5, atol=1e-5)
    assert int(native.node_scores.argmax()) == int(extension.node_scores.argmax())


def test_messages_flow_along_edges():
    policy = make()
    x, edges = chain_graph(20, 12)
    base = policy.decide(x, edges).node_scores
    changed = x.clone()
    changed[19] += 5.0  # the last node sends to nobody
    after = policy.decide(changed, edges).node_scores
    assert torch.equal(base[:19], after[:19]) and not torch.equal(base[19], after[19])
    changed = x.clone()
    changed[0] += 5.0  # the first node feeds the chain
    assert not torch.equal(base[1:4], policy.decide(changed, edges).node_scores[1:4])
