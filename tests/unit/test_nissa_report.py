"""Report data and plots from a small DuckDB built with the sink's own batch/store path (no broker)."""

from __future__ import annotations

import base64
import re

import duckdb
import pytest

from contracts import EpochCompleted, SeedState, SeedTransition, SystemStatePacket
from services.nissa.archive import ArchivedMessage
from services.nissa.errors import UnknownRunError
from services.nissa.replay import ReplayWriter
from services.nissa.report import render, write_report
from services.nissa.report_data import load_run
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import topic_spec
from tests.samples import T0, health_signal, message_for

CODEC = SingleObjectCodec()
VAL = [0.30, 0.45, 0.52, 0.61, 0.66]
PARAMS = [100, 100, 140, 140, 140]
LIFE = [(1, SeedState.DORMANT, SeedState.GERMINATED), (2, SeedState.GERMINATED, SeedState.TRAINING),
        (3, SeedState.TRAINING, SeedState.GRAFTING), (4, SeedState.GRAFTING, SeedState.FOSSILIZED)]


def build_db(path, run_id: str = "run-r") -> None:
    """A session, 5 epochs, one seed's whole life and health for two layers, written like the sink does."""
    out = []

    def add(name: str, payload=None) -> None:
        spec = topic_spec(name)
        message = (spec.message_type(sender_id="t", topic=spec.name, run_id=run_id, payload=payload)
                   if payload is not None else message_for(spec, run_id=run_id))
        out.append(ArchivedMessage(spec.name, 0, len(out), 0, run_id.encode(), CODEC.encode(spec, message), None))

    add("training.sessions")
    for epoch, (val, params) in enumerate(zip(VAL, PARAMS, strict=True)):
        state = SystemStatePacket(epoch=epoch, total_seeds=2, active_seeds=0, training_loss=1.0, validation_loss=1.0,
                                  system_load=0.0, memory_usage=0.0, timestamp=T0)
        add("system.events.epoch", EpochCompleted(state=state, train_accuracy=val + 0.05, validation_accuracy=val,
                                                  epoch_seconds=0.1, parameter_count=params,
                                                  seed_parameter_count=params - 100))
        for layer_id, name in ((7, "body.0"), (8, "body.2")):
            add("telemetry.seed.health", health_signal(epoch=epoch).model_copy(
                update={"layer_id": layer_id, "layer_name": name, "health_score": 0.2 * epoch}))
    for epoch, before, after in LIFE:
        add("lifecycle.seed.transitions", SeedTransition(layer_id=7, seed_idx=1, layer_name="body.0",
                                                         from_state=before, to_state=after, epoch=epoch, reason="t"))
    writer = ReplayWriter(path, run_id)
    writer.add(out)
    writer.finish({})


def test_run_data_and_figures_match_the_database(tmp_path):
    db = tmp_path / "nissa.duckdb"
    build_db(db)
    with duckdb.connect(str(db), read_only=True) as con:
        run = load_run(con, "run-r")
        with pytest.raises(UnknownRunError, match="not in the Nissa database"):
            load_run(con, "other")
    assert run.epochs == [0, 1, 2, 3, 4] and run.validation_accuracy == VAL and run.parameter_count == PARAMS
    assert [(e.epoch, e.kind) for e in run.events] == [(1, "germinate"), (3, "advance"), (4, "fossilize")]
    assert run.seed_states == {"body.0[1]": [(e, after.value) for e, _, after in LIFE]}
    assert run.health_layers == ["body.0", "body.2"] and run.health_epochs == [0, 1, 2, 3, 4]
    assert run.health[1] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])

    report = render([run])
    drawn = {p.name: p.drawn for p in report.plots}
    assert drawn["accuracy"] == {"run-r:points": 5, "run-r:final_validation": 0.66, "run-r:events": 3}
    assert drawn["parameters"] == {"run-r:points": 5, "run-r:final_parameters": 140}
    # dormant 0-1, germinated 1-2, training 2-3, grafting 3-4, fossilized 4-5
    assert drawn["timeline-run-r"] == {"seeds": 1, "bars": 5}
    assert drawn["health-run-r"] == {"layers": 2, "epochs": 5}
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', report.html)
    assert len(images) == 4 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert 'data-run-r-final-validation="0.66"' in report.html


def test_comparison_overlays_both_runs_and_tabulates_final_numbers(tmp_path):
    db = tmp_path / "nissa.duckdb"
    build_db(db)
    report = write_report(db, "run-r", tmp_path / "r.html", compare="run-r")
    page = (tmp_path / "r.html").read_text()
    assert page == report.html and len(report.runs) == 2
    assert page.count("<tr><td>run-r</td>") == 2 and "<td>0.6600</td>" in page
    assert len(re.findall(r"<img ", page)) == 6
