"""Runs one workload on one peer, inside the peers' venv; writes the result as JSON.

    .venv-peers/bin/python peers/driver.py PEER WORKLOAD --url URL --jobs N --out FILE [--stamps FILE]

PEER: pgqueuer, procrastinate, celery. WORKLOAD: throughput, latency, single, bulk.
The orchestrator (section.py) makes a fresh database for each call.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # workloads.py, and the peer modules

import workloads  # noqa: E402 (needs the sys.path line above)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("peer", choices=["pgqueuer", "procrastinate", "celery"])
    parser.add_argument("workload", choices=["throughput", "latency", "single", "bulk"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stamps", type=Path)
    args = parser.parse_args()
    adapter = importlib.import_module(f"{args.peer}_peer").Adapter()
    adapter.setup(args.url)
    try:
        result = run(adapter, args)
    finally:
        adapter.teardown()
    args.out.write_text(json.dumps(result))


def run(adapter, args: argparse.Namespace) -> dict:
    if args.workload == "throughput":
        checkpoint = workloads.checkpoint if adapter.on_postgres else None
        return workloads.throughput(adapter, args.url, args.jobs, checkpoint=checkpoint)
    if args.workload == "latency":
        return workloads.latency(adapter, args.url, args.jobs, args.stamps)
    if args.workload == "single":
        return {"jobs_per_s": workloads.enqueue_single(adapter, args.url, args.jobs)}
    return {"jobs_per_s": workloads.enqueue_bulk(adapter, args.url, args.jobs)}


if __name__ == "__main__":
    main()
