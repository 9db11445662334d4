"""Which blueprints Tezzeret has answered: committed answers, and claims of the open transaction (pure).

Submissions are keyed by blueprint id, so every submission of a blueprint sits in one
partition and their offsets order them. A claim joins the committed set only when its
transaction commits: after an abort the same record must answer again, while a later
duplicate of the same batch must not answer twice.
"""

from __future__ import annotations

from collections.abc import Iterable


class AnsweredBlueprints:
    def __init__(self, committed: Iterable[str] = ()) -> None:
        self.committed: set[str] = set(committed)
        self._claims: dict[str, int] = {}  # blueprint id -> offset of the submission that answers it

    def note_committed(self, blueprint_ids: Iterable[str]) -> None:
        """Answers seen on ``compilation.kernel.ready`` (ours or another worker's)."""
        self.committed.update(blueprint_ids)

    def claim(self, blueprint_id: str, offset: int) -> bool:
        """True when the submission at ``offset`` is the one to answer ``blueprint_id``."""
        if blueprint_id in self.committed:
            return False
        claimed = self._claims.get(blueprint_id)
        if claimed is not None and claimed < offset:
            return False  # a duplicate behind the claiming record
        # No claim, or the records are being handled again from an earlier offset (after an abort).
        self._claims[blueprint_id] = offset
        return True

    def committed_now(self) -> None:
        self.committed.update(self._claims)
        self._claims.clear()

    def aborted(self) -> None:
        self._claims.clear()
