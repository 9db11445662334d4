"""``esper dlq``: list dead letters, show one, re-drive a selection to its source topics after a fix.

    esper dlq list [--topic T] [--group G] [--reason SUBSTR]
    esper dlq show OFFSET | --source TOPIC:PARTITION:OFFSET
    esper dlq redrive [--reason SUBSTR] [--topic T] [--group G] [--from-offset N --to-offset M] [--dry-run]

Every string off the bus is shown as plain text (never parsed as rich markup).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from services.core.errors import EsperError

if TYPE_CHECKING:  # the records' module loads pyarrow: only the handlers import it (fast `esper --help`)
    from services.oona.dlq_records import DlqRecord, Selection

HEX_LIMIT = 4096  # bytes of a value shown as hex


def _offset(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise _error(f"{flag} {text!r} is not a DLQ offset (a number >= 0)")
    return int(text)


def _error(message: str) -> EsperError:
    from services.oona.dlq_tools import DeadLetterError

    return DeadLetterError(message)


def _selection(args: argparse.Namespace, prefix: str) -> Selection:
    start = _offset(getattr(args, "from_offset", None), "--from-offset")
    end = _offset(getattr(args, "to_offset", None), "--to-offset")
    if start is not None and end is not None and end < start:
        raise _error(f"--to-offset {end} is before --from-offset {start}")
    from services.oona.dlq_records import Selection

    return Selection(topic=args.topic, group=args.group, reason=args.reason, from_offset=start, to_offset=end,
                     prefix=prefix)


def _read(settings) -> list[DlqRecord]:
    from services.oona.admin import wait_for_broker
    from services.oona.clients import map_exceptions
    from services.oona.dlq_tools import read_dlq

    wait_for_broker(settings.kafka)
    with map_exceptions(lambda reason: _error(f"cannot read the DLQ: {reason}")):
        records = read_dlq(settings.kafka)
    return records


def _when(value) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _cmd_list(args: argparse.Namespace, settings) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from services.oona.dlq_records import summarize

    selection = _selection(args, settings.kafka.topic_prefix)
    rows = summarize(_read(settings), selection)
    if not rows:
        print("no dead letters" + (" match" if any((args.topic, args.group, args.reason)) else ""))
        return 0
    table = Table(show_header=True)
    for column in ("source topic", "group", "reason", "count", "re-driven", "first seen", "last seen",
                   "dlq offsets"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(Text(row.topic), Text(row.group or "-"), Text(row.reason), str(row.count), str(row.redriven),
                      _when(row.first_seen), _when(row.last_seen), f"{row.first_offset}..{row.last_offset}")
    Console(soft_wrap=False).print(table)
    print(f"{sum(r.count for r in rows)} dead letter(s) in {len(rows)} group(s)")
    return 0


def render_value(settings, letter: DlqRecord) -> tuple[str, str]:
    """(how it was decoded, the text): through the codec as JSON where possible, else JSON/UTF-8 text, else hex."""
    from services.core.errors import UnknownTopicError
    from services.oona.codec import make_codec
    from services.oona.topic_registry import topic_spec

    value = letter.value
    if value is None:
        return "none", "(no value)"
    prefix = settings.kafka.topic_prefix
    name = letter.source_topic[len(prefix):] if letter.source_topic.startswith(prefix) else letter.source_topic
    try:
        spec = topic_spec(name, prefix)
    except UnknownTopicError:
        spec = None
    if spec is not None and not spec.raw:
        codec = make_codec(settings.kafka.schema_registry_url)
        try:
            return f"{spec.record_name} (valid)", codec.decode(spec, value).model_dump_json(indent=2)
        except Exception:  # whatever the bytes hold: show them another way
            pass
        decode_record = getattr(codec, "decode_record", None)
        if decode_record is not None:
            try:
                record = decode_record(spec, value)
                return f"{spec.record_name} (Avro, not valid as a contract)", json.dumps(record, indent=2, default=str)
            except Exception:
                pass
    try:
        return "JSON", json.dumps(json.loads(value), indent=2)
    except ValueError:
        pass
    try:
        return "UTF-8 text", value.decode("utf-8")
    except UnicodeDecodeError:
        shown = value[:HEX_LIMIT].hex(" ")
        more = f"\n... {len(value) - HEX_LIMIT} more bytes" if len(value) > HEX_LIMIT else ""
        return f"hex ({len(value)} bytes)", shown + more


def _cmd_show(args: argparse.Namespace, settings) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from services.oona.dlq_records import parse_source, redriven

    if (args.offset is None) == (args.source is None):
        raise _error("dlq show needs a DLQ OFFSET or --source TOPIC:PARTITION:OFFSET (one of them)")
    offset = _offset(args.offset, "OFFSET")
    try:
        source = parse_source(args.source) if args.source is not None else None
    except ValueError as exc:
        raise _error(str(exc)) from None
    records = _read(settings)
    prefix = settings.kafka.topic_prefix
    if source is not None:
        topic, partition, source_offset = source
        found = [r for r in records if not r.is_marker and r.source_topic in (topic, prefix + topic)
                 and r.source_partition == partition and r.source_offset == source_offset]
        what = f"no dead letter of {args.source} (see esper dlq list)"
    else:
        found = [r for r in records if r.offset == offset and not r.is_marker]
        what = f"no dead letter at DLQ offset {offset} (see esper dlq list)"
    if not found:
        raise _error(what)
    done = redriven(records)
    markers = {(r.partition, r.redrive_of): r for r in records if r.redrive_of is not None}
    console = Console(soft_wrap=False)
    for letter in found:
        table = Table(show_header=True, title=f"dead letter at DLQ offset {letter.offset}")
        table.add_column("header", overflow="fold")
        table.add_column("value", overflow="fold")
        for key, value in letter.dlq_headers:
            table.add_row(Text(key), Text(_header_text(value)))
        originals = letter.original_headers
        for key, value in originals:
            table.add_row(Text(f"(original) {key}"), Text(_header_text(value)))
        if not originals:
            table.add_row(Text("(original headers)"), Text("none"))
        table.add_row(Text("key"), Text(_header_text(letter.key)))
        if (letter.partition, letter.offset) in done:
            marker = markers[(letter.partition, letter.offset)]
            table.add_row(Text("re-driven"), Text(f"to {marker.header('esper.dlq.redriven_to')} at "
                                                  f"{marker.header('esper.dlq.redriven_at')}"))
        console.print(table)
        how, text = render_value(settings, letter)
        console.print(Text(f"value ({how}):"))
        console.print(Text(text))
    return 0


def _header_text(value: bytes | None) -> str:
    if value is None:
        return "(none)"
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "hex " + value.hex(" ")


def _cmd_redrive(args: argparse.Namespace, settings) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from services.oona.admin import wait_for_broker
    from services.oona.clients import map_exceptions
    from services.oona.dlq_tools import redrive

    if (args.from_offset is None) != (args.to_offset is None):
        raise _error("--from-offset and --to-offset go together (both DLQ offsets, included)")
    selection = _selection(args, settings.kafka.topic_prefix)
    wait_for_broker(settings.kafka)
    with map_exceptions(lambda reason: _error(f"re-drive failed, nothing of this chunk was re-driven: {reason}")):
        result = redrive(settings.kafka, selection, dry_run=args.dry_run)
    plan = result.plan
    if not plan.todo:
        print(f"nothing to re-drive: {len(plan.already)} selected dead letter(s) were re-driven before"
              if plan.already else "nothing to re-drive: no dead letter matches")
        return 0
    table = Table(show_header=True)
    for column in ("dlq offset", "source", "reason", "re-driven to"):
        table.add_column(column, overflow="fold")
    went = {letter.offset: to for letter, to in result.redriven}
    for letter in plan.todo:
        table.add_row(str(letter.offset), Text(letter.source), Text(letter.reason),
                      Text(went.get(letter.offset, "(dry run)")))
    Console(soft_wrap=False).print(table)
    verb = "would re-drive" if args.dry_run else "re-drove"
    skipped = f"; {len(plan.already)} re-driven before, left alone" if plan.already else ""
    print(f"{verb} {len(plan.todo)} dead letter(s){skipped}")
    return 0


def _cmd_dlq(args: argparse.Namespace) -> int:
    from services.cli.settings import load_settings

    settings = load_settings()
    return {"list": _cmd_list, "show": _cmd_show, "redrive": _cmd_redrive}[args.action](args, settings)


def add_dlq_command(sub) -> None:
    p = sub.add_parser("dlq", help="dead letters: list them, show one, re-drive a selection after a fix")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def filters(q: argparse.ArgumentParser) -> None:
        q.add_argument("--topic", help="source topic (without the topic prefix)")
        q.add_argument("--group", help="consumer group that dead-lettered it")
        q.add_argument("--reason", help="a substring of the reason (case-insensitive)")

    q = actions.add_parser("list", help="counts by source topic, group and reason, with first/last seen")
    filters(q)
    q.set_defaults(func=_cmd_dlq)
    q = actions.add_parser("show", help="one dead letter: headers (esper.dlq.* and the original ones) and value")
    q.add_argument("offset", nargs="?", help="its offset on the DLQ")
    q.add_argument("--source", help="or the record it was: TOPIC:PARTITION:OFFSET")
    q.set_defaults(func=_cmd_dlq)
    q = actions.add_parser("redrive", help="re-produce selected dead letters to their source topics, each at most "
                                           "once ever")
    filters(q)
    q.add_argument("--from-offset", help="first DLQ offset (included)")
    q.add_argument("--to-offset", help="last DLQ offset (included)")
    q.add_argument("--dry-run", action="store_true", help="say what would be re-driven, produce nothing")
    q.set_defaults(func=_cmd_dlq)

