"""Tamiyo's GNN policy in plain torch: message passing over a model graph, several decision heads.

Shapes:
    x:          (N, F) node features (one node per layer / seed slot)
    edge_index: (2, E) int64, row 0 = source node, row 1 = target node (data flow)
    outputs:    adapt_probability (), node_scores (N,), blueprint_probabilities (B,), urgency (), value ()

Every aggregation (mean + max of incoming messages, mean + max readout) goes through a
``ScatterBackend``, so native torch and torch-scatter are interchangeable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from services.tamiyo.scatter import NativeScatter, ScatterBackend


@dataclass(frozen=True)
class PolicyOutput:
    adapt_probability: Tensor
    node_scores: Tensor
    blueprint_probabilities: Tensor
    urgency: Tensor
    value: Tensor


class _MessagePassing(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.message = nn.Linear(hidden, hidden)
        self.update = nn.Linear(3 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, edge_index: Tensor, scatter: ScatterBackend) -> Tensor:
        source, target = edge_index
        messages = torch.relu(self.message(h)).index_select(0, source)
        n = h.shape[0]
        aggregated = torch.cat([scatter.mean(messages, target, n), scatter.max(messages, target, n)], dim=1)
        return self.norm(h + torch.relu(self.update(torch.cat([h, aggregated], dim=1))))


class TamiyoPolicy(nn.Module):
    def __init__(self, in_features: int, hidden: int = 64, layers: int = 3, blueprints: int = 8,
                 scatter: ScatterBackend | None = None) -> None:
        super().__init__()
        self.hidden = hidden
        self.scatter = scatter or NativeScatter()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList(_MessagePassing(hidden) for _ in range(layers))
        self.adapt_head = nn.Linear(2 * hidden, 1)
        self.node_head = nn.Linear(hidden, 1)
        self.blueprint_head = nn.Linear(2 * hidden, blueprints)
        self.urgency_head = nn.Linear(2 * hidden, 1)
        self.value_head = nn.Linear(2 * hidden, 1)

    def forward(self, x: Tensor, edge_index: Tensor) -> PolicyOutput:
        h = self.encoder(x)
        for layer in self.layers:
            h = layer(h, edge_index, self.scatter)
        graph = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        readout = torch.cat([self.scatter.mean(h, graph, 1), self.scatter.max(h, graph, 1)], dim=1)[0]
        return PolicyOutput(
            adapt_probability=torch.sigmoid(self.adapt_head(readout))[0],
            node_scores=self.node_head(h).squeeze(1),
            blueprint_probabilities=torch.softmax(self.blueprint_head(readout), dim=0),
            urgency=torch.sigmoid(self.urgency_head(readout))[0],
            value=self.value_head(readout)[0],
        )

    def decide(self, x: Tensor, edge_index: Tensor) -> PolicyOutput:
        """Inference: eval mode, no autograd, deterministic."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return self(x, edge_index)
        finally:
            self.train(was_training)

    def version(self) -> str:
        """A content hash of the weights: the policy version recorded with every decision."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return "gnn-" + digest.hexdigest()[:12]


def chain_graph(nodes: int, features: int, skip: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A model-like graph: a chain of layers plus skip connections (used by tests and the benchmark)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(nodes, features, generator=generator)
    sources, targets = [], []
    for i in range(nodes - 1):
        sources.append(i)
        targets.append(i + 1)
        for k in (2, skip, 2 * skip):
            if i + k < nodes:
                sources.append(i)
                targets.append(i + k)
    return x, torch.tensor([sources, targets], dtype=torch.long)
