"""The poison soak's corpus: on every topic, good events with a bad record between each pair.

Pure data (no Kafka): each ``Record`` says what it is, where it goes, its bytes, and which consuming
services must dead-letter it. Bad records are made from valid encodings by the project's own encoder
(contract bounds bypassed with ``model_copy``, which does not validate) or by editing their bytes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from contracts import (
    BlueprintOp,
    BlueprintSubmitted,
    CompilationOutcome,
    CompiledKernel,
    EpochCompleted,
    KernelReady,
    OpSpec,
    PolicyPublished,
    SystemStatePacket,
    TopicName,
    TrainingSessionEvent,
)
from services.oona.avro.encoder import encode_long
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import TopicSpec, avro_topics, topic_spec
from tests.samples import T0, blueprint, health_signal, message_for, payload_for, training_session

# The consumer groups that decode each topic and dead-letter what they cannot read (besides Nissa,
# which reads every topic and records its own failures in `dead_letters` with origin 'nissa').
SERVICE_GROUPS: dict[str, tuple[str, ...]] = {
    TopicName.TRAINING_SESSIONS.value: ("tamiyo",),
    TopicName.TELEMETRY_SEED_HEALTH.value: ("tamiyo",),
    TopicName.SYSTEM_EVENTS_EPOCH.value: ("tamiyo",),
    TopicName.LIFECYCLE_SEED_TRANSITIONS.value: ("tamiyo",),
    TopicName.INNOVATION_FIELD_REPORTS.value: ("tamiyo", "karn"),
    TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value: ("tezzeret",),
    TopicName.COMPILATION_KERNEL_READY.value: ("urabrask",),
}
NISSA = "nissa"

# 2^63 - 1 as an unsigned varint: the length that wrapped Nissa's columnar decoder negative.
HUGE_LENGTH = bytes.fromhex("feffffffffffffffff01")
# A 10-byte varint whose value needs 70 bits (above 2^64): no Avro long can hold it.
OVER_64_BITS = bytes.fromhex("ffffffffffffffffff7f")


@dataclass(frozen=True)
class Record:
    label: str
    topic: str
    key: bytes | None
    value: bytes | None
    good: bool
    event_id: str | None = None  # a good record's id, which Nissa must hold
    # Who must dead-letter a bad record: Nissa and these consumer groups.
    groups: tuple[str, ...] = field(default=())


def _groups(topic: str, structural: bool = True) -> tuple[str, ...]:
    """Nissa and every service group of ``topic`` (``structural``), or Nissa alone."""
    return (NISSA, *SERVICE_GROUPS.get(topic, ())) if structural else (NISSA,)


class CorpusBuilder:
    """Builds one soak's records; ``marker`` makes its ids, keys and run ids unique."""

    def __init__(self, marker: str, genuine_kernel: CompiledKernel, seed: int = 11) -> None:
        """``genuine_kernel``: a kernel really compiled from a blueprint, so that content addresses check."""
        self.marker = marker
        self.run_id = f"soak-{marker}"
        self.codec = SingleObjectCodec()
        self.rng = random.Random(seed)
        self.records: list[Record] = []
        self._serial = 0
        # Where the samples would cost a service real work or be refused for a reason other than the
        # one under test: a failed compilation (Urabrask ignores it instead of waiting for a kernel),
        # a kernel whose id and checksum are its artifact's.
        self.good_payloads = {
            TopicName.COMPILATION_KERNEL_READY.value: KernelReady(
                blueprint_id="bp-" + hashlib.sha256(marker.encode()).hexdigest()[:32],
                outcome=CompilationOutcome.FAILED,
                failure_reason="soak",
            ),
            TopicName.LIBRARY_KERNELS.value: genuine_kernel,
            # A policy version Tamiyo believes (the sample's artifact is no policy: Tamiyo would refuse it).
            TopicName.LIBRARY_POLICIES.value: genuine_policy(),
        }

    # -- helpers ------------------------------------------------------------------------------------
    def random_bytes(self, n: int) -> bytes:
        return bytes(self.rng.randrange(256) for _ in range(n))

    def key_of(self, spec: TopicSpec) -> bytes:
        # One key per topic: every record of a topic lands on one partition, in the order produced.
        return (self.run_id if spec.run_scoped else f"soak-{self.marker}-{spec.key}").encode()

    def good_message(self, spec: TopicSpec, run_id: str | None = None, payload=None):
        self._serial += 1
        message = message_for(spec, run_id=run_id or self.run_id, event_id=f"soak-{self.marker}-{self._serial}",
                              timestamp=T0)
        payload = payload if payload is not None else self.good_payloads.get(spec.name)
        return message if payload is None else message.model_copy(update={"payload": payload})

    def good(self, spec: TopicSpec, label: str = "good", payload=None) -> Record:
        message = self.good_message(spec, payload=payload)
        record = Record(label, spec.name, self.key_of(spec), self.codec.encode(spec, message), True, message.event_id)
        self.records.append(record)
        return record

    def bad(self, spec: TopicSpec, label: str, value: bytes | None, groups: tuple[str, ...] | None = None,
            key: bytes | None = None) -> Record:
        record = Record(label, spec.name, key or self.key_of(spec), value, False,
                        groups=groups if groups is not None else _groups(spec.name))
        self.records.append(record)
        return record

    def encoded_bad(self, spec: TopicSpec, payload) -> bytes:
        """A bad payload in a valid envelope, encoded without validation."""
        return self.codec.encode(spec, self.good_message(spec).model_copy(update={"payload": payload}))

    # -- the corpus -----------------------------------------------------------------------------------
    def build(self) -> list[Record]:
        sessions = topic_spec(TopicName.TRAINING_SESSIONS.value)
        # The soak's run is announced first, so its telemetry is not held back as orphans.
        self.good(sessions, "session of the soak run")
        for spec in avro_topics():
            self.topic_corpus(spec)
        dlq = topic_spec(TopicName.DLQ.value)
        self.bad(dlq, "bytes without esper.dlq headers on the DLQ", b"not a dead letter " + self.marker.encode(),
                 groups=("dlq-row",))
        return self.records

    def topic_corpus(self, spec: TopicSpec) -> None:
        valid = self.codec.encode(spec, self.good_message(spec))
        bads: list[tuple[str, bytes | None, tuple[str, ...]]] = [
            ("truncated body", valid[: 10 + (len(valid) - 10) // 2], _groups(spec.name)),
            ("random bytes", self.random_bytes(48), _groups(spec.name)),
            ("random bytes behind a valid header", valid[:10] + self.random_bytes(40), _groups(spec.name)),
            ("tombstone", None, _groups(spec.name)),
            ("unknown fingerprint", valid[:2] + bytes.fromhex("0123456789abcdef") + valid[10:], _groups(spec.name)),
            ("first string length 2^63-1", valid[:10] + HUGE_LENGTH + valid[11:], _groups(spec.name)),
            ("10-byte varint above 2^64 as the timestamp", _overflow_timestamp(valid), _groups(spec.name)),
        ]
        bads += self.semantic_bads(spec)
        first = self.good(spec, "good (before)")
        for label, value, groups in bads:
            self.bad(spec, label, value, groups)
            self.good(spec, f"good (after {label})")
        # An event id seen before with other content: a conflict (dead-lettered by Nissa and by Tamiyo,
        # the one service that dedupes by event id; the other services key their idempotence otherwise).
        # Other content means another payload: the envelope (sender, timestamp, trace) says how an event
        # was sent, and a re-emission with a new one is a duplicate for every consumer.
        message = self.good_message(spec)
        conflict = message.model_copy(update={"event_id": first.event_id, "sender_id": "impostor",
                                              "payload": other_content(message.payload)})
        conflict_groups = (NISSA, "tamiyo") if "tamiyo" in SERVICE_GROUPS.get(spec.name, ()) else (NISSA,)
        self.bad(spec, "event id reused with other content", self.codec.encode(spec, conflict), conflict_groups)
        self.good(spec, "good (after the conflict)")

    def semantic_bads(self, spec: TopicSpec) -> list[tuple[str, bytes | None, tuple[str, ...]]]:
        """Records that decode but break the contract: every reader must reject them alike."""
        name = spec.name
        payloads: list[tuple[str, object]] = []
        if name == TopicName.TELEMETRY_SEED_HEALTH.value:
            h = health_signal()
            payloads = [("NaN dead_neuron_ratio", h.model_copy(update={"dead_neuron_ratio": float("nan")})),
                        ("dead_neuron_ratio 7.0", h.model_copy(update={"dead_neuron_ratio": 7.0})),
                        ("negative epoch", h.model_copy(update={"epoch": -3}))]
        elif name == TopicName.SYSTEM_EVENTS_EPOCH.value:
            epoch = payload_for(spec)
            state = epoch.state.model_copy(update={"epoch": -1})
            payloads = [("negative epoch", epoch.model_copy(update={"state": state}))]
        elif name == TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value:
            payloads = [(label, _submission(arch_update)) for label, arch_update in OUT_OF_BOUNDS_BLUEPRINTS]
        elif name == TopicName.LIBRARY_KERNELS.value:
            # Never loaded here: on code that trusts the reference, a load of blob:/dev/zero reads until the
            # machine runs out of memory. The record itself must be refused at the door (the contract).
            kernel = self.good_payloads[name]
            payloads = [(f"binary_ref {ref}", kernel.model_copy(update={"binary_ref": ref, "artifact": None}))
                        for ref in ("blob:/dev/zero", "blob:/etc/passwd")]
        return [(label, self.encoded_bad(spec, payload), _groups(name)) for label, payload in payloads]

    def empty_target_layers_run(self) -> list[Record]:
        """A run whose session declares no target layers and no seeds (the run config accepts it),
        then a complete epoch 0: Tamiyo must decide (a no-op) without falling over. Valid events."""
        run_id = f"soak-empty-{self.marker}"
        sessions = topic_spec(TopicName.TRAINING_SESSIONS.value)
        epochs = topic_spec(TopicName.SYSTEM_EVENTS_EPOCH.value)
        session = training_session()
        model = session.training_model_config.model_copy(update={"target_layers": [], "seeds_per_layer": 0})
        session = session.model_copy(update={"session_id": run_id, "training_model_config": model, "seeds": []})
        out = []
        for spec, payload in ((sessions, TrainingSessionEvent(session=session)),
                              (epochs, _epoch_zero())):
            self._serial += 1
            message = message_for(spec, run_id=run_id, event_id=f"soak-{self.marker}-{self._serial}").model_copy(
                update={"payload": payload})
            out.append(Record(f"{spec.name}: run with target_layers []", spec.name, run_id.encode(),
                              self.codec.encode(spec, message), True, message.event_id))
        self.records.extend(out)
        return out


def genuine_policy() -> PolicyPublished:
    """A small policy's ``library.policies`` record, every check of Tamiyo's passing."""
    from services.tamiyo.decider import FAMILIES
    from services.tamiyo.features import FEATURES
    from services.tamiyo.policy import TamiyoPolicy
    from services.tamiyo.policy_registry import published_record
    from services.tamiyo.policy_store import PolicyRecord

    policy = TamiyoPolicy(len(FEATURES), hidden=4, layers=1, blueprints=len(FAMILIES))
    return published_record(policy, PolicyRecord(
        version=policy.version(), hidden=4, layers=1, features=list(FEATURES), families=list(FAMILIES),
        created_at=T0.isoformat(), trained_on="poison soak"))


def _epoch_zero() -> EpochCompleted:
    return EpochCompleted(
        state=SystemStatePacket(epoch=0, total_seeds=0, active_seeds=0, training_loss=1.0, validation_loss=1.0,
                                system_load=0.1, memory_usage=0.1, timestamp=T0),
        train_accuracy=0.5, validation_accuracy=0.5, epoch_seconds=1.0, parameter_count=10)


def _overflow_timestamp(valid: bytes) -> bytes:
    """``valid`` (encoded with timestamp T0) with the envelope's timestamp varint widened past 64 bits."""
    micros = int(T0.timestamp()) * 1_000_000 + T0.microsecond
    encoded = encode_long(micros)
    at = valid.index(encoded, 10)
    return valid[:at] + OVER_64_BITS + valid[at + len(encoded):]


# Architectures no compiler should try to build: (label, fields of BlueprintArchitecture replaced).
OUT_OF_BOUNDS_BLUEPRINTS: list[tuple[str, dict]] = [
    ("blueprint with a negative dimension", {"input_shape": [-4], "output_shape": [-4],
                                            "layers": [OpSpec(op=BlueprintOp.RELU)]}),
    ("blueprint of shape [1, 1000000, 1000000]", {"input_shape": [1, 1_000_000, 1_000_000],
                                                  "output_shape": [1, 1_000_000, 1_000_000],
                                                  "layers": [OpSpec(op=BlueprintOp.RELU)]}),
    ("blueprint with 600 residual ops", {"layers": [OpSpec(op=BlueprintOp.RELU)] +
                                         [OpSpec(op=BlueprintOp.RESIDUAL)] * 600}),
]


def _submission(arch_update: dict) -> BlueprintSubmitted:
    base = blueprint()
    arch = base.architecture.model_copy(update=arch_update)
    bp = base.model_copy(update={"architecture": arch, "blueprint_id": "bp-" + arch.content_hash()[:32]})
    return BlueprintSubmitted.model_construct(blueprint_id=bp.blueprint_id, submitted_by="soak", blueprint=bp)


def other_content(payload: BaseModel) -> BaseModel:
    """A valid payload of the same type that differs from ``payload`` in one leaf (a float halved or
    moved, else a string extended): the first change the contract accepts."""
    data = payload.model_dump(mode="python")

    def leaves(node: Any, path: tuple = ()):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, path + (key,))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from leaves(value, path + (i,))
        else:
            yield path, node

    def replaced(node: Any, path: tuple, value: Any) -> Any:
        if not path:
            return value
        copy = dict(node) if isinstance(node, dict) else list(node)
        copy[path[0]] = replaced(node[path[0]], path[1:], value)
        return copy

    floats = [(p, v) for p, v in leaves(data) if isinstance(v, float)]
    strings = [(p, v) for p, v in leaves(data) if isinstance(v, str)]
    candidates = [(p, new) for p, v in floats for new in (v / 2, v + 0.25, v - 0.25) if new != v]
    candidates += [(p, v + "-other") for p, v in strings]
    for path, value in candidates:
        try:
            return type(payload).model_validate(replaced(data, path, value))
        except ValidationError:
            continue
    raise AssertionError(f"no valid other content for {type(payload).__name__}")
