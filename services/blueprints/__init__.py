"""The blueprint IR: declarative sub-networks built from a whitelist, and their weights-only artifacts.

Shared by Karn (proposes), Tezzeret (compiles), Kasmina (loads into seed slots).
Nothing in a blueprint is ever executed as code: each op name selects one of the
constructors in ``modules._build_op``; artifacts are safetensors (no pickle). Limits of the
IR: ``contracts/blueprint_ir.py``; checked before building: ``ir_checks``; content addresses
and the blob folder: ``content_address``.
"""
