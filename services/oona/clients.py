"""The one place that builds confluent-kafka clients and reads their exceptions.

Every ``Consumer``, ``Producer`` and ``AdminClient`` of Esper comes from ``consumer``,
``producer`` or ``admin`` here: the settings' librdkafka properties, then each use's own
overrides in order (later wins), then the error callback that logs what librdkafka reports
between calls. A client librdkafka refuses to build is a ``ConfigurationError``.

What confluent-kafka raises is read here too (httpx's ``map_exceptions``, for Kafka):

    map_exceptions(into)    a KafkaException inside becomes ``into(reason)`` (default: KafkaClientError)
    suppress(codes)         a KafkaException with one of these error codes ends the block quietly
    retry_transient(call)   call again while it fails with a transient error (a leader moving,
                            a broker restarting), until a deadline
    is_transient / is_fatal / is_fenced   what a raised exception says about retrying

And calls that librdkafka does not always end within their timeout are run through
``BoundedCalls`` (README "Transactions after a broker restart").

No other module catches ``KafkaException`` (``tests/unit/test_kafka_clients.py`` checks it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from services.core.errors import ClientStuckError, ConfigurationError, KafkaClientError
from services.oona.settings import KafkaSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

ErrorCallback = Callable[[KafkaError], None]

# Errors that pass: a partition's leader moving or not known yet, or the broker briefly unreachable.
TRANSIENT_ERRORS = {
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.REQUEST_TIMED_OUT, KafkaError._NOENT, KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR, KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.OFFSET_NOT_AVAILABLE, KafkaError.BROKER_NOT_AVAILABLE,
    KafkaError.NETWORK_EXCEPTION,
    # librdkafka's own "waiting for coordinator": a consumer's commit right after the broker came back,
    # before the group coordinator is found again (seen in the broker-outage fault case).
    KafkaError._WAIT_COORD,
}


# -- building clients ------------------------------------------------------------------------------
def client_config(settings: KafkaSettings, *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The settings' librdkafka properties, then each of ``overrides`` in order (later wins)."""
    config = settings.client_config()
    for layer in overrides:
        config.update(layer)
    return config


def log_client_errors(group_id: str | None = None) -> ErrorCallback:
    """An ``error_cb`` that logs what librdkafka reports between calls (fatal ones at ERROR)."""
    def on_error(error: KafkaError) -> None:
        level = logging.ERROR if error.fatal() else logging.WARNING
        if group_id is None:
            log.log(level, "kafka client error code=%s reason=%s", error.name(), error.str())
        else:
            log.log(level, "kafka client error group=%s code=%s reason=%s", group_id, error.name(), error.str())
    return on_error


def consumer(settings: KafkaSettings, *overrides: Mapping[str, Any], on_error: ErrorCallback | None = None
             ) -> Consumer:
    """A ``Consumer``; ``overrides`` must name its ``group.id`` (librdkafka asks for one even to ``assign``)."""
    config = client_config(settings, *overrides)
    config["error_cb"] = on_error or log_client_errors(config.get("group.id"))
    with map_exceptions(lambda reason: ConfigurationError(f"invalid consumer settings: {reason}")):
        return Consumer(config)


def producer(settings: KafkaSettings, *overrides: Mapping[str, Any], on_error: ErrorCallback | None = None
             ) -> Producer:
    config = client_config(settings, *overrides)
    config["error_cb"] = on_error or log_client_errors()
    with map_exceptions(lambda reason: ConfigurationError(f"invalid producer settings: {reason}")):
        return Producer(config)


def admin(settings: KafkaSettings, *overrides: Mapping[str, Any]) -> AdminClient:
    with map_exceptions(lambda reason: ConfigurationError(f"invalid Kafka client settings: {reason}")):
        return AdminClient(client_config(settings, *overrides))


# -- reading exceptions ----------------------------------------------------------------------------
def kafka_error(exc: BaseException) -> KafkaError | None:
    """librdkafka's error inside a raised exception (a KafkaException, or a KafkaClientError made of one)."""
    if isinstance(exc, KafkaClientError):
        inner: KafkaError | None = exc.error  # core's error tree does not import confluent_kafka to type it
        return inner
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return error if isinstance(error, KafkaError) else None


def reason(exc: BaseException) -> str:
    """The one-line reason of a client exception: librdkafka's own text when there is one."""
    error = kafka_error(exc)
    return error.str() if error is not None else str(exc)


def is_transient(exc: BaseException) -> bool:
    """A retriable error, or one of ``TRANSIENT_ERRORS``: asking again later may succeed."""
    error = kafka_error(exc)
    return error is not None and (error.retriable() or error.code() in TRANSIENT_ERRORS)


def is_fatal(exc: BaseException) -> bool:
    """librdkafka says the client cannot go on (e.g. a producer fenced by a newer one)."""
    error = kafka_error(exc)
    return error is not None and error.fatal()


def is_fenced(exc: BaseException) -> bool:
    """A newer producer with the same transactional id took over: this one must stop, not fence it back."""
    error = kafka_error(exc)
    return error is not None and error.code() in (
        KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


class map_exceptions:  # noqa: N801 - used as a context manager, like contextlib.suppress
    """A ``KafkaException`` raised inside becomes ``into(reason)`` (raised from None: the reason says
    it all); without ``into``, a ``KafkaClientError`` that keeps librdkafka's error.

    A class, not a generator: it wraps every produce call, so it costs a fraction of a microsecond.
    """

    __slots__ = ("_into",)

    def __init__(self, into: Callable[[str], BaseException] | None = None) -> None:
        self._into = into

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        # Returns None (never swallows): mypy then knows a ``return`` inside the block always returns.
        if exc is None or not isinstance(exc, KafkaException):
            return None
        if self._into is None:
            raise KafkaClientError(exc.args[0] if exc.args else None, str(exc)) from None
        raise self._into(reason(exc)) from None


@contextmanager
def suppress(codes: Collection[int] | Callable[[KafkaError], bool],
             on_suppressed: ErrorCallback | None = None) -> Iterator[None]:
    """A ``KafkaException`` whose error code is in ``codes`` (or that ``codes(error)`` accepts) ends the
    block without raising, after ``on_suppressed(error)``; any other propagates unchanged."""
    try:
        yield
    except KafkaException as exc:
        error = kafka_error(exc)
        if error is None or not (codes(error) if callable(codes) else error.code() in codes):
            raise
        if on_suppressed is not None:
            on_suppressed(error)


def any_error(error: KafkaError) -> bool:
    """For ``suppress``: every error (the caller records it and decides)."""
    return True


def retry_transient(call: Callable[[], T], timeout_s: float, *, backoff_s: float = 0.5,
                    on_error: Callable[[BaseException], None] | None = None, quiet: bool = False) -> T:
    """``call()``, called again after ``backoff_s`` while it fails with a transient Kafka error, until
    ``timeout_s`` has passed (then the last error propagates). ``on_error(exc)`` is told of every
    Kafka error first (e.g. to drop a client whose metadata went stale)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            if on_error is not None:
                on_error(exc)
            if not is_transient(exc) or time.monotonic() > deadline:
                raise
            if not quiet:
                log.warning("transient Kafka error, retrying: %s", reason(exc))
            time.sleep(backoff_s)  # back-off between attempts against an unreachable broker


# -- calls that may outlive their timeout ----------------------------------------------------------
class BoundedCalls:
    """Runs one client's calls, one at a time, on a daemon thread, and waits for each at most its
    timeout plus ``grace_s``.

    librdkafka does not bound every wait by the timeout it is given: ``send_offsets_to_transaction``
    waits without limit for its TxnOffsetCommit, and that request waits, unbounded, for a group
    coordinator to send it to (librdkafka issues #5456, #5511). The call releases the GIL, so the
    caller can wait beside it. A call still running at its deadline raises ``ClientStuckError`` and is
    left where it is: its thread stays blocked inside librdkafka (a daemon: it does not hold the
    process at exit) and ends if the call ever returns. Every later call raises ``ClientStuckError`` at
    once; the owner replaces the client (``OonaProducer.renew``).
    """

    def __init__(self, name: str, grace_s: float) -> None:
        self.name = name
        self.grace_s = grace_s
        self.stuck: str | None = None  # the call that outlived its deadline
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    def call(self, what: str, call: Callable[[], T], timeout_s: float, *,
             on_wait: Callable[[float], None] | None = None, tick_s: float = 5.0) -> T:
        """``call()``'s result or exception, or ``ClientStuckError`` when it is still running after
        ``timeout_s + grace_s``. ``on_wait(seconds)`` is told every ``tick_s`` the call goes on (e.g. to
        log that a commit waits for an unreachable coordinator: its client's own error reports are only
        served between calls)."""
        if self.stuck is not None:
            raise ClientStuckError(f"{what} after {self.stuck}", 0.0)
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=f"{self.name}-calls", daemon=True)
            self._thread.start()
        outcome: list[Any] = []
        done = threading.Event()
        self._requests.put((call, outcome, done))
        waited_s = timeout_s + self.grace_s
        started = time.monotonic()
        while not done.wait(min(tick_s, max(0.0, started + waited_s - time.monotonic()))):
            if time.monotonic() - started < waited_s:
                if on_wait is not None:
                    on_wait(time.monotonic() - started)
                continue
            self.stuck = what
            self._requests.put(None)  # the thread ends after the blocked call, if it ever returns
            log.error("%s: %s still blocked %.0fs after it was called (timeout %gs); giving the client up",
                      self.name, what, waited_s, timeout_s)
            raise ClientStuckError(what, waited_s)
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def close(self) -> None:
        """End the call thread once its calls are done (a client replaced without being stuck)."""
        if self._thread is not None and self.stuck is None:
            self._requests.put(None)

    @property
    def blocked(self) -> bool:
        """A call outlived its deadline and has not returned yet."""
        return self.stuck is not None and self._thread is not None and self._thread.is_alive()

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            call, outcome, done = request
            try:
                outcome.append((True, call()))
            except BaseException as exc:  # handed to the caller, raised there
                outcome.append((False, exc))
            done.set()
