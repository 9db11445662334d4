"""AdaptationDecision events as schema v1 wrote them: the command link in ``metadata`` (before v2's typed fields)."""

from __future__ import annotations

import io

import fastavro

from contracts import AdaptationDecision, AdaptationType, OonaMessage
from services.core.paths import SCHEMAS_DIR
from services.oona.avro.framing import SINGLE_OBJECT_MAGIC
from services.oona.codec import message_to_record
from services.oona.schema_store import history_versions, schema_fingerprint
from services.oona.topic_registry import TopicSpec

RECORD = "AdaptationDecisionMessage"
TYPED = ("command_id", "action", "family")


def v1_schema() -> dict:
    return dict(history_versions(SCHEMAS_DIR, RECORD))[1]


def v1_decision_bytes(spec: TopicSpec, *, decision_id: str, epoch: int, metadata: dict[str, str],
                      adaptation_type: AdaptationType = AdaptationType.ADD_SEED, run_id: str = "run-old",
                      layer_id: int | None = 7, seed_idx: int | None = 0, kernel_id: str | None = "k-1") -> bytes:
    """One decision event framed with the v1 writer schema, its metadata exactly as given."""
    decision = AdaptationDecision(decision_id=decision_id, layer_name="body.0", adaptation_type=adaptation_type,
                                  confidence=1.0, urgency=0.5, epoch=epoch, layer_id=layer_id, seed_idx=seed_idx,
                                  kernel_id=kernel_id, policy_version="v-old")
    message = OonaMessage[AdaptationDecision](event_id=f"ev-{decision_id}", sender_id="tamiyo-old", topic=spec.name,
                                              run_id=run_id, payload=decision)
    record = message_to_record(message)
    record["payload"] = {k: v for k, v in record["payload"].items() if k not in TYPED} | {"metadata": dict(metadata)}
    schema = v1_schema()
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), record)
    return SINGLE_OBJECT_MAGIC + schema_fingerprint(schema) + body.getvalue()
