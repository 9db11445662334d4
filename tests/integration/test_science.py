"""The science works: on an under-capacity host, germinated seeds beat --no-adapt (same seeds, 3 of them).

The host is an 8-unit MLP on three interleaved spirals (a 2-64-64-3 MLP separates them
perfectly; this host cannot). Germinate commands come from the test, through Kafka;
the kernels are compiled starter blueprints on ``library.kernels``.
"""

from __future__ import annotations

import json
import statistics
import uuid
from pathlib import Path

from contracts import CommandAction
from services.blueprints.starter import mlp_adapter
from services.tolaria.config import load_config
from services.tolaria.run import start_run
from tests.kafka_helpers import publish_command, publish_kernel

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "spirals-adaptive.yaml"
SEEDS = (0, 1, 2)


def test_adaptive_runs_beat_the_no_adapt_baseline(esper_settings, tmp_path):
    settings = esper_settings
    prefix = settings.kafka.topic_prefix
    kernels = [publish_kernel(settings.kafka, mlp_adapter(2, 8, 64), init_seed=i, prefix=prefix) for i in range(2)]
    base = load_config(EXAMPLE)
    results = {"adaptive": [], "no_adapt": []}
    for seed in SEEDS:
        cfg = base.model_copy(update={"seed": seed})
        run_id = f"science-{seed}-{uuid.uuid4().hex[:6]}"
        for idx, kernel_id in enumerate(kernels):
            publish_command(settings.kafka, run_id, CommandAction.GERMINATE, "body.0", idx, kernel_id=kernel_id,
                            epoch=5, prefix=prefix)
        adaptive = start_run(cfg, settings, run_id=run_id, progress=False)
        baseline = start_run(cfg, settings, run_id=f"{run_id}-base", no_adapt=True, progress=False)
        for name, r in (("adaptive", adaptive), ("no_adapt", baseline)):
            results[name].append({"seed": seed, "val": r.validation_accuracy, "test": r.test_accuracy,
                                  "params": r.parameter_count, "seed_params": r.seed_parameter_count,
                                  "seeds": r.seed_states})
    mean = {k: statistics.mean(r["val"] for r in v) for k, v in results.items()}
    summary = json.dumps({"mean_val": mean, "runs": results}, indent=1)
    Path(tmp_path / "science.json").write_text(summary)
    print(summary)
    assert mean["adaptive"] > mean["no_adapt"] + 0.05, summary
    assert all(r["seed_params"] == 0 for r in results["no_adapt"])
