"""Karn: proposes blueprints — a starter library, then mutations of what fossilized (consumer group ``karn``)."""
