"""Tolaria: the training orchestrator, the only process that owns a model.

``esper run CONFIG`` trains a host network with Kasmina seed slots, streams every
fact of the run onto Kafka and applies Kasmina commands at epoch boundaries.
"""
