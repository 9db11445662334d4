"""Policy versions as events (no broker): the registry of versions, the promotion fold, bad artifacts refused
with a reason, and each run's own version."""

from __future__ import annotations

import hashlib
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from contracts import PolicyPromoted, PolicyPublished, TrainingSessionEvent
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import FAMILIES, record
from services.tamiyo.features import FEATURES
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.policy_registry import PolicyRegistry, policy_of, published_record
from services.tamiyo.policy_store import INITIAL_POLICY, PolicyError, PolicyRecord, load_policy
from tests.samples import payload_for
from tests.tamiyo_events import plateau_run
from tests.unit.test_tamiyo_decisions import fold_all

SHIPPED = load_policy(INITIAL_POLICY)


def new_policy(seed: int, hidden: int = 8, layers: int = 1) -> tuple[TamiyoPolicy, PolicyRecord]:
    torch.manual_seed(seed)
    policy = TamiyoPolicy(len(FEATURES), hidden=hidden, layers=layers, blueprints=len(FAMILIES))
    meta = PolicyRecord(version=policy.version(), hidden=hidden, layers=layers, features=list(FEATURES),
                        families=list(FAMILIES), created_at="2026-01-01T00:00:00+00:00", trained_on=f"seed {seed}")
    return policy, meta


def published(seed: int, **kw) -> PolicyPublished:
    return published_record(*new_policy(seed, **kw))


def with_artifact(record: PolicyPublished, artifact: bytes) -> PolicyPublished:
    """The record carrying other bytes, its checksum theirs (so the checks behind the checksum are reached)."""
    return record.model_copy(update={"artifact": artifact, "checksum": hashlib.sha256(artifact).hexdigest()})


def payload_for_decision(epoch: int, version: str):
    sample = payload_for(topic_spec("control.tamiyo.decisions"))
    return sample.model_copy(update={"epoch": epoch, "policy_version": version, "command_id": None, "action": None})


def registry() -> PolicyRegistry:
    return PolicyRegistry(*SHIPPED)


def test_a_published_version_is_known_and_loads_as_the_very_weights():
    reg, policy_record = registry(), published(1)
    assert reg.why_not(policy_record.version) is not None
    assert reg.publish(policy_record) is None
    assert reg.why_not(policy_record.version) is None
    assert reg.policy(policy_record.version).version() == policy_record.version
    assert reg.publish(policy_record) is None and len(reg.versions) == 2  # the same weights again: nothing new
    assert reg.policy(SHIPPED[1].version) is SHIPPED[0]  # the shipped policy is known without the topic


def test_promotion_folds_in_log_order_and_defaults_to_the_shipped_policy():
    reg, a, b = registry(), published(1), published(2)
    assert reg.promoted == SHIPPED[1].version
    reg.publish(a)
    reg.publish(b)
    for version in (a.version, b.version, a.version):
        reg.promote(PolicyPromoted(version=version))
    assert reg.promoted == a.version
    reg.promote(PolicyPromoted(version="gnn-00000000000f"))  # not (yet) published: promoted, and says why it cannot
    assert reg.promoted == "gnn-00000000000f"
    assert "not on library.policies" in (reg.why_not(reg.promoted) or "")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["gnn-00000000000a", "gnn-00000000000b", "gnn-00000000000c"]), min_size=1,
                max_size=12))
def test_the_promoted_version_survives_compaction(versions):
    """Compaction keeps the latest record of each key (the version), in log order: the fold gives the same."""
    log = [PolicyPromoted(version=v) for v in versions]
    compacted = [p for i, p in enumerate(log) if all(q.version != p.version for q in log[i + 1:])]
    whole, kept = registry(), registry()
    for p in log:
        whole.promote(p)
    for p in compacted:
        kept.promote(p)
    assert whole.promoted == kept.promoted == versions[-1]


def _state(policy: TamiyoPolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in policy.state_dict().items()}


def bad_artifacts() -> list[tuple[str, PolicyPublished, str]]:
    good = published(3)
    policy, _ = new_policy(3)
    wider = _state(new_policy(4, hidden=16)[0])
    fewer = _state(policy)
    fewer.pop(next(iter(fewer)))
    nan = _state(policy)
    nan[next(iter(nan))][0] = float("nan")
    doubled = {k: v.double() for k, v in _state(policy).items()}
    return [
        ("checksum", good.model_copy(update={"checksum": "0" * 64}), "sha256"),
        ("garbage", with_artifact(good, b"\x00" * 40), "corrupt weights"),
        ("truncated", with_artifact(good, good.artifact[:200]), "corrupt weights"),
        ("other shapes", with_artifact(good, save(wider)), "declared architecture"),
        ("a tensor missing", with_artifact(good, save(fewer)), "missing"),
        ("float64", with_artifact(good, save(doubled)), "declared architecture"),
        ("not finite", with_artifact(good, save(nan)), "non-finite"),
        ("another version's weights", with_artifact(good, published(5).artifact), "weights hash to"),
        ("other features", good.model_copy(update={"features": ["x"]}), "other features"),
        ("declared deeper", good.model_copy(update={"layers": 2}), "declared architecture"),
    ]


@pytest.mark.parametrize("label, bad, reason", bad_artifacts(), ids=[b[0] for b in bad_artifacts()])
def test_a_bad_artifact_is_refused_with_its_reason_and_the_registry_goes_on(label, bad, reason):
    reg = registry()
    problem = reg.publish(bad)
    assert problem is not None and reason in problem and "\n" not in problem, problem
    assert bad.version in reg.refused and reason in (reg.why_not(bad.version) or "")
    with pytest.raises(PolicyError, match="refused"):
        reg.policy(bad.version)
    assert reg.publish(published(6)) is None  # the next record is folded as usual


def test_a_refused_record_never_replaces_a_believed_version():
    reg, good = registry(), published(7)
    reg.publish(good)
    assert reg.publish(with_artifact(good, b"\x00" * 40)) is None  # its version is known: the same weights, ignored
    assert reg.policy(good.version).version() == good.version


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_loading_any_bytes_gives_a_policy_or_a_reason(data):
    """The artifact parser is total: mutated safetensors bytes give the policy or PolicyError, nothing else."""
    good = published(8)
    artifact = bytearray(good.artifact)
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    for _ in range(data.draw(st.integers(1, 6))):
        kind = rng.choice(("flip", "cut", "extend", "header"))
        if kind == "flip" and artifact:
            artifact[rng.randrange(len(artifact))] ^= 1 << rng.randrange(8)
        elif kind == "cut":
            del artifact[rng.randrange(len(artifact) + 1):]
        elif kind == "extend":
            artifact += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif len(artifact) >= 8:  # the header's length: anything from 0 to 2^64 - 1
            artifact[:8] = rng.choice((0, 1, 2**31, 2**63 - 1, 2**64 - 1, rng.randrange(2**64))).to_bytes(8, "little")
    try:
        policy = policy_of(with_artifact(good, bytes(artifact)))
    except PolicyError as exc:
        assert "\n" not in str(exc)
    else:
        assert policy.version() == good.version


def test_each_run_is_decided_by_its_own_version():
    """The session's version; else the version of its first decision (kept when another is promoted later)."""
    events = plateau_run(epochs=1)
    session = next(payload for topic, payload in events if isinstance(payload, TrainingSessionEvent))
    named = fold_all([(topic, payload.model_copy(update={"policy_version": "gnn-00000000000a"})
                       if payload is session else payload) for topic, payload in events])
    assert named.policy_version == "gnn-00000000000a"
    unnamed = fold_all(events)
    assert unnamed.policy_version is None  # decided by the promoted one, which its first decision then pins
    decision = payload_for_decision(epoch=0, version="gnn-00000000000b")
    record(unnamed, decision)
    record(unnamed, payload_for_decision(epoch=1, version="gnn-00000000000c"))
    assert unnamed.policy_version == "gnn-00000000000b"
    record(named, decision)
    assert named.policy_version == "gnn-00000000000a"

