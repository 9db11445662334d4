"""Tamiyo's GNN policy in plain torch: message passing over a model graph, several decision heads.

Shapes:
    x:          (N, F) node features (one node per layer / seed slot)
    edge_index: (2, E) int64, row 0 = source node, row 1 = target node (data flow)
    outputs:    adapt_probability (), node_scores (N,), blueprint_probabilities (B,), urgency (), value ()

Every aggregation of incoming messages (sum, then mean by the in-degree, and max) goes through a
``ScatterBackend``, so native torch and torch-scatter are interchangeable. The readout (mean + max over
all nodes of the one graph) is a plain reduction.

Latency: what depends only on the graph's edges (the in-degrees, the source and target rows) is
computed once per ``edge_index`` and kept (``Adjacency``; Tamiyo builds one ``edge_index`` per
session and topology, see ``features``), so a decision's forward is the layers' own work. The
threads torch uses are set once by the service (``INFERENCE_THREADS``, with the reasons).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from services.tamiyo.scatter import NativeScatter, ScatterBackend


@dataclass(frozen=True)
class PolicyOutput:
    adapt_probability: Tensor
    node_scores: Tensor
    blueprint_probabilities: Tensor
    urgency: Tensor
    value: Tensor


# One intra-op thread: a decision's forward on a model graph (1,000 nodes: a few milliseconds of small
# matrix products and scatters) gains little from splitting, and on a shared machine OpenMP's spinning
# workers compete with the Kafka client's threads and the other services. Measured on the 2-core bench
# machine under load (1,000 nodes, the previous code): 2 threads 95 ms p50 per decision, 1 thread 34 ms.
# Larger graphs on a quiet many-core machine may gain from more; this is the one place to say so.
INFERENCE_THREADS = 1


def use_inference_threads(threads: int = INFERENCE_THREADS) -> None:
    """Set torch's intra-op threads for this process (call once, at service start)."""
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Adjacency:
    """What message passing needs of one graph's edges, computed once per ``edge_index``.

    Shapes: ``source``/``target`` (E,) int64; ``degree`` (N, 1) float32, the in-degree clamped to >= 1."""

    nodes: int
    source: Tensor
    target: Tensor
    degree: Tensor

    @classmethod
    def of(cls, edge_index: Tensor, nodes: int) -> Adjacency:
        # Normal tensors even when first met in ``decide``: a kept inference tensor could not be saved for
        # backward when the same graph is trained on later (``teacher``, ``training``).
        with torch.inference_mode(False):
            source, target = edge_index[0].clone(), edge_index[1].clone()
            degree = torch.bincount(target, minlength=nodes).clamp_min(1).to(torch.float32).unsqueeze(1)
        return cls(nodes, source, target, degree)


ADJACENCIES_KEPT = 16  # graphs whose adjacency is kept (one per run being decided)


class _MessagePassing(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.message = nn.Linear(hidden, hidden)
        self.update = nn.Linear(3 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, adjacency: Adjacency, scatter: ScatterBackend) -> Tensor:
        # The submodules' functions on their parameters (_linear, F.layer_norm): the same arithmetic without a
        # module call per sublayer, which at these sizes costs as much as the small ops themselves.
        messages = torch.relu(_linear(self.message, h)).index_select(0, adjacency.source)
        n = adjacency.nodes
        mean = scatter.sum(messages, adjacency.target, n).div_(adjacency.degree.to(messages.dtype))
        aggregated = torch.cat([h, mean, scatter.max(messages, adjacency.target, n)], dim=1)
        norm = self.norm
        return F.layer_norm(h + torch.relu(_linear(self.update, aggregated)), norm.normalized_shape, norm.weight,
                            norm.bias, norm.eps)


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    return F.linear(x, layer.weight, layer.bias)


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
        self._adjacencies: dict[tuple, tuple[Tensor, Adjacency]] = {}

    def adjacency(self, edge_index: Tensor, nodes: int) -> Adjacency:
        """The graph's ``Adjacency``, kept for the latest few ``edge_index`` tensors (by identity: Tamiyo
        never changes one in place once built)."""
        key = (id(edge_index), nodes, edge_index.device)
        cached = self._adjacencies.get(key)
        if cached is not None and cached[0] is edge_index:
            return cached[1]
        adjacency = Adjacency.of(edge_index, nodes)
        self._adjacencies[key] = (edge_index, adjacency)
        while len(self._adjacencies) > ADJACENCIES_KEPT:
            self._adjacencies.pop(next(iter(self._adjacencies)))
        return adjacency

    def forward(self, x: Tensor, edge_index: Tensor) -> PolicyOutput:
        adjacency = self.adjacency(edge_index, x.shape[0])
        first, _, second = self.encoder  # Linear, ReLU, Linear
        assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
        h = _linear(second, torch.relu(_linear(first, x)))
        for layer in self.layers:
            h = layer(h, adjacency, self.scatter)
        if h.shape[0]:
            readout = torch.cat([h.mean(dim=0), h.amax(dim=0)])
        else:  # no node: the empty mean and max are 0, as a scatter over no row gives
            readout = h.new_zeros(2 * self.hidden)
        return PolicyOutput(
            adapt_probability=torch.sigmoid(_linear(self.adapt_head, readout))[0],
            node_scores=_linear(self.node_head, h).squeeze(1),
            blueprint_probabilities=torch.softmax(_linear(self.blueprint_head, readout), dim=0),
            urgency=torch.sigmoid(_linear(self.urgency_head, readout))[0],
            value=_linear(self.value_head, readout)[0],
        )

    def decide(self, x: Tensor, edge_index: Tensor) -> PolicyOutput:
        """Inference: eval mode, no autograd, deterministic."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            with torch.inference_mode():
                return self(x, edge_index)
        finally:
            if was_training:
                self.train()

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
