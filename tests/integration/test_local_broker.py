"""`esper broker start|stop|status`: the project's own KRaft broker keeps its data across restarts."""

from __future__ import annotations

import os
import uuid

from services.oona.admin import ensure_topics
from services.oona.codec import SingleObjectCodec
from services.oona.consumer import OonaConsumer
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from tests.esper_cli import esper_env, run_esper
from tests.integration.conftest import consume_until
from tests.samples import message_for

PORT = int(os.environ.get("ESPER_TEST_RESTART_BROKER_PORT", "19192"))


def test_events_survive_broker_stop_and_start(tmp_path):
    env = esper_env(ESPER_STATE_DIR=str(tmp_path / "state"), ESPER_BROKER__PORT=str(PORT),
                    ESPER_BROKER__CONTROLLER_PORT=str(PORT + 1), ESPER_BROKER__HEAP="512m")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{PORT}", connect_timeout_s=30)
    codec = SingleObjectCodec()
    spec = topic_spec("telemetry.seed.health")
    dlq = topic_spec("esper.dlq")
    try:
        started = run_esper("broker", "start", env=env)
        assert started.returncode == 0, started.stderr
        assert "kafka running" in started.stdout
        assert run_esper("broker", "status", env=env).returncode == 0

        ensure_topics(settings, [spec, dlq])
        producer = OonaProducer(settings, codec)
        sent = [message_for(spec, run_id=f"restart-{i % 4}") for i in range(200)]
        producer.publish_many(spec, sent)
        producer.flush()

        stopped = run_esper("broker", "stop", env=env)
        assert stopped.returncode == 0 and "kafka stopped" in stopped.stdout, stopped.stderr
        status = run_esper("broker", "status", env=env)
        assert status.returncode == 3 and "running=False" in status.stdout

        restarted = run_esper("broker", "start", env=env)
        assert restarted.returncode == 0, restarted.stderr
        consumer = OonaConsumer(
            settings, codec, group_id=f"restart-{uuid.uuid4().hex[:6]}", topics=[spec], dead_letters=producer
        )
        got = consume_until(consumer, len(sent), timeout_s=60)
        consumer.close()
        assert sorted(d.message.event_id for d in got) == sorted(m.event_id for m in sent)
    finally:
        run_esper("broker", "stop", env=env)


def test_starting_on_a_taken_port_is_a_clear_error(tmp_path, kafka_bootstrap):
    host, port = kafka_bootstrap.rsplit(":", 1)
    env = esper_env(ESPER_STATE_DIR=str(tmp_path / "other"), ESPER_BROKER__HOST=host, ESPER_BROKER__PORT=port,
                    ESPER_BROKER__CONTROLLER_PORT=str(PORT + 7))
    result = run_esper("broker", "start", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"esper: error: port {port} on {host} is taken by another process")
