"""A writer schema as published on the schema log (``_esper_schemas``), before its first use.

The schema log is Esper's registry without a server, the way Confluent's registry keeps its
own ``_schemas`` topic: a compacted topic keyed by the 8-byte CRC-64-AVRO fingerprint (hex) of
the schema's parsing canonical form. The value is this record as JSON; ``writer_schema`` is the whole
schema JSON as the producer's store holds it (logical types and defaults included, which the
canonical form drops), so that a consumer one version behind can decode what it names.
"""

from __future__ import annotations

from pydantic import Field

from contracts._base import Contract

# Avro names: [A-Za-z_][A-Za-z0-9_]*; a record name here is the short name (e.g. HealthSignalMessage).
AVRO_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_PUBLISHED_SCHEMA_CHARS = 256 * 1024


class PublishedSchema(Contract):
    fingerprint: str = Field(pattern=r"^[0-9a-f]{16}$")
    record_name: str = Field(pattern=AVRO_NAME_PATTERN, max_length=200)
    version: int = Field(ge=1)
    writer_schema: str = Field(min_length=2, max_length=MAX_PUBLISHED_SCHEMA_CHARS)
