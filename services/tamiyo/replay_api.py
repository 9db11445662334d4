"""Tamiyo's public replay API: what a policy would have decided over a recorded run.

Nissa's counterfactual replay is its only caller and imports it lazily (inside the function that needs it), so a
replay without ``--policy`` never loads torch. Pure of Kafka: the caller hands over the raw Avro records of the
run's input topics and of the catalogue topics (``{registry topic name: [(partition, offset, value bytes)] in log
order}``), read from the log or the archive; they are decoded with the codec (exact writer schemas), folded into a
``RecordedRun`` and a Urza ``CatalogHistory``, and ``replay_decisions`` decides epoch by epoch, each with the
catalogue as of the positions the run's decision of that epoch recorded. Nothing is sent anywhere.
"""

from __future__ import annotations

from contracts import AdaptationDecision
from services.core.errors import DecodeError
from services.oona.codec import Codec
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import Decider
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.policy_store import PolicyRecord, load_policy
from services.tamiyo.recorded import RUN_TOPICS, RecordedRun, recorded_positions, replay_decisions
from services.tamiyo.service import CatalogChooser
from services.urza.catalog import CATALOG_TOPICS
from services.urza.catalog_as_of import CatalogHistory, CatalogRecord

# What a counterfactual replay needs besides the run's own events.
NEEDED_TOPICS: tuple[str, ...] = tuple(t.value for t in (*RUN_TOPICS, *CATALOG_TOPICS))

LoadedPolicy = tuple[TamiyoPolicy, PolicyRecord]
# What the caller keeps of each record: (partition, offset, value bytes).
KeptRecord = tuple[int, int, bytes]
__all__ = ["NEEDED_TOPICS", "KeptRecord", "LoadedPolicy", "counterfactual_decisions", "load_policy"]


def _decoded(codec: Codec, name: str, records: list[KeptRecord]) -> list[CatalogRecord]:
    """The records decoded (payload None for one that does not decode: dead-lettered by the services that
    consumed it, the sink recorded it; its position still counts)."""
    spec = topic_spec(name)
    decoded = []
    for partition, offset, value in records:
        try:
            payload = codec.decode(spec, value).payload
        except DecodeError:
            payload = None
        decoded.append(CatalogRecord(name, partition, offset, payload))
    return decoded


def recorded_run(run_id: str, values: dict[str, list[KeptRecord]], codec: Codec) -> RecordedRun:
    """The run's events on Tamiyo's topics as a RecordedRun (payloads in the order given)."""
    return RecordedRun(run_id, {t.value: [r.payload for r in _decoded(codec, t.value, values.get(t.value, []))
                                          if r.payload is not None] for t in RUN_TOPICS})


def catalog_history(values: dict[str, list[KeptRecord]], codec: Codec) -> CatalogHistory:
    """Urza's catalogue topics' records, to rebuild the catalogue as of any positions."""
    return CatalogHistory(r for t in CATALOG_TOPICS for r in _decoded(codec, t.value, values.get(t.value, [])))


def counterfactual_decisions(run_id: str, values: dict[str, list[KeptRecord]], codec: Codec,
                             loaded: LoadedPolicy) -> tuple[str, list[AdaptationDecision], int]:
    """(policy version, what the policy decides over the run, how many epochs were decided with the catalogue
    the run's decision of that epoch recorded; the others, recorded before AdaptationDecision v3, with the whole
    catalogue)."""
    policy, record = loaded
    history = catalog_history(values, codec)
    decider = Decider(policy, record.version, CatalogChooser(history.whole()))
    recorded = recorded_run(run_id, values, codec)
    decisions = replay_decisions(recorded, decider, (history, CatalogChooser))
    as_of = set(recorded_positions(recorded))
    return record.version, decisions, len({d.epoch for d in decisions} & as_of)
