"""Which policy versions Tamiyo knows and which one is promoted: a pure projection (no Kafka) of
``library.policies`` and ``library.policy.promotions``.

- **Versions.** A ``PolicyPublished`` record is believed only once its artifact checks: the checksum
  is the bytes', the bytes are a safetensors state dict (weights only: nothing is executed), the tensors
  have the names, shapes and dtype of the declared architecture and are finite, the features and
  families are this Tamiyo's, the weights hash to the declared version (``policy_store``). A record that
  fails is refused with its reason (kept, newest last, at most ``MAX_REFUSALS_KEPT``) and never replaces
  a version already believed; a record of a version already believed is the same weights again
  (the version is their hash), so it changes nothing.
- **The shipped policy** (``services/tamiyo/policies/initial``) is known to every instance without the
  topic, and is the promoted one while the log promotes nothing.
- **Promotion.** Promotions fold in log order; the latest wins (compaction keeps it, see
  ``contracts.policies``). A promotion is recorded even when its version is not (yet) believed: the
  topics are read independently, so the version may arrive later; until it does, runs decided by the
  promoted one get the reason instead of a policy (``why_not``).
- **Per run.** A run is decided by the version its session names; a run naming none by the version
  that made its first decision (``RunState.policy_version``, rebuilt from Tamiyo's own decisions), i.e.
  the one promoted when it was first decided: promoting another does not change the policy of a run
  in progress, so a restart, a replay and the live service decide it alike.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

from contracts import PolicyPromoted, PolicyPublished
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.policy_store import PolicyError, PolicyRecord, policy_artifact, policy_from_artifact

log = logging.getLogger(__name__)

MAX_REFUSALS_KEPT = 1024
POLICIES_KEPT_LOADED = 16  # versions whose modules are kept (about 100-300 kB each); others reload on demand


@dataclass(frozen=True)
class KnownVersion:
    """A believed version: its record (artifact included, so it can be loaded again) and whether it ships."""

    record: PolicyPublished | None  # None: the shipped policy (from the checkout, not the topic)
    version: str
    trained_on: str
    shipped: bool = False


class PolicyRegistry:
    """Feed it the two topics' records in log order (each topic's own order; the two interleave freely)."""

    def __init__(self, shipped: TamiyoPolicy, shipped_record: PolicyRecord) -> None:
        self.shipped_version = shipped_record.version
        self.versions: dict[str, KnownVersion] = {
            shipped_record.version: KnownVersion(None, shipped_record.version, shipped_record.trained_on, True)}
        self.refused: dict[str, str] = {}  # version claimed -> why the latest record claiming it was refused
        self.promotions: list[PolicyPromoted] = []  # the latest few, oldest first (``promoted`` is the last)
        self._promoted: str | None = None
        self._shipped = shipped  # kept apart: it cannot be read again from the topic
        self._loaded: OrderedDict[str, TamiyoPolicy] = OrderedDict()

    # -- folding --------------------------------------------------------------------------------------
    def publish(self, record: PolicyPublished) -> str | None:
        """Believe the version, or refuse it: returns None, or the reason it was refused."""
        if record.version in self.versions:
            return None  # the version is the weights' hash: the same weights again
        try:
            policy = policy_of(record)
        except PolicyError as exc:
            self.refused.pop(record.version, None)
            self.refused[record.version] = str(exc)
            while len(self.refused) > MAX_REFUSALS_KEPT:  # versions come from the bus: keep the newest few
                self.refused.pop(next(iter(self.refused)))
            log.warning("refused policy version=%s reason=%s", record.version, exc)
            return str(exc)
        self.refused.pop(record.version, None)
        self.versions[record.version] = KnownVersion(record, record.version, record.trained_on)
        self._keep(record.version, policy)
        log.info("policy version=%s known (trained_on=%s)", record.version, record.trained_on[:80])
        return None

    def promote(self, record: PolicyPromoted) -> None:
        self._promoted = record.version
        self.promotions = self.promotions[-(MAX_REFUSALS_KEPT - 1):] + [record]
        log.info("policy version=%s promoted by=%s", record.version, record.promoted_by)

    # -- reading --------------------------------------------------------------------------------------
    @property
    def promoted(self) -> str:
        """The promoted version: the log's latest promotion, else the shipped policy."""
        return self._promoted or self.shipped_version

    def why_not(self, version: str) -> str | None:
        """None when ``version`` can decide; else why not, in one line."""
        if version in self.versions:
            return None
        if version in self.refused:
            return f"policy version {version} was refused: {self.refused[version]}"
        return f"policy version {version} is not on library.policies (publish it: esper policy publish)"

    def policy(self, version: str) -> TamiyoPolicy:
        """The loaded policy of a known version; PolicyError with ``why_not`` otherwise."""
        if version == self.shipped_version:
            return self._shipped
        loaded = self._loaded.get(version)
        if loaded is not None:
            self._loaded.move_to_end(version)
            return loaded
        known = self.versions.get(version)
        if known is None or known.record is None:
            raise PolicyError(self.why_not(version) or f"policy version {version} is not loaded")
        policy = policy_of(known.record)  # it checked when it was believed; the bytes are the same
        self._keep(version, policy)
        return policy

    def _keep(self, version: str, policy: TamiyoPolicy) -> None:
        self._loaded[version] = policy
        while len(self._loaded) > POLICIES_KEPT_LOADED:
            self._loaded.popitem(last=False)


def policy_of(record: PolicyPublished) -> TamiyoPolicy:
    """The policy a published record carries, every check passed; PolicyError (one line) otherwise."""
    where = f"policy version {record.version}"
    digest = hashlib.sha256(record.artifact).hexdigest()
    if digest != record.checksum:
        raise PolicyError(f"{where}: the artifact's sha256 is {digest[:12]}..., the record says "
                          f"{record.checksum[:12]}...")
    return policy_from_artifact(record.artifact, version=record.version, hidden=record.hidden, layers=record.layers,
                                features=record.features, families=record.families, where=where)


def published_record(policy: TamiyoPolicy, record: PolicyRecord) -> PolicyPublished:
    """The ``library.policies`` record of a policy (and its file's metadata)."""
    artifact = policy_artifact(policy)
    return PolicyPublished(version=record.version, hidden=record.hidden, layers=record.layers,
                           features=record.features, families=record.families, trained_on=record.trained_on[:2000],
                           metrics=record.metrics, checksum=hashlib.sha256(artifact).hexdigest(), artifact=artifact)
