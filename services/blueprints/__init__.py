"""The blueprint IR: declarative sub-networks built from a whitelist, and their weights-only artifacts.

Shared by Karn (proposes), Tezzeret (compiles), Kasmina (loads into seed slots).
Nothing in a blueprint is ever executed as code: each op name selects one of the
constructors in ``modules._BUILDERS``; artifacts are safetensors (no pickle).
"""
