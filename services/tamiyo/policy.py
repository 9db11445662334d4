"""Tamiyo's GNN policy in plain torch: message passing over a model graph, several decision heads.

Shapes:
    x:          (N, F) node features (one node per layer / seed slot)
    edge_index: (2, E) int64, row 0 = source node, row 1 = target node (data flow)
    outputs:    adapt_probability (), node_scores (N,), blueprint_probabilities (B,), urgency (), value ()

The mean of the messages reaching each node is one product by the graph's normalised adjacency (sparse
CSR, built once per graph: row t holds 1 / in-degree(t) at each of t's sources), so no (E, H) gather and
scatter is made for it; the max goes through a ``ScatterBackend``, so native torch and torch-scatter are
interchangeable. The readout (mean + max over all nodes of the one graph) is a plain reduction.
Measured at 1,000 nodes / 2,937 edges, hidden 32, one thread: the sparse product 20 µs against 70-80 µs
for the gather, ``index_add_`` and scale it replaces, per layer.

Latency: what depends only on the graph's edges (the source and target rows, the normalised adjacency)
is computed once per ``edge_index`` and kept (``Adjacency``; Tamiyo builds one ``edge_index`` per
session and topology, see ``features``), so a decision's forward is the layers' own work. The weights
are arranged for few, larger products (``_Weights``: per layer the message and the update's h part in
one product; the four readout heads in one) and kept between decisions while the parameters do not
change; the state dict keeps the modules' layout, so weights files and policy versions are unchanged.
The forward is the same arithmetic as the plain modules' up to float32 summation order (a test keeps
that version as its reference).
The threads torch uses are set once by the service (``INFERENCE_THREADS``, with the reasons).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import cast

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

    Shapes: ``source``/``target`` (E,) int64 (the max's gather and scatter); ``mean`` (N, N) sparse CSR
    float32, row t holding 1 / in-degree(t) at the source of each of t's in-edges (summed over repeated
    edges), so that the mean of the messages reaching every node is one sparse product of the nodes'
    messages: no (E, H) gather and scatter for it. A node without in-edges has an empty row (mean 0)."""

    nodes: int
    source: Tensor
    target: Tensor
    mean: Tensor

    @classmethod
    def of(cls, edge_index: Tensor, nodes: int, dtype: torch.dtype = torch.float32) -> Adjacency:
        # Normal tensors even when first met in ``decide``: a kept inference tensor could not be saved for
        # backward when the same graph is trained on later (``teacher``, ``training``).
        with torch.inference_mode(False):
            source, target = edge_index[0].clone(), edge_index[1].clone()
            degree = torch.bincount(target, minlength=nodes).clamp_min(1).to(dtype)
            weights = degree.reciprocal()[target]
            with warnings.catch_warnings():  # CSR's layout is "beta" to torch; the product used here is long in use
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
                # coalesced: the edges sorted by (target, source), a repeated edge's weights summed
                coalesced = torch.sparse_coo_tensor(torch.stack([target, source]), weights, (nodes, nodes),
                                                    check_invariants=True).coalesce().to_sparse_csr()
                # int32 indices, as MKL's sparse product takes them (int64 ones are converted at every product)
                mean = torch.sparse_csr_tensor(coalesced.crow_indices().int(), coalesced.col_indices().int(),
                                               coalesced.values(), (nodes, nodes), check_invariants=True)
        return cls(nodes, source, target, mean)


ADJACENCIES_KEPT = 16  # graphs whose adjacency is kept (one per run being decided)


class _MessagePassing(nn.Module):
    """One layer: h' = LayerNorm(h + relu(update([h, mean, max] of relu(message(h)) over in-edges)))."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.message = nn.Linear(hidden, hidden)
        self.update = nn.Linear(3 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)


@dataclass(frozen=True)
class _LayerWeights:
    """A message-passing layer's weights arranged for two matrix products: ``own`` (2H, H) = [message; the
    update's h columns] with ``own_bias`` (2H,), applied to h at once; ``mean``/``max`` (H, H), the update's
    columns for the aggregates."""

    own: Tensor
    own_bias: Tensor
    mean: Tensor
    max: Tensor
    norm: nn.LayerNorm


@dataclass(frozen=True)
class _Weights:
    """The policy's parameters as its forward uses them. The state dict keeps the modules' layout (the
    weights file's format, the version hash); this is derived from it: kept for inference, rebuilt (with
    autograd through the concatenations) for every training forward."""

    key: tuple
    encoder: tuple[Tensor, Tensor, Tensor, Tensor]
    layers: list[_LayerWeights]
    node: tuple[Tensor, Tensor]
    heads: Tensor  # (1 + B + 1 + 1, 2H): adapt, blueprints, urgency, value: one product on the readout
    heads_bias: Tensor


class TamiyoPolicy(nn.Module):
    def __init__(self, in_features: int, hidden: int = 64, layers: int = 3, blueprints: int = 8,
                 scatter: ScatterBackend | None = None) -> None:
        super().__init__()
        self.hidden = hidden
        self.blueprints = blueprints
        self.scatter = scatter or NativeScatter()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList(_MessagePassing(hidden) for _ in range(layers))
        self.adapt_head = nn.Linear(2 * hidden, 1)
        self.node_head = nn.Linear(hidden, 1)
        self.blueprint_head = nn.Linear(2 * hidden, blueprints)
        self.urgency_head = nn.Linear(2 * hidden, 1)
        self.value_head = nn.Linear(2 * hidden, 1)
        self._adjacencies: dict[tuple, tuple[Tensor, Adjacency]] = {}
        self._kept: _Weights | None = None
        self._parameter_list: list[nn.Parameter] | None = None

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``: training starts from a copy) leaves what is kept for inference behind: it
        is derived, rebuilt on demand, and a sparse adjacency cannot be deep-copied."""
        state = self.__dict__.copy()
        state.update(_adjacencies={}, _kept=None, _parameter_list=None)
        return state

    def adjacency(self, edge_index: Tensor, nodes: int, dtype: torch.dtype = torch.float32) -> Adjacency:
        """The graph's ``Adjacency``, kept for the latest few ``edge_index`` tensors (by identity: Tamiyo
        never changes one in place once built)."""
        key = (id(edge_index), nodes, edge_index.device, dtype)
        cached = self._adjacencies.get(key)
        if cached is not None and cached[0] is edge_index:
            return cached[1]
        adjacency = Adjacency.of(edge_index, nodes, dtype)
        self._adjacencies[key] = (edge_index, adjacency)
        while len(self._adjacencies) > ADJACENCIES_KEPT:
            self._adjacencies.pop(next(iter(self._adjacencies)))
        return adjacency

    def _weights(self) -> _Weights:
        """The forward's weights. Kept while no parameter changed (an optimizer step or ``load_state_dict``
        writes them in place, which bumps their version counters);
        rebuilt on every call while autograd records, so that gradients reach the parameters."""
        parameters = self._parameter_list
        if parameters is None:  # the modules' parameters are fixed at construction (loading copies into them)
            parameters = self._parameter_list = list(self.parameters())
        key = tuple((id(p), p._version) for p in parameters)
        recording = torch.is_grad_enabled() and any(p.requires_grad for p in parameters)
        kept = self._kept
        if kept is not None and kept.key == key and not recording:
            return kept
        first, second = cast(nn.Linear, self.encoder[0]), cast(nn.Linear, self.encoder[2])
        hidden = self.hidden
        layers = [_LayerWeights(torch.cat([layer.message.weight, layer.update.weight[:, :hidden]]),
                                torch.cat([layer.message.bias, layer.update.bias]),
                                layer.update.weight[:, hidden:2 * hidden].contiguous(),
                                layer.update.weight[:, 2 * hidden:].contiguous(), layer.norm)
                  for layer in cast(list[_MessagePassing], list(self.layers))]
        heads = (self.adapt_head, self.blueprint_head, self.urgency_head, self.value_head)
        weights = _Weights(key, (first.weight, first.bias, second.weight, second.bias), layers,
                           (self.node_head.weight, self.node_head.bias),
                           torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads]))
        if not recording:
            with torch.inference_mode(False):  # kept across calls: normal tensors, as the adjacencies
                weights = _Weights(key, weights.encoder, [_LayerWeights(w.own.clone(), w.own_bias.clone(), w.mean,
                                                                        w.max, w.norm) for w in weights.layers],
                                   weights.node, weights.heads.clone(), weights.heads_bias.clone())
            self._kept = weights
        return weights

    def forward(self, x: Tensor, edge_index: Tensor) -> PolicyOutput:
        # Functional ops on the arranged weights, in place where autograd allows: at these sizes (a few
        # milliseconds of products on 1,000 x 64) a module call or a fresh buffer per step costs as much as
        # the arithmetic. Per layer: one product for the message and the update's h part, the mean as one sparse
        # product, one gather and the max scatter, two products for the aggregates' part, a layer norm.
        adjacency = self.adjacency(edge_index, x.shape[0], x.dtype)
        w = self._weights()
        hidden, n = self.hidden, adjacency.nodes
        w1, b1, w2, b2 = w.encoder
        h = torch.addmm(b2, torch.relu(torch.addmm(b1, x, w1.t())), w2.t())
        for layer in w.layers:
            own = torch.addmm(layer.own_bias, h, layer.own.t())  # (N, 2H): [message pre-activation | update]
            sent = torch.relu(own[:, :hidden])  # (N, H): what each node sends along each of its out-edges
            mean = torch.sparse.mm(adjacency.mean, sent)
            highest = self.scatter.max(sent.index_select(0, adjacency.source), adjacency.target, n)
            update = torch.addmm(own[:, hidden:], mean, layer.mean.t()).addmm_(highest, layer.max.t())
            norm = layer.norm
            h = F.layer_norm(h + torch.relu(update), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        if h.shape[0]:
            readout = torch.cat([h.mean(dim=0), h.amax(dim=0)])
        else:  # no node: the empty mean and max are 0, as a scatter over no row gives
            readout = h.new_zeros(2 * hidden)
        heads = torch.addmv(w.heads_bias, w.heads, readout)
        blueprints = self.blueprints
        return PolicyOutput(
            adapt_probability=torch.sigmoid(heads[0]),
            node_scores=torch.addmm(w.node[1], h, w.node[0].t()).squeeze(1),
            blueprint_probabilities=torch.softmax(heads[1:1 + blueprints], dim=0),
            urgency=torch.sigmoid(heads[1 + blueprints]),
            value=heads[2 + blueprints],
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
