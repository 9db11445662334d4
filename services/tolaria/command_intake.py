"""Which commands reach a run at an epoch boundary: read by its command consumer, waiting (bounded) for the controller.

The consumer reads two topics: Kasmina commands (what to apply) and Tamiyo's decisions (to know
the controller has decided on an epoch, even when it decided to do nothing).
"""

from __future__ import annotations

import logging
import time

from services.oona.consumer import Delivered, OonaConsumer
from services.tolaria.emitter import BROKER_OUTAGE_S

log = logging.getLogger(__name__)


class CommandIntake:
    def __init__(self, consumer: OonaConsumer, run_id: str, decisions_topic: str, controller_wait_s: float,
                 decided_epoch: int = -1) -> None:
        self.consumer = consumer
        self.run_id = run_id
        self.decisions_topic = decisions_topic
        self.controller_wait_s = controller_wait_s  # 0: never wait
        # The controller's last decided epoch seen; -1 before any. A resumed run assumes its past was decided.
        self.decided_epoch = decided_epoch
        self.controller_timed_out = False

    def poll(self, epoch: int) -> list[Delivered]:
        """Every command published for this run before this boundary.

        With ``controller_wait_s``, first wait (bounded) until the controller has decided on the
        previous epoch, so that its commands meet the boundary they were meant for.
        """
        wait_s = 0.0 if self.controller_timed_out else self.controller_wait_s
        deadline = time.monotonic() + wait_s
        commands = []
        batch = self.consumer.catch_up(timeout_s=BROKER_OUTAGE_S)
        while True:
            for d in batch:
                if d.message.run_id != self.run_id:
                    continue
                if d.topic == self.decisions_topic:
                    self.decided_epoch = max(self.decided_epoch, d.message.payload.epoch)
                else:
                    commands.append(d)
            remaining = deadline - time.monotonic()
            if epoch == 0 or self.decided_epoch >= epoch - 1 or remaining <= 0:
                break
            batch = self.consumer.consume(100, min(0.1, remaining))  # blocks until something arrives
        if wait_s and epoch > 0 and self.decided_epoch < epoch - 1:
            self.controller_timed_out = True
            log.warning("no controller decision for epoch %d of run %s within %.1fs; no longer waiting",
                        epoch - 1, self.run_id, wait_s)
        return commands
