"""`esper bench`: throughput and latency benchmarks, each beside a baseline measured in the same run."""
