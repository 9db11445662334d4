import pytest

from services.core.errors import ConfigurationError
from services.oona.admin import plan_partitions
from services.oona.topic_registry import RUN_PARTITIONS, TOPICS, all_topics, topic_spec


def test_run_scoped_topics_are_co_partitioned():
    run_scoped = [spec for spec in TOPICS if spec.run_scoped]
    assert len(run_scoped) >= 6
    assert {spec.partitions for spec in run_scoped} == {RUN_PARTITIONS}


def test_a_prefix_keeps_everything_but_the_name():
    spec = topic_spec("telemetry.seed.health", "t1.")
    assert spec.name == "t1.telemetry.seed.health"
    assert (spec.payload, spec.key, spec.partitions) == (TOPICS[1].payload, TOPICS[1].key, TOPICS[1].partitions)
    assert [s.name for s in all_topics("p.")] == ["p." + s.name for s in TOPICS]


def test_a_deployment_sizes_run_and_work_topics_and_leaves_the_fixed_ones():
    sized = {spec.name: spec.sized(6, 2).partitions for spec in TOPICS}
    assert {sized[s.name] for s in TOPICS if s.run_scoped} == {6}
    assert sized["compilation.blueprint.submitted"] == sized["compilation.kernel.ready"] == 2
    assert sized["library.kernels"] == sized["esper.dlq"] == 1


def test_an_existing_topic_is_never_shrunk_and_grown_only_when_asked():
    specs = [topic_spec("system.events.epoch").sized(6, 3), topic_spec("compilation.kernel.ready").sized(6, 3),
             topic_spec("library.kernels")]
    assert plan_partitions(specs, {"system.events.epoch": 6, "compilation.kernel.ready": 3}, grow=False) == {}
    with pytest.raises(ConfigurationError, match="cannot remove partitions; set ESPER_KAFKA__RUN_PARTITIONS=8"):
        plan_partitions(specs, {"system.events.epoch": 8}, grow=True)
    with pytest.raises(ConfigurationError, match="has 3 partitions, the settings ask for 6.*--grow-partitions"):
        plan_partitions(specs, {"system.events.epoch": 3}, grow=False)
    assert plan_partitions(specs, {"system.events.epoch": 3, "compilation.kernel.ready": 1}, grow=True) == {
        "system.events.epoch": 6, "compilation.kernel.ready": 3}
    assert plan_partitions(specs, {"library.kernels": 4}, grow=False) == {}  # fixed topics: not the settings'
