"""``esper learn``: the learning loop on a running system — collect, train, evaluate against honest baselines.

1. **Tasks.** One run config is a task family; a task is the config with a random seed, which draws its data
   (a new sample of the spirals, board or bits) and its initial weights. Training tasks and held-out tasks are
   disjoint seeds (``LoopPlan``): the new policy is judged on data it never saw.
2. **Collect.** A run per training task under the promoted policy with exploration (``exploration``: the chance
   per epoch that Tamiyo grows a random slot and family instead; each such decision records ``explored``).
3. **Train.** ``esper policy train``'s learner on those runs (each germination, the graph as Tamiyo saw it, the
   field report's measured contribution minus a parameter charge as the reward), starting from the promoted
   policy; the new version is written and published on ``library.policies`` (not promoted).
4. **Evaluate** on every held-out task, five arms: ``promoted`` and ``new`` (the two policy versions),
   ``heuristic`` (the teacher's rule the shipped policy imitates), ``random`` (random slot, kernel and epoch with
   as many germinations as the new policy decided on that task) and ``no_adapt``:
   * real runs from epoch 0, one per arm;
   * paired forks: the ``no_adapt`` real run (which keeps every epoch's checkpoint) is the parent; each arm is a
     fork of it at the end of epoch ``fork_epoch``, so all five start from the very same weights and data order
     and differ only in what their controller does next.
5. **Report** (``learn_report``): mean validation accuracy per arm with its 95 % CI, and the paired differences
   new − promoted, new − random, ... per task with their CI.

Run ids: ``LOOP-c-sSEED`` (collect), ``LOOP-r-ARM-sSEED`` (real), ``LOOP-f-ARM-sSEED`` (forks), so Nissa's SQL
finds every run of a loop by prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from contracts import CommandAction
from services.core.errors import EsperError, UsageError
from services.tolaria.config import RunConfig, parse_config

log = logging.getLogger(__name__)

ARMS = ("promoted", "new", "heuristic", "random", "no_adapt")


@dataclass(frozen=True)
class LoopPlan:
    loop_id: str
    config: RunConfig
    train_seeds: tuple[int, ...]
    heldout_seeds: tuple[int, ...]
    exploration: float = 0.3
    fork_epoch: int = 2
    train_epochs: int = 10
    reward: str = "loss"  # the gate's contribution in validation loss (``services.tamiyo.training``)
    parameter_charge: float = 0.0  # the arms are judged on accuracy alone

    def __post_init__(self) -> None:
        if not self.train_seeds or not self.heldout_seeds:
            raise UsageError("the loop needs at least one training seed and one held-out seed")
        if set(self.train_seeds) & set(self.heldout_seeds):
            raise UsageError(f"training and held-out seeds overlap: "
                             f"{sorted(set(self.train_seeds) & set(self.heldout_seeds))}")
        if not 0 <= self.fork_epoch < self.config.epochs - 1:
            raise UsageError(f"--fork-epoch must be within 0..{self.config.epochs - 2} (the config has "
                             f"{self.config.epochs} epochs)")
        if self.config.adaptation.auto_advance:
            raise UsageError("the loop's config must leave the seeds' lifecycle to Tamiyo (adaptation.auto_advance: "
                             "false), so that every arm's controller decides all of it")

    def collect_id(self, seed: int) -> str:
        return f"{self.loop_id}-c-s{seed}"

    def real_id(self, arm: str, seed: int) -> str:
        return f"{self.loop_id}-r-{arm}-s{seed}"

    def fork_id(self, arm: str, seed: int) -> str:
        return f"{self.loop_id}-f-{arm}-s{seed}"

    def task(self, seed: int, **update) -> RunConfig:
        """The family's task of ``seed``; every epoch's checkpoint kept (a real run may be a fork parent)."""
        data = self.config.model_dump(mode="json")
        return parse_config({**data, "seed": seed, "name": f"{self.config.name}-s{seed}"[:100],
                             "checkpoint_keep_epochs": self.config.epochs, "experiment": None, "fork": None,
                             **update}, "learn")


@dataclass(frozen=True)
class ArmRun:
    arm: str
    seed: int
    kind: str  # "real" or "fork"
    run_id: str
    validation_accuracy: float
    test_accuracy: float
    parameters: int
    germinations: int
    parent_run_id: str | None = None
    fork_epoch: int | None = None


@dataclass
class LoopResult:
    plan: LoopPlan
    promoted: str
    new_version: str = ""
    policy_path: str = ""
    train_metrics: dict[str, float] = field(default_factory=dict)
    collected: list[ArmRun] = field(default_factory=list)
    explored_decisions: int = 0
    runs: list[ArmRun] = field(default_factory=list)


class Loop:
    """The loop's steps against one system (settings); ``advance`` moves a progress bar by one run."""

    def __init__(self, plan: LoopPlan, settings, codec, *, progress: bool = False,
                 on_run: Callable[[ArmRun], None] | None = None) -> None:
        self.plan, self.settings, self.codec = plan, settings, codec
        self.progress, self.on_run = progress, on_run

    # -- the steps ----------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        from services.core.progress import progress_bar

        registry = self._registry()
        result = LoopResult(self.plan, promoted=registry.promoted)
        plan = self.plan
        with progress_bar(f"learn {plan.loop_id}: collect", len(plan.train_seeds), self.progress) as advance:
            for seed in plan.train_seeds:
                result.collected.append(self._real("collect", seed, plan.collect_id(seed), plan.task(
                    seed, policy_version=result.promoted, exploration=plan.exploration)))
                advance(1)
        result.explored_decisions = sum(self._explored(r.run_id) for r in result.collected)
        self._train(result, registry.policy(result.promoted))
        with progress_bar(f"learn {plan.loop_id}: evaluate", len(plan.heldout_seeds) * 2 * len(ARMS),
                          self.progress) as advance:
            for seed in plan.heldout_seeds:
                result.runs.extend(self._evaluate(result, seed, advance))
        return result

    def _train(self, result: LoopResult, start) -> None:
        from services.core.progress import progress_bar
        from services.tamiyo.policy_registry import published_record
        from services.tamiyo.policy_store import load_policy, save_policy
        from services.tamiyo.policy_topics import publish_policy
        from services.tamiyo.training import train_from_runs

        run_ids = [r.run_id for r in result.collected]
        with progress_bar(f"learn {self.plan.loop_id}: train", self.plan.train_epochs, self.progress) as advance:
            policy, metrics = train_from_runs(self.settings.kafka, self.codec, start, run_ids,
                                              epochs=self.plan.train_epochs, reward=self.plan.reward,
                                              parameter_charge=self.plan.parameter_charge,
                                              progress=lambda done, total: advance(1))
        path = save_policy(policy, self.settings.state_dir / "policies", "runs " + ",".join(run_ids), metrics)
        _, record = load_policy(path)
        publish_policy(self.settings.kafka, self.codec, published_record(policy, record))
        result.new_version, result.policy_path, result.train_metrics = policy.version(), str(path), metrics
        log.info("learn trained policy=%s from=%s samples=%d", result.new_version, result.promoted,
                 int(metrics["samples"]))

    def _evaluate(self, result: LoopResult, seed: int, advance: Callable[[int], None]) -> list[ArmRun]:
        plan, out = self.plan, []
        policies: dict[str, dict] = {"promoted": {"policy_version": result.promoted},
                                     "new": {"policy_version": result.new_version}}
        controllers = {**policies, "heuristic": {"controller": "heuristic"}, "no_adapt": {}}
        for arm in ("no_adapt", "promoted", "new", "heuristic"):  # no_adapt first: the forks' parent
            out.append(self._real(arm, seed, plan.real_id(arm, seed), plan.task(seed, **controllers[arm]),
                                  no_adapt=arm == "no_adapt"))
            advance(1)
        new_real = next(r for r in out if r.arm == "new")
        random_budget = {"adaptation": {**plan.config.adaptation.model_dump(mode="json"),
                                        "budget": new_real.germinations}}
        out.append(self._real("random", seed, plan.real_id("random", seed),
                              plan.task(seed, controller="random", **random_budget)))
        advance(1)
        parent = plan.real_id("no_adapt", seed)
        forks = {**policies, "heuristic": {"controller": "heuristic"}, "no_adapt": {"no_adapt": True}}
        for arm in ("no_adapt", "promoted", "new", "heuristic"):
            out.append(self._fork(arm, seed, parent, forks[arm]))
            advance(1)
        new_fork = next(r for r in out if r.arm == "new" and r.kind == "fork")
        out.append(self._fork("random", seed, parent, {"controller": "random", "budget": new_fork.germinations}))
        advance(1)
        return out

    # -- one run ------------------------------------------------------------------------------------
    def _real(self, arm: str, seed: int, run_id: str, cfg: RunConfig, *, no_adapt: bool = False) -> ArmRun:
        from services.tolaria.run import start_run

        r = start_run(cfg, self.settings, run_id=run_id, no_adapt=no_adapt, progress=False)
        return self._done(ArmRun(arm, seed, "real", r.run_id, r.validation_accuracy, r.test_accuracy,
                                 r.parameter_count, self._germinations(r.run_id, decided=not no_adapt)))

    def _fork(self, arm: str, seed: int, parent: str, how: dict) -> ArmRun:
        from services.tolaria.fork import ForkRequest
        from services.tolaria.run import fork_run

        run_id = self.plan.fork_id(arm, seed)
        r = fork_run(ForkRequest(parent, self.plan.fork_epoch, **how), self.settings, run_id=run_id, progress=False)
        return self._done(ArmRun(arm, seed, "fork", r.run_id, r.validation_accuracy, r.test_accuracy,
                                 r.parameter_count, self._germinations(r.run_id, decided=not how.get("no_adapt")),
                                 parent, self.plan.fork_epoch))

    def _done(self, run: ArmRun) -> ArmRun:
        log.info("learn run done arm=%s kind=%s seed=%d run_id=%s val_acc=%.4f germinations=%d", run.arm, run.kind,
                 run.seed, run.run_id, run.validation_accuracy, run.germinations)
        if self.on_run is not None:
            self.on_run(run)
        return run

    # -- reading the log ----------------------------------------------------------------------------
    def _decisions(self, run_id: str) -> list:
        from services.tamiyo.recorded import UnknownRunError, load_recorded_runs

        try:
            return load_recorded_runs(self.settings.kafka, self.codec, [run_id])[run_id].decisions
        except UnknownRunError:
            return []

    def _germinations(self, run_id: str, *, decided: bool) -> int:
        """Germinations Tamiyo decided in the run (the budget a random baseline gets to match it). ``decided``: a
        run with a controller, which Tamiyo must have decided: an arm nobody decided is no evidence, so stop."""
        decisions = self._decisions(run_id)
        if decided and not decisions:
            raise EsperError(f"Tamiyo decided nothing in run {run_id}: is it serving this system (esper status)?")
        return sum(1 for d in decisions if d.action is CommandAction.GERMINATE)

    def _explored(self, run_id: str) -> int:
        return sum(1 for d in self._decisions(run_id) if d.explored)

    def _registry(self):
        return policy_registry(self.settings.kafka, self.codec)


def policy_registry(kafka, codec):
    """Every policy version on the bus and the promoted one, as every Tamiyo instance folds them."""
    from services.tamiyo.policy_registry import PolicyRegistry
    from services.tamiyo.policy_store import INITIAL_POLICY, load_policy
    from services.tamiyo.policy_topics import load_registry

    return load_registry(kafka, codec, PolicyRegistry(*load_policy(INITIAL_POLICY)))


def by_arm(runs: Sequence[ArmRun], kind: str) -> dict[str, list[ArmRun]]:
    return {arm: sorted((r for r in runs if r.kind == kind and r.arm == arm), key=lambda r: r.seed) for arm in ARMS}
