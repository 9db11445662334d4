"""Seed health signals of one run as arrays: one block per epoch, one row per seed slot.

A signal is staged when it is folded: its fields' values, read by one C-level getter from the object's
``__dict__`` (a pydantic model keeps its fields there; reading them as attributes costs twice as much), in
a dict by row. The staged values of an epoch are written into that epoch's block in one step the next
time the table is read. Measured per signal (750 HealthSignals, process time): staging the object and
reading its attributes at the read cost 0.04 + 0.55 µs; staging its values costs 0.17 + 0.20 µs, so the
decision that reads the table waits for less, and the whole costs less. Any per-event numpy or ``array``
write costs more (0.5-0.85 µs).

A batch of signals (``add_many``: an epoch's, as the decision's fold hands them over) is written straight
into its epoch's block, one fancy-index write per epoch in the batch, with the same rule as ``add`` one by
one: the first signal of a (row, epoch) stands, a later one (in the batch or before it) is refused.

``latest`` answers, for every slot at once, "the last ``last`` signals of epochs <= ``epoch``", which
is what the features need: no loop over seeds, only over epochs, newest first, and that loop stops as
soon as every slot has its ``last`` signals (after ``last`` epochs when every slot reports every epoch,
as Tolaria's do).

Values are kept as float64, exactly as they came (the features are computed from them in
float64 and cast to float32 once, as before). Pure: numpy only, no torch.

Shapes: a block is (rows, len(HEALTH_FIELDS)) float64; ``latest`` returns values
(S, last, F) newest first, their epochs (S, last) (-1 where none) and the count (S,).
"""

from __future__ import annotations

from itertools import chain
from operator import itemgetter

import numpy as np

HEALTH_FIELDS: tuple[str, ...] = (
    "health_score", "activation_variance", "dead_neuron_ratio", "avg_correlation", "gradient_norm",
    "execution_latency", "error_count", "is_ready_for_transition", "capacity_gain",
)
COLUMN = {name: i for i, name in enumerate(HEALTH_FIELDS)}
_VALUES_OF = itemgetter(*HEALTH_FIELDS)  # of the signal's __dict__


class HealthTable:
    """Health signals by (epoch, row); a row is a seed slot (numbered by the caller)."""

    def __init__(self) -> None:
        self._blocks: dict[int, np.ndarray] = {}  # epoch -> (capacity, F) float64
        self._present: dict[int, np.ndarray] = {}  # epoch -> (capacity,) bool
        self._staged: dict[int, dict[int, tuple]] = {}  # epoch -> row -> its values, not written yet

    def add(self, row: int, epoch: int, signal: object) -> bool:
        """Stage one signal (an object with the ``HEALTH_FIELDS`` attributes in its ``__dict__``, numbers); False
        if the slot already has one for ``epoch`` (the table is unchanged)."""
        staged = self._staged.get(epoch)
        if staged is None:
            staged = self._staged[epoch] = {}
        elif row in staged:
            return False
        present = self._present.get(epoch)
        if present is not None and row < present.shape[0] and present[row]:
            return False
        staged[row] = _VALUES_OF(signal.__dict__)
        return True

    def add_many(self, rows: np.ndarray, epochs: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``add`` of every signal in order, as array work: ``rows`` and ``epochs`` (n,) int64, ``values`` (n, F)
        float64 in ``HEALTH_FIELDS`` order. Returns (n,) bool: the signals taken (the others leave the table
        unchanged: their slot already had one for that epoch, before the batch or earlier in it)."""
        if rows.shape[0] == 0:
            return np.zeros(0, dtype=bool)
        first = int(epochs.min())
        if first == int(epochs.max()):  # the usual case: one epoch's signals
            return self._add_epoch(first, rows, values)
        taken = np.zeros(rows.shape[0], dtype=bool)
        for epoch in np.unique(epochs).tolist():
            at = np.flatnonzero(epochs == epoch)
            taken[at] = self._add_epoch(epoch, rows[at], values[at])
        return taken

    def _add_epoch(self, epoch: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``add_many`` of signals of one epoch, written into its block at once."""
        if int(np.bincount(rows).max()) > 1:  # a slot twice in the batch: the first stands
            fresh = np.zeros(rows.shape[0], dtype=bool)
            fresh[np.unique(rows, return_index=True)[1]] = True
        else:
            fresh = np.ones(rows.shape[0], dtype=bool)
        present = self._present.get(epoch)
        if present is not None:
            inside = rows < present.shape[0]
            fresh[inside] &= ~present[rows[inside]]
        staged = self._staged.get(epoch)
        if staged:
            fresh &= ~np.isin(rows, np.fromiter(staged.keys(), dtype=np.int64, count=len(staged)))
        if not fresh.all():
            if not fresh.any():
                return fresh
            rows, values = rows[fresh], values[fresh]
        block, present = self._block(epoch, int(rows.max()) + 1)
        block[rows] = values
        present[rows] = True
        return fresh

    def _write_staged(self) -> None:
        for epoch, staged in self._staged.items():
            if not staged:
                continue
            rows = np.fromiter(staged.keys(), dtype=np.int64, count=len(staged))
            values = np.fromiter(chain.from_iterable(staged.values()), dtype=np.float64,
                                 count=len(staged) * len(HEALTH_FIELDS)).reshape(len(staged), len(HEALTH_FIELDS))
            block, present = self._block(epoch, int(rows.max()) + 1)
            block[rows] = values
            present[rows] = True
        self._staged.clear()

    def _block(self, epoch: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        block, present = self._blocks.get(epoch), self._present.get(epoch)
        if block is None or present is None or block.shape[0] < rows:
            capacity = max(rows, 2 * block.shape[0] if block is not None else rows)
            grown = np.zeros((capacity, len(HEALTH_FIELDS)), dtype=np.float64)
            grown_present = np.zeros(capacity, dtype=bool)
            if block is not None and present is not None:  # set together, always
                grown[:block.shape[0]] = block
                grown_present[:present.shape[0]] = present
            block, present = self._blocks[epoch], self._present[epoch] = grown, grown_present
        return block, present

    def latest(self, rows: np.ndarray, epoch: int, last: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each of ``rows``: its last ``last`` signals of epochs <= ``epoch``, newest first.

        Returns (values (S, last, F), epochs (S, last) with -1 where there is none, count (S,))."""
        self._write_staged()
        n = rows.shape[0]
        values = np.zeros((n, last, len(HEALTH_FIELDS)), dtype=np.float64)
        epochs = np.full((n, last), -1, dtype=np.int64)
        count = np.zeros(n, dtype=np.int64)
        if n == 0:
            return values, epochs, count
        highest = int(rows.max())
        uniform = True  # every row has as many signals so far (the usual case: every slot reports every epoch)
        for k in sorted((k for k in self._blocks if k <= epoch), reverse=True):
            present = self._present[k]
            if uniform and highest < present.shape[0] and present[rows].all():  # the whole column at once
                column = int(count[0])
                values[:, column] = self._blocks[k][rows]
                epochs[:, column] = k
                count += 1
                if column + 1 >= last:
                    break
                continue
            uniform = False
            inside = rows < present.shape[0]
            have = np.zeros(n, dtype=bool)
            have[inside] = present[rows[inside]]
            take = np.flatnonzero(have & (count < last))
            if take.size:
                at = count[take]
                values[take, at] = self._blocks[k][rows[take]]
                epochs[take, at] = k
                count[take] = at + 1
                if int(count.min()) >= last:
                    break
        return values, epochs, count
