"""Forge's benchmark suite: one command, one throwaway durable PostgreSQL, every number side by side.

    make bench                                   # everything, 3 repetitions (about 20-30 minutes)
    .venv/bin/python benches/run.py --quick      # small sizes, 1 repetition: a smoke test
    .venv/bin/python benches/run.py --only forge,latency --repeat 5

Sections, in the order run:
  ceiling  plain SQL claim+complete on Forge's schema (the limit Forge is measured against)
  forge    no-op jobs with 1, 2, 4 workers; 10 ms sleeps (16 workers); 1 ms of CPU (2 workers)
  latency  idle supervisor, jobs dispatched 20 ms apart: dispatch commit -> job start
  enqueue  dispatch one per transaction; dispatch_many of 20,000 and 200,000
  backlog  no-op throughput with 1M pending jobs, and with 1M completed rows
  costs    supervisor CPU and RSS, worker RSS, database commits/row writes/WAL per job
  wakeups  1, 8, 32 idle nodes, single dispatches at 10 and 100 a second: claims and database CPU per job
  retention  1,000,000 no-op jobs with [retention] completed = "10s": pg_total_relation_size before/after
  peers    PgQueuer, Procrastinate, Celery+Redis on the same workloads (own venv: benches/.venv-peers)

Prints a table (median [min - max] of the repetitions, Forge's ratio to each
peer, PASS/MISS against the targets) and writes benches/results/<time>.json (or into --results-dir).
Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import QUICK, Bench, Sizes, throwaway_cluster  # noqa: E402 (needs the sys.path line above)
from report import RESULTS, git_state, print_and_save  # noqa: E402 (needs the sys.path line above)

SECTIONS = {
    "ceiling": "ceiling",
    "forge": "forge_runs",
    "latency": "latency",
    "enqueue": "enqueue",
    "backlog": "backlog",
    "costs": "costs",
    "wakeups": "wakeups",
    "retention": "retention",
    "peers": "peers.section",
}


def main() -> int:
    args = _arguments()
    sizes = QUICK if args.quick else Sizes()
    repeat = args.repeat or (1 if args.quick else 3)
    began = time.monotonic()
    git = git_state()
    failed = []
    with throwaway_cluster() as (admin_url, scratch):
        bench = Bench(admin_url=admin_url, scratch=scratch, sizes=sizes, repeat=repeat)
        print(
            f"Forge benchmarks: {', '.join(args.only)}; {repeat} repetition(s){' (quick)' if args.quick else ''}"
        )
        for name in args.only:
            print(f"\n[{name}]", flush=True)
            started = time.monotonic()
            try:
                importlib.import_module(SECTIONS[name]).run(bench)
            except Exception:  # noqa: BLE001
                # One broken section must not throw away the others' numbers.
                traceback.print_exc()
                bench.note(f"section {name} failed (traceback above)")
                failed.append(name)
            print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
        wall = time.monotonic() - began
        print_and_save(
            bench,
            args={"quick": args.quick, "only": args.only, "repeat": repeat},
            git=git,
            wall_seconds=wall,
            results_dir=args.results_dir,
        )
    print(f"wall time {wall / 60:.1f} min")
    return 1 if failed else 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and 1 repetition: a smoke test",
    )
    parser.add_argument(
        "--only",
        type=_sections,
        default=list(SECTIONS),
        help=f"comma-separated sections to run, of: {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="repetitions of each measurement (default 3, --quick 1)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help=f"where the JSON record goes (default {RESULTS})",
    )
    return parser.parse_args()


def _sections(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    # Always in the documented order, whatever order they were given in.
    return [name for name in SECTIONS if name in names]


if __name__ == "__main__":
    sys.exit(main())
