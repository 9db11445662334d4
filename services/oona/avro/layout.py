"""The column layout a decoder fills: what the Avro layer needs of a table, and nothing more.

Nissa's ``Table`` (``services/nissa/tables.py``) satisfies it; the Avro layer never imports
Nissa. Columns with a ``path`` (the field path in the reader's record, flattened records
included) come first, in row order; columns without one (Nissa's Kafka coordinates) follow
and are not filled by decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # only the columnar decoder needs Arrow at run time
    import pyarrow as pa


class LayoutColumn(Protocol):
    @property
    def path(self) -> tuple[str, ...]: ...

    @property
    def arrow_type(self) -> pa.DataType: ...

    @property
    def default(self) -> Any: ...  # the value when a (historical) writer schema lacks the field


class ColumnLayout(Protocol):
    @property
    def columns(self) -> Sequence[LayoutColumn]: ...


@dataclass(frozen=True)
class NoColumns:
    """A layout with no columns: decoding only checks the body (see ``compile_validator``)."""

    columns: tuple[LayoutColumn, ...] = ()
