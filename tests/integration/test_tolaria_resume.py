"""kill -9 in the middle of a run, then --resume: the run completes and no event is on the log twice."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter

import yaml

from contracts import CommandAction
from services.blueprints.starter import conv_adapter
from services.oona.admin import delete_topics, ensure_topics
from services.oona.codec import SingleObjectCodec
from services.oona.consumer import OonaConsumer
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics, topic_spec
from services.tolaria.emitter import RunEmitter
from tests.esper_cli import ESPER, esper_env
from tests.integration.run_log import run_events
from tests.kafka_helpers import publish_command, publish_kernel
from tests.samples import health_signal

EPOCHS = 14
CONFIG = {
    "name": "resume", "epochs": EPOCHS, "batch_size": 16, "data": {"dataset": "digits"},
    "model": {"kind": "cnn", "channels": [16, 32]},
    "seeds": {"target_layers": ["features.0"], "per_layer": 2},
    "optimizer": {"lr": 0.005}, "adaptation": {"training_epochs": 2, "grafting_steps": 30},
}


def _wait_for_epoch(kafka: KafkaSettings, prefix: str, run_id: str, epoch: int, proc: subprocess.Popen,
                    timeout_s: float = 120) -> None:
    spec = topic_spec("system.events.epoch", prefix)
    producer = OonaProducer(kafka, SingleObjectCodec())
    consumer = OonaConsumer(kafka, SingleObjectCodec(), group_id=f"watch-{uuid.uuid4().hex[:6]}", topics=[spec],
                            dead_letters=producer, dlq_topic=prefix + "esper.dlq")
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stdout.read()}"
            for d in consumer.consume(100, 0.2):
                if d.message.run_id == run_id and d.message.payload.state.epoch >= epoch:
                    return
        raise AssertionError(f"epoch {epoch} of {run_id} never appeared")
    finally:
        consumer.close()


def test_kill_9_then_resume_completes_without_duplicates(kafka_bootstrap, tmp_path):
    prefix = f"resume.{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    ensure_topics(kafka, all_topics(prefix))
    run_id = f"resume-{uuid.uuid4().hex[:6]}"
    kernel_id = publish_kernel(kafka, conv_adapter([1, 8, 8], [16, 8, 8], 8), prefix=prefix)
    publish_command(kafka, run_id, CommandAction.GERMINATE, "features.0", 0, kernel_id=kernel_id, epoch=1,
                    prefix=prefix, command_id="germinate-once")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = esper_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, ESPER_KAFKA__TOPIC_PREFIX=prefix,
                    ESPER_STATE_DIR=str(tmp_path / "state"))
    cli = [*ESPER, "run"]
    try:
        with subprocess.Popen([*cli, str(config), "--run-id", run_id, "-q"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as proc:
            _wait_for_epoch(kafka, prefix, run_id, 4, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

        resumed = subprocess.run([*cli, "--resume", run_id, "-q"], env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert f"run {run_id} completed" in resumed.stdout

        events = run_events(kafka, run_id)
        ids = Counter(m.event_id for _, m in events)
        assert [i for i, n in ids.items() if n > 1] == [], "no event is on the log twice"
        epochs = [m.payload.state.epoch for t, m in events if t.endswith("system.events.epoch")]
        assert sorted(epochs) == list(range(EPOCHS))
        health = Counter(
            (m.payload.epoch, m.payload.seed_idx) for t, m in events if t.endswith("telemetry.seed.health")
        )
        assert set(health) == {(e, i) for e in range(EPOCHS) for i in range(2)} and set(health.values()) == {1}
        phases = [m.payload.session.status.value for t, m in events if t.endswith("training.sessions")]
        assert phases[0] == "running" and phases[-1] == "completed" and phases.count("completed") == 1
        germinations = [m for t, m in events if t.endswith("lifecycle.seed.transitions")
                        and m.payload.to_state.value == "germinated"]
        assert len(germinations) == 1 and germinations[0].payload.command_id == "germinate-once"
        again = subprocess.run([*cli, "--resume", run_id], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 1 and f"run {run_id} already completed" in again.stderr
    finally:
        delete_topics(kafka, [spec.name for spec in all_topics(prefix)])


def test_read_back_skips_what_is_already_on_the_log(kafka_bootstrap):
    prefix = f"readback.{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    ensure_topics(kafka, all_topics(prefix))
    codec = SingleObjectCodec()
    topics = {"telemetry.seed.health": topic_spec("telemetry.seed.health", prefix)}
    try:
        first = RunEmitter(kafka, OonaProducer(kafka, codec), codec, topics, "rb-run")
        first.emit("telemetry.seed.health", health_signal(epoch=0), "health", 0)
        first.flush()
        checkpoint = first.log_positions()
        for epoch in (1, 2):  # emitted after the checkpoint, then the process "dies"
            first.emit("telemetry.seed.health", health_signal(epoch=epoch), "health", epoch)
        first.flush()

        second = RunEmitter(kafka, OonaProducer(kafka, codec), codec, topics, "rb-run")
        assert second.read_back(checkpoint) == 2
        for epoch in (1, 2, 3):
            second.emit("telemetry.seed.health", health_signal(epoch=epoch), "health", epoch)
        second.flush()
        assert (second.emitted, second.skipped) == (1, 2)
        events = [m for _, m in run_events(kafka, "rb-run")]
        assert sorted(m.payload.epoch for m in events) == [0, 1, 2, 3]
    finally:
        delete_topics(kafka, [spec.name for spec in all_topics(prefix)])
