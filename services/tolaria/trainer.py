"""The training engine: epochs, the isolated seed pass, evaluation, optimizer rebuilds (no Kafka)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from services.kasmina.seed_manager import Evaluation, SeedManager
from services.tolaria.config import RunConfig
from services.tolaria.data import Dataset, Split


@dataclass(frozen=True)
class EpochStats:
    train_loss: float
    train_accuracy: float
    seconds: float
    samples_per_second: float


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda")
    return torch.device("cpu")


class Trainer:
    def __init__(
        self, model: nn.Module, manager: SeedManager, data: Dataset, cfg: RunConfig, device: torch.device
    ) -> None:
        self.model = model.to(device)
        self.manager = manager
        self.cfg = cfg
        self.device = device
        self.train_split = _to(data.train, device)
        self.val_split = _to(data.val, device)
        self.test_split = _to(data.test, device)
        self.optimizer = self._new_optimizer()

    # -- optimizer ------------------------------------------------------------------------------
    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _new_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optimizer
        params = self._trainable()
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if o.name == "adamw":
            return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)

    def rebuild_optimizer(self) -> None:
        """New parameter set (a kernel arrived or froze): keep the state of parameters that stay."""
        old = self.optimizer
        self.optimizer = self._new_optimizer()
        for group in self.optimizer.param_groups:
            group["lr"] = old.param_groups[0]["lr"]
            for p in group["params"]:
                if p in old.state:
                    self.optimizer.state[p] = old.state[p]

    def set_epoch_lr(self, epoch: int) -> float:
        s, base = self.cfg.schedule, self.cfg.optimizer.lr
        if s.kind == "cosine":
            lr = base * 0.5 * (1 + math.cos(math.pi * epoch / max(1, self.cfg.epochs)))
        elif s.kind == "step":
            lr = base * s.gamma ** (epoch // s.step_epochs)
        else:
            lr = base
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # -- training -------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, on_batch: Callable[[int, int], None] | None = None) -> EpochStats:
        self.model.train()
        split = self.train_split
        n = len(split.y)
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).to(self.device)
        batch = self.cfg.batch_size
        steps = math.ceil(n / batch)
        sample_every = self.cfg.telemetry.sample_every_steps
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        start = time.perf_counter()
        seed_params = self.manager.training_seed_parameters()
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            xb, yb = split.x[idx], split.y[idx]
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            if step % sample_every == 0:
                self.manager.observe_gradients()
            if seed_params:
                self._isolated_seed_pass(xb, yb, seed_params)
            self.optimizer.step()
            self.manager.after_optimizer_step()
            total_loss += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            if on_batch is not None:
                on_batch(step + 1, steps)
        seconds = time.perf_counter() - start
        return EpochStats(float(total_loss) / n, int(correct) / n, seconds, n / seconds if seconds > 0 else 0.0)

    def _isolated_seed_pass(self, xb: torch.Tensor, yb: torch.Tensor, params: list[nn.Parameter]) -> None:
        """TRAINING seeds learn the task at alpha 1 in a second pass; only their own parameters get gradients."""
        with self.manager.probe_training():
            loss = F.cross_entropy(self.model(xb), yb)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g

    def gradient_probe_loss(self, rows: int = 256) -> torch.Tensor:
        """The loss on the first ``rows`` training samples, with its graph (GradMax reads its gradients).

        In eval mode, so that the probe neither samples health statistics nor moves batch-norm statistics.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                return F.cross_entropy(self.model(self.train_split.x[:rows]), self.train_split.y[:rows])
        finally:
            self.model.train(was_training)

    @torch.inference_mode()
    def evaluate(self, split: str = "val") -> tuple[float, float]:
        data = {"val": self.val_split, "test": self.test_split, "train": self.train_split}[split]
        was_training = self.model.training
        self.model.eval()
        try:
            total, correct = 0.0, 0
            for i in range(0, len(data.y), 1024):
                xb, yb = data.x[i : i + 1024], data.y[i : i + 1024]
                logits = self.model(xb)
                total += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
            return total / len(data.y), correct / len(data.y)
        finally:
            self.model.train(was_training)

    def val_accuracy(self) -> float:
        return self.evaluate("val")[1]

    def val_evaluation(self) -> Evaluation:
        """Validation loss and accuracy now (what the fossilization gate compares with and without a seed)."""
        return Evaluation(*self.evaluate("val"))


def _to(split: Split, device: torch.device) -> Split:
    return Split(split.x.to(device), split.y.to(device))
