"""The seed lifecycle as an explicit transition table (pure, no torch).

    DORMANT -> GERMINATED -> TRAINING -> GRAFTING -> FOSSILIZED
                   \\             \\           \\
                    +-------------+-----------+--> CULLED --(embargo)--> DORMANT
"""

from __future__ import annotations

from contracts import SeedState
from services.core.errors import EsperError

TRANSITIONS: dict[SeedState, frozenset[SeedState]] = {
    SeedState.DORMANT: frozenset({SeedState.GERMINATED}),
    SeedState.GERMINATED: frozenset({SeedState.TRAINING, SeedState.CULLED}),
    SeedState.TRAINING: frozenset({SeedState.GRAFTING, SeedState.CULLED}),
    SeedState.GRAFTING: frozenset({SeedState.FOSSILIZED, SeedState.CULLED}),
    SeedState.FOSSILIZED: frozenset(),
    SeedState.CULLED: frozenset({SeedState.DORMANT}),
}

# States whose seed holds a kernel.
HAS_KERNEL = frozenset({SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING, SeedState.FOSSILIZED})
# States that count as "active" (Seed.is_active): the seed is learning.
ACTIVE = frozenset({SeedState.TRAINING, SeedState.GRAFTING})
# States a command may cull.
CULLABLE = frozenset({SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING})

STATE_CODES: tuple[SeedState, ...] = tuple(SeedState)


class IllegalTransitionError(EsperError, ValueError):
    def __init__(self, from_state: SeedState, to_state: SeedState, seed: str = "") -> None:
        self.from_state, self.to_state = from_state, to_state
        where = f"seed {seed}: " if seed else ""
        allowed = ", ".join(s.value for s in sorted(TRANSITIONS[from_state], key=STATE_CODES.index)) or "none"
        super().__init__(f"{where}illegal transition {from_state.value} -> {to_state.value} (allowed: {allowed})")


def check_transition(from_state: SeedState, to_state: SeedState, seed: str = "") -> None:
    if to_state not in TRANSITIONS[from_state]:
        raise IllegalTransitionError(from_state, to_state, seed)


def state_code(state: SeedState) -> int:
    return STATE_CODES.index(state)


def state_of(code: int) -> SeedState:
    return STATE_CODES[int(code)]
