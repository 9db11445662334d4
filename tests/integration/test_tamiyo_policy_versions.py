"""Policy versions as events, on the real broker: two versions published, runs naming different versions are
each decided by their own, a run naming an unknown version is answered with the reason, a bad artifact is
refused while Tamiyo goes on, and a restarted Tamiyo rebuilds the versions and the promoted one from the log."""

from __future__ import annotations

import copy
import hashlib
import uuid

import torch

from contracts import AdaptationType, CommandAction, PolicyPromoted, TopicName
from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.topic_registry import topic_spec
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.policy_registry import PolicyRegistry, published_record
from services.tamiyo.policy_store import INITIAL_POLICY, PolicyRecord, load_policy, save_policy
from services.tamiyo.policy_topics import load_registry, promote_policy, publish_policy
from services.tolaria.config import load_config
from services.tolaria.run import start_run
from tests.esper_cli import error_lines, esper_env, run_esper
from tests.integration.test_tamiyo import EXAMPLE, publish_slot_kernels, run_messages, tamiyo_running
from tests.integration.test_tamiyo_totality import dead_letters, header
from tests.waiting import wait_until


def leaning(adapt_bias: float) -> tuple[TamiyoPolicy, PolicyRecord]:
    """The shipped policy with its adapt head pushed to always (> 0) or never (< 0) grow: a version of its own."""
    shipped, record = load_policy(INITIAL_POLICY)
    policy = copy.deepcopy(shipped)
    with torch.no_grad():
        policy.adapt_head.bias.fill_(adapt_bias)
    return policy, record.model_copy(update={"version": policy.version(), "trained_on": f"adapt bias {adapt_bias}"})


def test_runs_are_decided_by_the_versions_they_name_and_a_restart_rebuilds_them(esper_settings):
    kafka, codec = esper_settings.kafka, SingleObjectCodec()
    policies_topic = topic_spec(TopicName.LIBRARY_POLICIES.value, kafka.topic_prefix).name
    publish_slot_kernels(kafka, [2], [8])
    grows, idles = published_record(*leaning(30.0)), published_record(*leaning(-30.0))
    for policy_record in (grows, idles):
        publish_policy(kafka, codec, policy_record)
    bad = grows.model_copy(update={"version": "gnn-0000000000ba", "artifact": b"\x00" * 64,
                                   "checksum": hashlib.sha256(b"\x00" * 64).hexdigest()})
    publish_policy(kafka, codec, bad)  # decodes, but its artifact is no policy: refused, and Tamiyo goes on
    producer = OonaProducer(kafka, codec)
    producer.produce_raw(policies_topic, b"\x00not avro at all", b"garbage")  # does not decode: refused too
    producer.flush()
    promote_policy(kafka, codec, PolicyPromoted(version=idles.version, reason="test"))
    cfg = load_config(EXAMPLE).model_copy(update={"epochs": 3})
    suffix = uuid.uuid4().hex[:6]
    named, unnamed, unknown, after = (f"pv-{name}-{suffix}" for name in ("named", "unnamed", "unknown", "after"))

    with tamiyo_running(kafka) as tamiyo:
        registry = tamiyo.policies.registry
        assert {grows.version, idles.version} <= set(registry.versions) and registry.promoted == idles.version
        assert "corrupt weights" in registry.refused[bad.version]
        start_run(cfg.model_copy(update={"policy_version": grows.version}), esper_settings, run_id=named,
                  progress=False)
        start_run(cfg, esper_settings, run_id=unnamed, progress=False)
        start_run(cfg.model_copy(update={"policy_version": "gnn-00000000dead"}), esper_settings, run_id=unknown,
                  progress=False)

    # Both unusable records are dead-lettered with their reasons, once.
    refused = [(header(m, "esper.dlq.group"), header(m, "esper.dlq.reason")) for m in dead_letters(kafka)
               if header(m, "esper.dlq.topic") == policies_topic]
    assert len(refused) == 2 and {group for group, _ in refused} == {f"{kafka.topic_prefix}tamiyo"}, refused
    assert any("corrupt weights" in reason for _, reason in refused), refused

    decisions = {run: run_messages(kafka, TopicName.CONTROL_TAMIYO_DECISIONS, run) for run in (named, unnamed, unknown)}
    assert {d.epoch for d in decisions[named]} == set(range(cfg.epochs))
    # Each run's decisions carry its version, and that version decided them: one grows, the other never does.
    assert {d.policy_version for d in decisions[named]} == {grows.version}
    assert {d.policy_version for d in decisions[unnamed]} == {idles.version}
    assert any(d.action is CommandAction.GERMINATE for d in decisions[named])
    assert all(d.adaptation_type is AdaptationType.NO_OP for d in decisions[unnamed])
    assert all("policy chose not to grow" in d.reason for d in decisions[unnamed])
    # A version nobody published: every epoch is answered, nothing is grown, and the reason says why.
    assert {d.epoch for d in decisions[unknown]} == set(range(cfg.epochs))
    assert all(d.adaptation_type is AdaptationType.NO_OP and "gnn-00000000dead is not on library.policies"
               in d.reason for d in decisions[unknown]), [d.reason for d in decisions[unknown]]

    # Promote the other one; a restarted Tamiyo rebuilds both versions and the promotion from the log, decides
    # the next unnamed run with it, and leaves the runs decided before as they were.
    promote_policy(kafka, codec, PolicyPromoted(version=grows.version))
    with tamiyo_running(kafka) as restarted:
        wait_until(lambda: restarted.settled, timeout_s=60, what="the restarted Tamiyo rebuilt")
        registry = restarted.policies.registry
        assert {grows.version, idles.version} <= set(registry.versions) and registry.promoted == grows.version
        assert bad.version in registry.refused
        start_run(cfg, esper_settings, run_id=after, progress=False)
    assert {d.policy_version for d in run_messages(kafka, TopicName.CONTROL_TAMIYO_DECISIONS, after)} == \
        {grows.version}
    assert {d.policy_version for d in run_messages(kafka, TopicName.CONTROL_TAMIYO_DECISIONS, unnamed)} == \
        {idles.version}
    assert len([m for m in dead_letters(kafka) if header(m, "esper.dlq.topic") == policies_topic]) == 2  # not again
    # What `esper policy list` reads is the same fold.
    listed = load_registry(kafka, codec, PolicyRegistry(*load_policy(INITIAL_POLICY)))
    assert listed.promoted == grows.version and bad.version in listed.refused


def test_esper_policy_publish_list_promote_and_run_policy_on_the_bus(esper_settings, tmp_path):
    """The commands a user types: publish a policy file, list, promote; an unknown version is one line, exit 1."""
    env = esper_env(ESPER_KAFKA__BOOTSTRAP_SERVERS=esper_settings.kafka.bootstrap_servers,
                    ESPER_KAFKA__TOPIC_PREFIX=esper_settings.kafka.topic_prefix, ESPER_STATE_DIR=str(tmp_path))
    policy, record = leaning(30.0)
    path = save_policy(policy, tmp_path / "policies", record.trained_on)
    published = run_esper("policy", "publish", str(path), env=env)
    assert published.returncode == 0 and f"policy {record.version} published" in published.stdout, published.stderr
    promoted = run_esper("policy", "promote", record.version, "--reason", "it grows", env=env)
    assert promoted.returncode == 0, promoted.stderr
    listed = run_esper("policy", "list", env=env)
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:] if len(line.split()) > 1}
    assert rows.get(record.version) == "promoted" and rows.get(load_policy(INITIAL_POLICY)[1].version) == "shipped"
    for args, fragment in ((("policy", "promote", "gnn-00000000dead"), "is not on library.policies"),
                           (("run", str(EXAMPLE), "--policy", "gnn-00000000dead"), "is not on library.policies")):
        result = run_esper(*args, env=env)
        assert result.returncode == 1 and fragment in result.stderr, result.stderr
        assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.stderr, result.stderr
