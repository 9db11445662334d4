"""``esper policy train``: learn a new policy version from recorded runs.

Samples are the germinations Tamiyo decided in those runs: the model graph as it was at
decision time (rebuilt from the log exactly as the service saw it), the slot and blueprint
family chosen, and the outcome from the field report that closed the seed's life:

    reward = counterfactual contribution (validation accuracy with the seed minus without,
             measured by Kasmina's fossilization gate; a culled seed earns CULL_REWARD)
             - PARAMETER_CHARGE * seed parameters / host parameters

(esper-lite's lesson: reward the measured contribution, charge for the parameters added.) ``reward="loss"`` takes
the gate's contribution in validation loss instead (nats the seed removes; the quantity the fossilization gate
itself judges, and far less coarse than accuracy on a few hundred validation points: the learning loop's choice,
with no parameter charge when only accuracy is judged).
Each sample pushes the adapt head toward growing when the reward was positive and away
when negative, and the slot and family heads along the advantage (reward minus the mean);
the value head regresses the reward.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from contracts import CommandAction, FieldReportOutcome, SeedState, TopicName
from services.core.errors import EsperError
from services.oona.codec import Codec
from services.oona.settings import KafkaSettings
from services.tamiyo.decider import FAMILIES, record
from services.tamiyo.features import GraphView, build_graph
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.recorded import RecordedRun, fold_run, load_recorded_runs
from services.urza.catalog import load_catalog

CULL_REWARD = -0.05
PARAMETER_CHARGE = 0.05


@dataclass
class Sample:
    graph: GraphView
    node: int
    family: int
    reward: float


REWARDS = ("accuracy", "loss")


def samples_from_run(recorded: RecordedRun, parameters_of: Callable[[str], int], *, reward: str = "accuracy",
                     parameter_charge: float = PARAMETER_CHARGE) -> list[Sample]:
    run = fold_run(recorded)
    decisions = sorted(recorded.decisions, key=lambda d: d.epoch)
    reports = recorded.of(TopicName.INNOVATION_FIELD_REPORTS)
    host = max(1, run.session.training_model_config.parameter_count) if run.session else 1
    out = []
    for epoch in sorted(run.epochs):
        mine = [d for d in decisions if d.epoch == epoch]
        grows = [d for d in mine if d.action is CommandAction.GERMINATE and d.kernel_id]
        if grows and run.complete(epoch):
            graph = build_graph(run, epoch)
            for d in grows:
                report = next((r for r in reports if (r.layer_id, r.seed_idx, r.kernel_id) ==
                               (d.layer_id, d.seed_idx, d.kernel_id)), None)
                node = next((s.node for s in graph.seeds if (s.layer_id, s.seed_idx) == (d.layer_id, d.seed_idx)
                             and s.state is SeedState.DORMANT), None)
                family, kernel_id = d.family, d.kernel_id  # kernel_id: set on every one of ``grows``
                if report is None or node is None or kernel_id is None or family is None or family not in FAMILIES:
                    continue  # the seed's life did not end in this run, or the record is incomplete
                metric = "contribution" if reward == "accuracy" else "loss_contribution"
                gain = (report.eval_metrics.get(metric, 0.0) if report.outcome is FieldReportOutcome.FOSSILIZED
                        else CULL_REWARD)
                value = gain - parameter_charge * parameters_of(kernel_id) / host
                out.append(Sample(graph, node, FAMILIES.index(family), value))
        for d in mine:
            record(run, d)
    return out


def train_from_runs(settings: KafkaSettings, codec: Codec, start: TamiyoPolicy, run_ids: list[str], *,
                    epochs: int = 10, seed: int = 0, lr: float = 1e-3, reward: str = "accuracy",
                    parameter_charge: float = PARAMETER_CHARGE,
                    progress: Callable[[int, int], None] | None = None) -> tuple[TamiyoPolicy, dict[str, float]]:
    catalog = load_catalog(settings, codec)

    def parameters_of(kernel_id: str) -> int:
        entry = catalog.kernels.get(kernel_id)
        return entry.metadata.parameter_count if entry else 0

    runs = load_recorded_runs(settings, codec, run_ids)
    samples = [s for run_id in run_ids for s in samples_from_run(runs[run_id], parameters_of, reward=reward,
                                                                 parameter_charge=parameter_charge)]
    if not samples:
        raise EsperError(f"nothing to learn from in run(s) {', '.join(run_ids)}: no germination decided by Tamiyo "
                         "ended in a field report")
    policy, metrics = train_on_samples(start, samples, epochs=epochs, seed=seed, lr=lr, progress=progress)
    return policy, metrics


def train_on_samples(start: TamiyoPolicy, samples: list[Sample], *, epochs: int, seed: int = 0, lr: float = 1e-3,
                     progress: Callable[[int, int], None] | None = None) -> tuple[TamiyoPolicy, dict[str, float]]:
    torch.manual_seed(seed)
    policy = copy.deepcopy(start)
    policy.train()
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    baseline = sum(s.reward for s in samples) / len(samples)
    order = list(range(len(samples)))
    rng = random.Random(seed)
    first = last = 0.0
    for epoch in range(epochs):
        rng.shuffle(order)
        total = 0.0
        for i in order:
            loss = sample_loss(policy, samples[i], baseline)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        if epoch == 0:
            first = total / len(samples)
        last = total / len(samples)
        if progress is not None:
            progress(epoch + 1, epochs)
    policy.eval()
    return policy, {"samples": float(len(samples)), "mean_reward": baseline, "loss_first_epoch": first,
                    "loss_last_epoch": last}


def sample_loss(policy: TamiyoPolicy, sample: Sample, baseline: float) -> torch.Tensor:
    out = policy(sample.graph.x, sample.graph.edge_index)
    advantage = sample.reward - baseline
    dormant = [s.node for s in sample.graph.seeds if s.state is SeedState.DORMANT]
    node_logp = torch.log_softmax(out.node_scores[dormant], dim=0)[dormant.index(sample.node)]
    family_logp = torch.log(out.blueprint_probabilities[sample.family] + 1e-9)
    adapt_target = torch.tensor(1.0 if sample.reward > 0 else 0.0)
    adapt = nn.functional.binary_cross_entropy(out.adapt_probability.clamp(1e-6, 1 - 1e-6), adapt_target)
    return adapt - advantage * (node_logp + family_logp) + (out.value - sample.reward) ** 2
