"""Tezzeret: compiles submitted blueprints into validated, weights-only kernels (consumer group ``tezzeret``)."""
