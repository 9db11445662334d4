"""`esper dlq` as a user runs it, on the real broker: records dead-lettered for a reason a later fix removes
are listed, shown with their original headers, re-driven after the fix and processed exactly once; a
second re-drive does nothing."""

from __future__ import annotations

import os
import subprocess
import uuid

from contracts import TopicName
from contracts.dead_letter import DLQ_HEADER_REDRIVEN_FROM
from services.cli import main
from services.oona.codec import SingleObjectCodec
from services.oona.consumer import OonaConsumer
from services.oona.producer import OonaProducer
from services.oona.topic_registry import topic_spec
from tests.esper_cli import esper_env, run_esper
from tests.integration.conftest import consume_until
from tests.integration.test_dead_letters import whole_topic
from tests.samples import message_for


def _health(spec, errors: int):
    event = message_for(spec, run_id=f"run-{uuid.uuid4().hex[:6]}")
    return event.model_copy(update={"payload": event.payload.model_copy(update={"error_count": errors})})


def test_dead_letters_are_listed_shown_and_redriven_once_after_a_fix(esper_settings, monkeypatch, capsys):
    kafka = esper_settings.kafka
    env = esper_env(KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers, ESPER_KAFKA__TOPIC_PREFIX=kafka.topic_prefix,
                    ESPER_STATE_DIR=str(esper_settings.state_dir), COLUMNS="400")  # rich tables unwrapped
    for name in [k for k in os.environ if k.startswith("ESPER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def esper(*args: str) -> subprocess.CompletedProcess:
        """`esper dlq ARGS` in this process (a subprocess costs seconds of imports each; the first call is one)."""
        code = main(["dlq", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    codec = SingleObjectCodec()
    spec = topic_spec(TopicName.TELEMETRY_SEED_HEALTH.value, kafka.topic_prefix)
    dlq = topic_spec(TopicName.DLQ.value, kafka.topic_prefix).name
    producer = OonaProducer(kafka, codec)
    good = [_health(spec, 0) for _ in range(4)]
    rejected = [_health(spec, 3) for _ in range(3)]  # a kind today's consumer cannot handle
    for i, event in enumerate(good + rejected):
        producer.publish(spec, event, [("traceparent", f"00-trace-{i}".encode()), ("markup", b"[bold]x[/]")])
    producer.produce_raw(spec.name, b"\xff\x00[red]garbage[/red]", b"k")  # never valid: not re-driven by the reason
    producer.flush()
    total = len(good) + len(rejected) + 1
    group = f"{kafka.topic_prefix}health-reader"

    def strict(delivered):
        if delivered.message.payload.error_count:
            raise ValueError("error_count is not supported yet")
        return delivered.message.event_id

    handled: list[str] = []

    def run(handle, expect: int) -> None:
        consumer = OonaConsumer(kafka, codec, group_id=group, topics=[spec], dead_letters=producer, dlq_topic=dlq)
        try:
            got = consume_until(consumer, expect)
            handled.extend(h for d in got if (h := consumer.handle_isolated(d, handle)) is not None)
            consumer.commit()
        finally:
            consumer.close()

    run(strict, total - 1)
    assert sorted(handled) == sorted(e.event_id for e in good)
    assert len(whole_topic(kafka, dlq)) == len(rejected) + 1

    listed = run_esper("dlq", "list", env=env, timeout=120)  # once as a user runs it
    assert listed.returncode == 0, listed.stderr
    assert "error_count is not supported yet" in listed.stdout and "not Avro single-object encoded" in listed.stdout
    assert "health-reader" in listed.stdout and "4 dead letter(s) in 2 group(s)" in listed.stdout
    assert "no dead letters match" in esper("list", "--reason", "nothing like it").stdout

    letters = whole_topic(kafka, dlq)
    first = next(m for m in letters if b"error_count" in dict(m.headers())["esper.dlq.reason"])
    shown = esper("show", str(first.offset()))
    assert shown.returncode == 0, shown.stderr
    assert "(original) traceparent" in shown.stdout and dict(first.headers())["traceparent"].decode() in shown.stdout
    assert "[bold]x[/]" in shown.stdout, "bus strings are printed, not read as markup"
    assert '"error_count": 3' in shown.stdout and "HealthSignalMessage (valid)" in shown.stdout
    at = dict(first.headers())
    partition, offset = at["esper.dlq.partition"].decode(), at["esper.dlq.offset"].decode()
    source = f"{TopicName.TELEMETRY_SEED_HEALTH.value}:{partition}:{offset}"
    assert esper("show", "--source", source).stdout == shown.stdout
    garbage = esper("show", str(next(m for m in letters if m.key() == b"k").offset()))
    assert "hex (" in garbage.stdout and "[red]" not in garbage.stdout  # hex of the bytes, not the text

    for bad in (("show", "999999"), ("show", "x"), ("show", "--source", "nope"), ("show",),
                ("redrive", "--from-offset", "3"), ("redrive", "--from-offset", "5", "--to-offset", "2")):
        result = esper(*bad)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, (bad, result.stderr)

    dry = esper("redrive", "--reason", "error_count", "--dry-run")
    assert dry.returncode == 0 and "would re-drive 3 dead letter(s)" in dry.stdout, dry.stdout + dry.stderr
    assert len(whole_topic(kafka, spec.name)) == total, "a dry run produces nothing"

    redriven = esper("redrive", "--reason", "error_count")
    assert redriven.returncode == 0 and "re-drove 3 dead letter(s)" in redriven.stdout, (
        redriven.stdout + redriven.stderr
    )
    again = esper("redrive", "--reason", "error_count")
    assert again.returncode == 0, again.stderr
    assert "nothing to re-drive: 3 selected dead letter(s) were re-driven before" in again.stdout

    back = [m for m in whole_topic(kafka, spec.name) if DLQ_HEADER_REDRIVEN_FROM in dict(m.headers() or ())]
    assert len(back) == len(rejected), "each re-driven once"
    for msg in back:
        headers = dict(msg.headers())
        assert headers["traceparent"].startswith(b"00-trace-") and headers[DLQ_HEADER_REDRIVEN_FROM].startswith(
            dlq.encode() + b":0:")

    handled.clear()
    run(lambda d: d.message.event_id, len(rejected))  # the fixed consumer, same group: only what came back
    assert sorted(handled) == sorted(e.event_id for e in rejected), "processed exactly once"
    assert esper("list", "--reason", "error_count").stdout.count("error_count") == 1
    assert len(whole_topic(kafka, dlq)) == len(rejected) + 1 + len(rejected), "the letters and one marker each"
