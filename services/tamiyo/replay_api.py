"""Tamiyo's public replay API: what a policy would have decided over a recorded run.

Nissa's counterfactual replay is its only caller and imports it lazily (inside the function that needs it), so a
replay without ``--policy`` never loads torch. Pure of Kafka: the caller hands over the raw Avro values of the
run's input topics and of the catalogue topics (``{registry topic name: [value bytes in log order]}``), read from
the log or the archive; they are decoded with the codec (exact writer schemas), folded into a ``RecordedRun`` and
a Urza ``Catalog``, and ``replay_decisions`` decides epoch by epoch. Nothing is sent anywhere.
"""

from __future__ import annotations

from contracts import AdaptationDecision
from services.core.errors import DecodeError
from services.oona.codec import Codec
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import Decider
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.policy_store import PolicyRecord, load_policy
from services.tamiyo.recorded import RUN_TOPICS, RecordedRun, replay_decisions
from services.tamiyo.service import CatalogChooser
from services.urza.catalog import CATALOG_TOPICS, Catalog

# What a counterfactual replay needs besides the run's own events.
NEEDED_TOPICS: tuple[str, ...] = tuple(t.value for t in (*RUN_TOPICS, *CATALOG_TOPICS))

LoadedPolicy = tuple[TamiyoPolicy, PolicyRecord]
__all__ = ["NEEDED_TOPICS", "LoadedPolicy", "counterfactual_decisions", "load_policy"]


def _decoded(codec: Codec, name: str, values: list[bytes]) -> list:
    spec = topic_spec(name)
    payloads = []
    for value in values:
        try:
            payloads.append(codec.decode(spec, value).payload)
        except DecodeError:
            continue  # dead-lettered by the services that consumed it; the sink recorded it
    return payloads


def recorded_run(run_id: str, values: dict[str, list[bytes]], codec: Codec) -> RecordedRun:
    """The run's events on Tamiyo's topics as a RecordedRun (payloads in the order given)."""
    return RecordedRun(run_id, {t.value: _decoded(codec, t.value, values.get(t.value, [])) for t in RUN_TOPICS})


def catalog_of(values: dict[str, list[bytes]], codec: Codec) -> Catalog:
    """Urza's catalogue from the catalogue topics' values (each topic in order, as ``load_catalog``)."""
    catalog = Catalog()
    for topic in CATALOG_TOPICS:
        for payload in _decoded(codec, topic.value, values.get(topic.value, [])):
            catalog.apply(topic.value, payload)
    return catalog


def counterfactual_decisions(run_id: str, values: dict[str, list[bytes]], codec: Codec,
                             loaded: LoadedPolicy) -> tuple[str, list[AdaptationDecision]]:
    """(policy version, what the policy decides over the run)."""
    policy, record = loaded
    decider = Decider(policy, record.version, CatalogChooser(catalog_of(values, codec)))
    return record.version, replay_decisions(recorded_run(run_id, values, codec), decider)
