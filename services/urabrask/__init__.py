"""Urabrask: characterises compiled kernels (latency, memory) and tags them (consumer group ``urabrask``)."""
