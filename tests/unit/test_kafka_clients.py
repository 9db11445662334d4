"""The Kafka client factory (services/oona/clients.py) and the one end-offsets reader.

No broker: librdkafka's own mock cluster (``test.mock.num.brokers``) and hand-made ``KafkaError``s.
The shape test keeps the factory the only place that builds clients or catches ``KafkaException``.
"""

from __future__ import annotations

import ast
import logging
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from services.core.errors import ConfigurationError, DeliveryError, KafkaClientError
from services.oona import clients
from services.oona.log_reader import ReadToEnds, read_range, scan_range
from services.oona.settings import KafkaSettings
from tests.mock_cluster import mock_cluster

ROOT = Path(__file__).resolve().parents[2]
FACTORY = ROOT / "services" / "oona" / "clients.py"
CLIENT_CLASSES = {"Consumer", "Producer", "AdminClient"}

TRANSPORT = KafkaError(KafkaError._TRANSPORT, "broker went away")
FENCED = KafkaError(KafkaError._FENCED, "fenced by a newer producer", fatal=True)
BAD_CONFIG = KafkaError(KafkaError.INVALID_CONFIG, "no such property")


# -- the shape ------------------------------------------------------------------------------------
def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) in CLIENT_CLASSES:
            found.append(f"{where}:{node.lineno} builds {_name(node.func)}(...)")
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            if any(_name(t) == "KafkaException" for t in caught):
                found.append(f"{where}:{node.lineno} catches KafkaException")
    return found


def test_only_the_factory_builds_kafka_clients_or_catches_their_exceptions():
    modules = [p for top in ("contracts", "services") for p in sorted((ROOT / top).rglob("*.py")) if p != FACTORY]
    assert len(modules) > 50
    violations = [v for path in modules for v in _violations(path)]
    assert not violations, "use services.oona.clients (consumer/producer/admin, map_exceptions, suppress):\n" + \
        "\n".join(violations)


def test_the_shape_test_sees_what_it_forbids(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import confluent_kafka as ck\nc = ck.Consumer({})\ntry:\n    pass\n"
                   "except (ValueError, ck.KafkaException):\n    pass\n")
    assert [v.split(" ", 1)[1] for v in _violations(bad)] == ["builds Consumer(...)", "catches KafkaException"]
    assert _violations(FACTORY), "the factory itself does both (it is the one place allowed to)"


# -- config merge ---------------------------------------------------------------------------------
class _Recorder:
    def __init__(self) -> None:
        self.configs: list[dict] = []

    def __call__(self, config: dict) -> str:
        self.configs.append(config)
        return "client"


@pytest.fixture
def settings():
    return KafkaSettings(bootstrap_servers="127.0.0.1:1", client_id="clients-tests",
                         librdkafka={"socket.keepalive.enable": "true", "linger.ms": "7"})


def test_overrides_come_after_the_settings_and_later_ones_win(settings, monkeypatch):
    built = _Recorder()
    monkeypatch.setattr(clients, "Consumer", built)
    clients.consumer(settings, {"group.id": "a", "linger.ms": 1, "fetch.wait.max.ms": 10}, {"group.id": "b"})
    config = built.configs[0]
    assert config["bootstrap.servers"] == "127.0.0.1:1" and config["client.id"] == "clients-tests"
    assert config["socket.keepalive.enable"] == "true", "the settings' librdkafka passthrough is kept"
    assert config["linger.ms"] == 1, "a use's override beats the settings"
    assert config["group.id"] == "b" and config["fetch.wait.max.ms"] == 10, "later overrides win, earlier stay"
    assert callable(config["error_cb"])


def test_each_kind_gets_the_error_callback_unless_given_one(settings, monkeypatch):
    producers, admins = _Recorder(), _Recorder()
    monkeypatch.setattr(clients, "Producer", producers)
    monkeypatch.setattr(clients, "AdminClient", admins)
    clients.producer(settings, {"acks": "all"})
    own = lambda error: None  # noqa: E731
    clients.producer(settings, on_error=own)
    clients.admin(settings)
    assert producers.configs[0]["acks"] == "all" and callable(producers.configs[0]["error_cb"])
    assert producers.configs[1]["error_cb"] is own
    assert "error_cb" not in admins.configs[0] and admins.configs[0]["client.id"] == "clients-tests"


def test_the_error_callback_logs_with_the_group_and_fatal_ones_at_error(caplog):
    caplog.set_level(logging.WARNING, logger="services.oona.clients")
    clients.log_client_errors("g1")(TRANSPORT)
    clients.log_client_errors()(FENCED)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "kafka client error group=g1 code=_TRANSPORT reason=broker went away"),
        (logging.ERROR, "kafka client error code=_FENCED reason=fenced by a newer producer"),
    ]


@pytest.mark.parametrize(("build", "message"), [
    (lambda s: clients.consumer(s, {"group.id": "g", "no.such.property": "1"}), "invalid consumer settings: "),
    (lambda s: clients.producer(s, {"no.such.property": "1"}), "invalid producer settings: "),
    (lambda s: clients.admin(s, {"no.such.property": "1"}), "invalid Kafka client settings: "),
])
def test_a_client_librdkafka_refuses_is_a_configuration_error(settings, build, message):
    with pytest.raises(ConfigurationError, match=message + ".*no.such.property") as raised:
        build(settings)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


# -- exception mapping ----------------------------------------------------------------------------
def test_map_exceptions_keeps_librdkafkas_error_in_a_kafka_client_error():
    with pytest.raises(KafkaClientError) as raised:
        with clients.map_exceptions():
            raise KafkaException(TRANSPORT)
    assert raised.value.error.code() == KafkaError._TRANSPORT
    assert clients.reason(raised.value) == "broker went away"
    assert clients.is_transient(raised.value) and not clients.is_fatal(raised.value)


def test_map_exceptions_into_a_project_error_with_the_reason():
    with pytest.raises(DeliveryError, match="delivery to t failed: no such property"):
        with clients.map_exceptions(lambda reason: DeliveryError("t", reason)):
            raise KafkaException(BAD_CONFIG)


def test_map_exceptions_lets_everything_else_through():
    with pytest.raises(ValueError):
        with clients.map_exceptions(lambda reason: DeliveryError("t", reason)):
            raise ValueError("not a bus error")
    with clients.map_exceptions():
        pass


def test_suppress_ends_the_block_on_its_codes_only():
    seen: list[KafkaError] = []
    after = []
    with clients.suppress({KafkaError._TRANSPORT}, on_suppressed=seen.append):
        raise KafkaException(TRANSPORT)
    after.append("went on")
    assert [e.code() for e in seen] == [KafkaError._TRANSPORT] and after == ["went on"]
    with pytest.raises(KafkaException):
        with clients.suppress({KafkaError._TRANSPORT}):
            raise KafkaException(FENCED)
    with clients.suppress(clients.any_error, on_suppressed=seen.append):
        raise KafkaException(FENCED)
    assert seen[-1].fatal()


def test_transient_and_fatal_are_read_from_the_error():
    assert clients.is_transient(KafkaException(TRANSPORT))
    assert clients.is_transient(KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)))
    # not retriable by librdkafka's flag, but a commit right after an outage meets it until the coordinator is back
    assert clients.is_transient(KafkaException(KafkaError(KafkaError._WAIT_COORD)))
    assert not clients.is_transient(KafkaException(BAD_CONFIG))
    assert clients.is_fatal(KafkaException(FENCED)) and not clients.is_fatal(KafkaException(TRANSPORT))
    assert not clients.is_transient(ValueError("x")) and not clients.is_fatal(KafkaException())


def test_retry_transient_calls_again_then_gives_up_on_other_errors():
    answers = [KafkaException(TRANSPORT), KafkaException(TRANSPORT), "ok"]
    told: list[BaseException] = []

    def call():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert clients.retry_transient(call, 30.0, backoff_s=0, on_error=told.append) == "ok"
    assert len(told) == 2
    calls = []

    def refused():
        calls.append(1)
        raise KafkaException(BAD_CONFIG)

    with pytest.raises(KafkaException):
        clients.retry_transient(refused, 30.0, backoff_s=0)
    assert calls == [1], "a non-transient error is not retried"


def test_retry_transient_stops_at_its_deadline():
    calls = []

    def down():
        calls.append(1)
        raise KafkaException(TRANSPORT)

    with pytest.raises(KafkaException):
        clients.retry_transient(down, -1.0, backoff_s=0, quiet=True)
    assert calls == [1], "past the deadline: the transient error propagates"


# -- the end-offsets reader, on librdkafka's mock cluster --------------------------------------------
@pytest.fixture
def mock_settings():
    with mock_cluster(1, "clients-tests") as settings:
        yield settings


def _topic_with(settings: KafkaSettings, count: int) -> str:
    topic = f"m{uuid.uuid4().hex[:8]}"
    producer = clients.producer(settings, {"acks": "all"})
    for i in range(count):
        producer.produce(topic, value=f"v{i}".encode(), partition=0)
    assert producer.flush(10) == 0
    return topic


def test_read_to_ends_follows_positions_and_never_passes_the_end():
    class Positions:
        def __init__(self, offsets):
            self.offsets = offsets

        def position(self, partitions):
            return [TopicPartition(tp.topic, tp.partition, self.offsets[tp.partition]) for tp in partitions]

    progress = ReadToEnds({("t", 0): 5, ("t", 1): 3, ("t", 2): 0}, {("t", 1): 1})
    assert not progress.done and progress.reached == {("t", 0): 0, ("t", 1): 1, ("t", 2): 0}
    assert progress.advance(Positions({0: -1001, 1: 2})) == 1, "no position yet: still where it started"
    assert progress.advance(Positions({0: 9, 1: 3})) == 6 and progress.done
    assert progress.reached == {("t", 0): 5, ("t", 1): 3, ("t", 2): 0}


def test_scan_range_reads_from_a_start_to_an_end_and_stops(mock_settings):
    topic = _topic_with(mock_settings, 6)
    every = read_range(mock_settings, {(topic, 0): (0, 6)}, timeout_s=20)
    assert [m.value() for m in every] == [f"v{i}".encode() for i in range(6)]
    moved: list[int] = []
    middle = [m for chunk in scan_range(mock_settings, {(topic, 0): (2, 4)}, timeout_s=20, on_position=moved.append)
              for m in chunk]
    assert [m.offset() for m in middle] == [2, 3] and sum(moved) == 2
    assert list(scan_range(mock_settings, {(topic, 0): (6, 6)})) == [], "an empty range reads nothing"


def _message(topic: str, partition: int, offset: int, error: bool = False):
    from confluent_kafka import KafkaError, Message

    if error:
        return Message(topic=topic, partition=partition, error=KafkaError(KafkaError._PARTITION_EOF))
    return Message(topic=topic, partition=partition, offset=offset, value=b"v")


@pytest.mark.parametrize("chunk", [
    [("a", 0, 0), ("a", 0, 1), ("a", 0, 2)],  # a whole chunk before every end: taken as it is
    [("a", 0, 8), ("a", 0, 9), ("a", 0, 10), ("a", 0, 11)],  # crossing a's end (10)
    [("a", 0, 3), ("b", 1, 3), ("b", 1, 4), ("a", 0, 4)],  # b's end (4) is the lowest: b's 4 left out
    [("a", 0, 3), ("a", 0, None), ("a", 0, 5)],  # an error (None: a message with an error) left out
    [("b", 1, 9)],  # a partition past its end
    [],
])
def test_in_range_keeps_exactly_the_messages_without_error_before_their_end(chunk):
    from services.oona.log_reader import _before_end, in_range

    todo = {("a", 0): (0, 10), ("b", 1): (2, 4)}
    messages = [_message(t, p, 0 if o is None else o, error=o is None) for t, p, o in chunk]
    expected = [m for m in messages if m.error() is None and _before_end(m, todo)]  # the per-message check

    kept = in_range(messages, todo, min(end for _, end in todo.values()))

    assert [(m.topic(), m.partition(), m.offset()) for m in kept] == [
        (m.topic(), m.partition(), m.offset()) for m in expected]
