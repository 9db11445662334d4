"""Soak: a transactional consume-transform-produce loop while its single local broker is restarted
again and again (``kill -9`` and clean stops in turn). Measures how long every transactional call
took, what each raised, how long the loop took to commit again after each restart, and checks the
outputs are exactly once (one output per input event, read_committed).

    nice -n 10 .venv/bin/python -m tests.e2e.txn_restart_soak --port 20750 --cycles 20 \
        --state /tmp/txnhang/soak --cache /tmp/txnhang/cache --out /tmp/txnhang/soak.json

Not a test (it takes minutes per cycle on a loaded machine); it produced the numbers of README
"Transactions after a broker restart". A call that stays blocked past ``--stuck-s`` ends the run
with the stacks of every thread: that is the hang.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from contracts import AdaptationDecision, AdaptationType
from services.core.errors import FatalError
from services.oona import clients
from services.oona.admin import ensure_topics
from services.oona.codec import SingleObjectCodec
from services.oona.local_broker import LocalBrokerConfig, LocalKafka
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.oona.transactions import ExactlyOnceProcessor
from tests.samples import message_for
from tests.waiting import wait_until

log = logging.getLogger("soak")


class CallLog:
    """Every transactional call of the processor's producer: name, duration, error; and the one in flight."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.in_flight: tuple[str, float] | None = None
        self.commits = 0
        self.committed = threading.Condition()  # notified at every commit

    def wrap(self, producer: OonaProducer) -> None:
        for name in ("send_offsets_to_transaction", "commit_transaction", "abort_transaction", "init_transactions"):
            setattr(producer, name, self._timed(name, getattr(producer, name)))

    def _timed(self, name: str, call: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            self.in_flight = (name, start)
            error = None
            try:
                return call(*args, **kwargs)
            except BaseException as exc:
                error = f"{type(exc).__name__}: {clients.reason(exc)}"[:200]
                raise
            finally:
                self.in_flight = None
                took = time.monotonic() - start
                if name == "commit_transaction" and error is None:
                    with self.committed:
                        self.commits += 1
                        self.committed.notify_all()
                if error is not None or took > 1.0:
                    log.info("call %s took %.2fs error=%s", name, took, error)
                self.calls.append({"call": name, "at": start, "s": round(took, 3), "error": error})
        return timed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=20750)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--state", default="/tmp/txnhang/soak")
    parser.add_argument("--cache", default="/tmp/txnhang/cache")
    parser.add_argument("--out", default="/tmp/txnhang/soak.json")
    parser.add_argument("--stuck-s", type=float, default=150.0)
    parser.add_argument("--down-s", type=float, default=3.0, help="longest outage (uniform 0..down-s)")
    parser.add_argument("--debug", default="", help="librdkafka debug contexts for the processor's clients")
    parser.add_argument("--librdkafka", action="append", default=[], metavar="KEY=VALUE",
                        help="a librdkafka property for every client, e.g. metadata.recovery.strategy=rebootstrap "
                             "(librdkafka's default, which brings the hang back)")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s %(message)s")
    logging.getLogger("librdkafka").setLevel(logging.WARNING if not args.debug else logging.DEBUG)

    broker = LocalKafka(LocalBrokerConfig(state_dir=Path(args.state), cache_dir=Path(args.cache), port=args.port,
                                          controller_port=args.port + 1, heap="512m", start_timeout_s=180))
    broker.start()
    extra = dict(item.split("=", 1) for item in args.librdkafka)
    settings = KafkaSettings(bootstrap_servers=broker.cfg.bootstrap_servers, client_id="soak", connect_timeout_s=60,
                             librdkafka=extra)
    tag = uuid.uuid4().hex[:6]
    source = dataclasses.replace(topic_spec("telemetry.seed.health"), name=f"soak.{tag}.in", partitions=3)
    sink = dataclasses.replace(topic_spec("control.tamiyo.decisions"), name=f"soak.{tag}.out", partitions=3)
    dlq = dataclasses.replace(topic_spec("esper.dlq"), name=f"soak.{tag}.dlq")
    ensure_topics(settings, [source, sink, dlq])
    codec = SingleObjectCodec()

    def handler(delivered: Any) -> Any:
        health = delivered.message.payload
        decision = AdaptationDecision(
            decision_id=f"d-{delivered.message.event_id}", layer_name=health.layer_name or "l",
            adaptation_type=AdaptationType.NO_OP, confidence=0.5, urgency=health.health_score, epoch=health.epoch)
        yield sink, sink.message_type(sender_id="soak", topic=sink.name, run_id=delivered.message.run_id,
                                      trace_id=delivered.message.event_id, payload=decision)

    calls = CallLog()
    if args.debug:
        # librdkafka's own lines on stderr, timestamped, even while a call blocks (lines handed to a Python
        # logger wait for the client's next poll).
        plain_config = clients.client_config

        def unlogged_config(*layers: Any) -> dict[str, Any]:
            config = plain_config(*layers)
            if "debug" in config:
                config.pop("logger", None)
            return config
        clients.client_config = unlogged_config  # type: ignore[assignment]
    proc_settings = settings if not args.debug else settings.model_copy(
        update={"librdkafka": {**extra, "debug": args.debug}})

    def build() -> ExactlyOnceProcessor:
        processor = ExactlyOnceProcessor(proc_settings, codec, group_id=f"soak-{tag}", transactional_id=f"soak-{tag}-0",
                                         inputs=[source], handler=handler, dlq_topic=dlq.name)
        calls.wrap(processor.producer)
        return processor

    stop = threading.Event()
    feeding = threading.Event()
    feeding.set()
    errors: Counter[str] = Counter()
    rebuilds = [0]
    recoveries = [0]

    def feed() -> None:
        producer = OonaProducer(settings, codec)
        while not stop.is_set() and feeding.is_set():
            producer.publish_many(source, [message_for(source, run_id=f"r{i}") for i in range(5)])
            producer.poll(0)
            stop.wait(0.05)  # a steady trickle of input, as a training run's telemetry
        producer.flush(300)

    def process() -> None:
        # As Tamiyo: an error of the batch is logged and the loop goes on (the processor aborted and
        # rewound, or replaced its producer); a FatalError or fencing ends the service, here a new one.
        processor = build()
        while not stop.is_set():
            try:
                processor.process_batch(max_messages=200, timeout_s=0.2)
            except Exception as exc:
                errors[f"{type(exc).__name__}: {clients.reason(exc)[:80]}"] += 1
                if isinstance(exc, FatalError) or clients.is_fenced(exc):
                    rebuilds[0] += 1
                    try:
                        processor.close()
                    except Exception as close_exc:
                        log.warning("close after fatal: %s", close_exc)
                    processor = build()
            recoveries[0] = processor.recoveries
        processor.close()

    feeder = threading.Thread(target=feed, name="feeder", daemon=True)
    worker = threading.Thread(target=process, name="processor", daemon=True)
    feeder.start()
    worker.start()

    def dump_and_exit(why: str, cycles_done: list[dict[str, Any]]) -> None:
        log.error("%s", why)
        faulthandler.dump_traceback(all_threads=True)
        write(args.out, cycles_done, calls, errors, rebuilds[0], recoveries[0], why, None)
        sys.stdout.flush()
        os._exit(2)

    def wait_commits(n: int, what: str, cycles_done: list[dict[str, Any]]) -> float:
        start, target = time.monotonic(), calls.commits + n
        while calls.commits < target:
            flight = calls.in_flight
            if flight and time.monotonic() - flight[1] > args.stuck_s:
                dump_and_exit(f"{flight[0]} blocked {time.monotonic() - flight[1]:.0f}s ({what})", cycles_done)
            if time.monotonic() - start > 2 * args.stuck_s:
                dump_and_exit(f"no commit for {time.monotonic() - start:.0f}s ({what}); in flight: {flight}",
                              cycles_done)
            with calls.committed:  # woken by the next commit; at least once a second to look for a stuck call
                calls.committed.wait_for(lambda: calls.commits >= target, timeout=1.0)
        return time.monotonic() - start

    cycles: list[dict[str, Any]] = []
    wait_commits(5, "warm-up", cycles)
    for cycle in range(args.cycles):
        wait_commits(random.randint(3, 20), "before fault", cycles)
        how = "kill-9" if cycle % 2 == 0 else "stop"
        first_call = len(calls.calls)
        t0 = time.monotonic()
        if how == "kill-9":
            broker.kill()
        else:
            broker.stop()
        stop.wait(random.uniform(0, args.down_s))  # the outage's length (fault injection, not synchronisation)
        broker.start()
        up = time.monotonic()
        resumed = wait_commits(1, f"after {how} cycle {cycle}", cycles)
        window = calls.calls[first_call:]
        cycles.append({"cycle": cycle, "fault": how, "down_s": round(up - t0, 1),
                       "resumed_after_up_s": round(resumed, 1),
                       "longest_call": max(window, key=lambda c: c["s"], default=None),
                       "errors": [c["error"] for c in window if c["error"]]})
        log.info("cycle %d %s: down %.1fs, committed again %.1fs after the broker was up", cycle, how, up - t0, resumed)
    feeding.clear()
    feeder.join(330)
    # Let the processor catch up with all the input, then check exactly-once on the output.
    from confluent_kafka import TopicPartition

    from services.oona.admin import end_offsets

    admin = clients.admin(settings)
    parts = [(source.name, p) for p in range(source.partitions)]

    def caught_up() -> bool:
        ends = end_offsets(admin, parts)
        cons = clients.consumer(settings, {"group.id": f"soak-{tag}"})
        try:
            committed = cons.committed([TopicPartition(t, p) for t, p in parts], timeout=10)
        finally:
            cons.close()
        return all(tp.offset == ends[(tp.topic, tp.partition)] for tp in committed)

    wait_until(caught_up, 300, "the processor caught up with the input")
    stop.set()
    worker.join(60)
    verdict = verify(settings, codec, source, sink)
    write(args.out, cycles, calls, errors, rebuilds[0], recoveries[0], "done", verdict)
    broker.stop()
    return 0


def read_all(settings: KafkaSettings, topic: str, partitions: int) -> list[Any]:
    from confluent_kafka import TopicPartition

    from services.oona.admin import end_offsets
    ends = end_offsets(clients.admin(settings), [(topic, p) for p in range(partitions)])
    consumer = clients.consumer(settings, {"group.id": f"read-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                                           "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got, positions = [], {p: 0 for p in range(partitions)}
    deadline = time.monotonic() + 120
    while any(positions[p] < ends[(topic, p)] for p in positions) and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            if msg.error() is None:
                got.append(msg)
                positions[msg.partition()] = msg.offset() + 1
            # control records (commit markers) move the position without a message
        for tp in consumer.position([TopicPartition(topic, p) for p in range(partitions)]):
            if tp.offset >= 0:
                positions[tp.partition] = max(positions[tp.partition], tp.offset)
    consumer.close()
    return got


def verify(settings: KafkaSettings, codec: SingleObjectCodec, source: Any, sink: Any) -> dict[str, int]:
    inputs = {codec.decode(source, m.value()).event_id for m in read_all(settings, source.name, source.partitions)}
    outputs = Counter(codec.decode(sink, m.value()).trace_id for m in read_all(settings, sink.name, sink.partitions))
    return {"inputs": len(inputs), "outputs": sum(outputs.values()), "missing": len(inputs - set(outputs)),
            "duplicated": sum(1 for n in outputs.values() if n > 1), "unexpected": len(set(outputs) - inputs)}


def write(path: str, cycles: list[dict[str, Any]], calls: CallLog, errors: Counter[str], rebuilds: int,
          recoveries: int, end: str, verdict: dict[str, int] | None) -> None:
    by_call: dict[str, list[float]] = {}
    for c in calls.calls:
        by_call.setdefault(c["call"], []).append(c["s"])
    summary = {name: {"n": len(v), "max_s": max(v), "over_30s": sum(1 for s in v if s > 30),
                      "over_5s": sum(1 for s in v if s > 5)} for name, v in by_call.items()}
    abandoned = [t.name for t in threading.enumerate() if t.name.endswith("-calls")]
    result = {"end": end, "cycles": cycles, "calls": summary, "errors": dict(errors), "rebuilds": rebuilds,
              "recoveries": recoveries, "call_threads_alive": abandoned,
              "exactly_once": verdict, "load": os.getloadavg()}
    Path(path).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "cycles"}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
