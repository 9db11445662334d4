"""Kasmina: seed slots inside torch modules (the library Tolaria embeds).

A SeedSlot wraps a host layer (nn.Linear or nn.Conv2d) and holds N seeds. Each seed
follows the lifecycle in ``lifecycle``; its state lives in registered buffers so it
is part of ``state_dict`` and of every checkpoint.
"""
