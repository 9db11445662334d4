"""The policy's forward on any graph (hypothesis): the kept sparse adjacency gives the per-module reference's
outputs (repeated edges, self-loops, nodes without in-edges, no edge at all), for inference and for training."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.policy_store import load_policy
from services.tamiyo.scatter import NativeScatter
from tests.unit.test_tamiyo_tensor_state import ReferencePolicy

OUTPUTS = ("adapt_probability", "node_scores", "blueprint_probabilities", "urgency", "value")
POLICY, _ = load_policy()
POLICY.scatter = NativeScatter()


@st.composite
def graphs(draw) -> tuple[torch.Tensor, torch.Tensor]:
    nodes = draw(st.integers(1, 60))
    edges = draw(st.lists(st.tuples(st.integers(0, nodes - 1), st.integers(0, nodes - 1)), max_size=4 * nodes))
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.randn(nodes, POLICY.encoder[0].in_features, generator=torch.Generator().manual_seed(seed))
    edge_index = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    return x, edge_index


@pytest.mark.timeout(120)
@settings(max_examples=40, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_the_forward_gives_the_reference_outputs_on_any_graph(graph):
    x, edge_index = graph
    got, want = POLICY.decide(x, edge_index), ReferencePolicy(POLICY).decide(x, edge_index)
    for name in OUTPUTS:
        # float32 sums in another order (fused products, the sparse mean): a wrong weight or edge is off by more
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(60)
@settings(max_examples=12, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_gradients_through_the_sparse_mean_are_the_reference_gradients(graph):
    x, edge_index = graph
    torch.manual_seed(0)
    policy = TamiyoPolicy(x.shape[1], hidden=8, blueprints=3).train()
    x = x.clone().requires_grad_(True)
    policy(x, edge_index).node_scores.sum().backward()
    got = x.grad
    x.grad = None
    ReferencePolicy(policy)._forward(x, edge_index).node_scores.sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-4, atol=1e-5)
