"""Helpers shared by integration and e2e tests: publish kernels and commands the way other services would."""

from __future__ import annotations

import uuid

from contracts import CommandAction, KasminaCommand, layer_id_for_path
from services.blueprints.compiler import compile_blueprint
from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec


def publish_kernel(settings: KafkaSettings, blueprint, init_seed: int = 0, prefix: str = "") -> str:
    """Compile ``blueprint`` and put the kernel on ``library.kernels``; returns the kernel id."""
    kernel, _ = compile_blueprint(blueprint, init_seed=init_seed)
    spec = topic_spec("library.kernels", prefix)
    producer = OonaProducer(settings, SingleObjectCodec())
    producer.publish(spec, spec.message_type(sender_id="tests", topic=spec.name, payload=kernel))
    producer.flush()
    return kernel.kernel_id


def publish_command(settings: KafkaSettings, run_id: str, action: CommandAction, layer: str, seed_idx: int, *,
                    kernel_id: str | None = None, epoch: int = 0, prefix: str = "", command_id: str | None = None,
                    layer_id: int | None = None) -> KasminaCommand:
    spec = topic_spec("control.kasmina.commands", prefix)
    command = KasminaCommand(
        command_id=command_id or f"cmd-{uuid.uuid4().hex[:12]}", action=action,
        layer_id=layer_id_for_path(layer) if layer_id is None else layer_id, seed_idx=seed_idx, layer_name=layer,
        kernel_id=kernel_id, issued_at_epoch=epoch,
    )
    producer = OonaProducer(settings, SingleObjectCodec())
    producer.publish(spec, spec.message_type(sender_id="tests", topic=spec.name, run_id=run_id, payload=command))
    producer.flush()
    return command
