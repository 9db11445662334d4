"""Put characterised kernels into the library in-process: what Karn, Tezzeret and Urabrask publish
for one blueprint (real compilation and measurement), for benchmarks and tests that need a library
without running those services."""

from __future__ import annotations

import torch

from contracts import Blueprint, BlueprintSubmitted, CompilationOutcome, KernelReady
from services.blueprints.artifacts import load_artifact
from services.blueprints.compiler import compile_blueprint
from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.urabrask.characterize import characterize


def publish_characterised_kernel(settings: KafkaSettings, blueprint: Blueprint, init_seed: int = 0,
                                 prefix: str = "") -> str:
    """The submission, the kernel on the library, KernelReady and KernelCharacterized; returns the kernel id."""
    kernel, seconds = compile_blueprint(blueprint, init_seed=init_seed)
    assert kernel.artifact is not None  # compile_blueprint makes inline kernels
    measured = characterize(load_artifact(kernel.artifact, blueprint.architecture), kernel.metadata,
                            torch.device("cpu"), blueprint.architecture)
    producer = OonaProducer(settings, SingleObjectCodec())
    for topic, payload in (
        ("compilation.blueprint.submitted", BlueprintSubmitted(blueprint_id=blueprint.blueprint_id,
                                                                submitted_by="seed-library", blueprint=blueprint)),
        ("library.kernels", kernel),
        ("compilation.kernel.ready", KernelReady(blueprint_id=blueprint.blueprint_id, outcome=CompilationOutcome.READY,
                                                 kernel=kernel.metadata, compile_seconds=seconds)),
        ("validation.kernel.characterized", measured),
    ):
        spec = topic_spec(topic, prefix)
        producer.publish(spec, spec.message_type(sender_id="seed-library", topic=spec.name, payload=payload))
    producer.flush()
    return kernel.kernel_id
