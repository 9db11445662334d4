"""Oona: the bus layer every Esper service stands on.

Topic registry, Avro codecs, the idempotent producer, the dead-lettering consumer,
exactly-once consume-transform-produce, cluster administration and the project's
own single-node Kafka for hosts without Docker.
"""
