"""What one background evaluation costs (``coordinator.evaluator``): the worker process a coordinator starts for each
new checkpoint, run once on CKPT with the coordinator's settings (default: ``EvaluationSettings()``), from a parent
that waits for it as the coordinator does. Prints the worker's wall time, CPU time and peak RSS and writes its
report (and those figures) as JSON.

    nice -n 10 .venv/bin/python bench/background_eval.py /tmp/wteval/demo-ckpt0 -c configs/demo.yaml \\
        --json bench/results/background_eval_demo_ckpt0.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coordinator.deployment import EvaluationSettings
from coordinator.evaluation.worker import EvaluationJob
from peer.config import config_to_dict, load_config
from peer.errors import UserError
from peer.logs import LogSettings, configure_logging

logger = logging.getLogger("bench.background_eval")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("-c", "--config", help="the run's config YAML (its held-out split)")
    parser.add_argument("--json", dest="json_out", required=True, help="where to write the report and the figures")
    args = parser.parse_args()
    configure_logging(LogSettings())
    if not (Path(args.checkpoint) / "config.json").is_file():
        print(f"error: {args.checkpoint} is not a checkpoint (no config.json)", file=sys.stderr)
        return 2
    try:
        run_config = config_to_dict(load_config(args.config))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = EvaluationSettings()
    with tempfile.TemporaryDirectory() as work:
        out, job = Path(work) / "report.json", Path(work) / "job.json"
        EvaluationJob(str(Path(args.checkpoint).resolve()), str(out), os.getpid(), settings, run_config).to_json(job)
        started, start_clock = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        log = Path(work) / "worker.log"
        with open(log, "w") as f:
            rc = subprocess.call([sys.executable, "-m", "coordinator.evaluation.worker", str(job)], stdout=f,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if rc != 0:
            print(f"error: the worker exited with code {rc}: {log.read_text().strip().splitlines()[-1:]}")
            return 1
        figures = {
            "settings": {**vars(settings), "tasks": list(settings.tasks)},
            "wall_seconds": round(time.perf_counter() - started, 1),
            "user_seconds": round(usage.ru_utime, 1),
            "system_seconds": round(usage.ru_stime, 1),
            "peak_rss_gb": round(usage.ru_maxrss / 1e6, 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "started_utc": start_clock,
            "report": json.loads(out.read_text()),
        }
    Path(args.json_out).write_text(json.dumps(figures, indent=1) + "\n")
    logger.info(
        "worker: %.0f s wall, %.0f s user + %.0f s system CPU, peak RSS %.2f GB; wrote %s", figures["wall_seconds"],
        figures["user_seconds"], figures["system_seconds"], figures["peak_rss_gb"], args.json_out,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
