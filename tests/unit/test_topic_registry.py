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
