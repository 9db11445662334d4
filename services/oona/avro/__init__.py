"""Esper's one Avro layer: single-object framing, the generated encoder and both decoders.

Everything that turns our committed schemas into bytes or bytes back into values lives here,
and every decoder is total: whatever bytes it is given, it returns a value or raises
``DecodeError`` with a reason (the columnar decoder flags bad rows instead). The checks are
in one place: varint width (at most 10 bytes, value within 64 bits), lengths and block counts
against the bytes that remain, UTF-8, enum indexes, union branches, value ranges (int, the
timestamps fastavro can represent) and trailing bytes.

    framing.py       ``C3 01`` + CRC-64-AVRO fingerprint header
    schema_walk.py   named types, ``[null, X]`` unions, flattened records (pure schema logic)
    layout.py        the column layout a decoder fills (Nissa's ``Table`` is one)
    wire.py          varints and the value bounds every decoder checks
    encoder.py       objects -> bytes, generated once per schema
    row_decoder.py   bytes -> one row tuple, one record (dicts), or nothing (a validator), generated
    model_decoder.py bytes -> the contract's models, its constraints checked inline, generated
                     (from the plans of ``services/oona/contract_checks.py``)
    columnar.py      a batch of bytes -> Arrow columns, vectorised with numpy

``columnar`` is imported from its module (``services.oona.avro.columnar``), not from here:
it needs numpy and pyarrow, which the services' codec path does not load.
"""

from services.oona.avro.encoder import compile_encoder, encode_long
from services.oona.avro.framing import HEADER_LEN, SINGLE_OBJECT_MAGIC, single_object_fingerprint
from services.oona.avro.layout import ColumnLayout, LayoutColumn
from services.oona.avro.row_decoder import RowDecoder, compile_decoder, compile_record_decoder, compile_validator

__all__ = [
    "HEADER_LEN",
    "SINGLE_OBJECT_MAGIC",
    "ColumnLayout",
    "LayoutColumn",
    "RowDecoder",
    "compile_decoder",
    "compile_encoder",
    "compile_record_decoder",
    "compile_validator",
    "encode_long",
    "single_object_fingerprint",
]
