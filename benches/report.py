"""The printed table (every metric, Forge against its peers, the targets) and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psycopg

from harness import Bench, fmt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

SECTION_TITLES = {
    "ceiling": "SQL ceiling (no job system)",
    "forge": "Forge throughput",
    "latency": "Forge pickup latency (dispatch commit -> job start)",
    "enqueue": "Forge enqueue",
    "backlog": "Forge with a big table",
    "costs": "Forge costs",
    "wakeups": "Idle nodes woken by NOTIFY",
    "peers": "Peers",
}

PEERS = {"pgqueuer": "PgQueuer", "procrastinate": "Procrastinate", "celery": "Celery"}

# (label, Forge key, peer key suffix, unit); ratios are Forge / peer.
COMPARED = [
    ("no-op throughput", "best_noop", "noop", "jobs/s"),
    ("pickup p50", "forge.latency.p50", "latency.p50", "ms"),
    ("pickup p99", "forge.latency.p99", "latency.p99", "ms"),
    (
        "enqueue, one per transaction",
        "forge.enqueue.single",
        "enqueue.single",
        "jobs/s",
    ),
    (
        "commits per no-op job",
        "forge.noop.commits_per_job",
        "commits_per_job",
        "commits",
    ),
    ("WAL per no-op job", "forge.noop.wal_per_job", "wal_per_job", "bytes"),
]


def print_and_save(bench: Bench, *, args: dict, git: dict, wall_seconds: float, results_dir: Path = RESULTS) -> Path:
    by_key = {row["key"]: row for row in bench.results}
    best = _best_noop(by_key)
    if best:
        by_key["best_noop"] = best
    comparisons = _comparisons(by_key, bench)
    targets = _targets(by_key)
    _print_sections(bench)
    _print_comparisons(comparisons)
    _print_targets(targets)
    for note in bench.notes:
        print(f"note: {note}")
    return _save(
        bench,
        args=args,
        git=git,
        wall_seconds=wall_seconds,
        comparisons=comparisons,
        targets=targets,
        results_dir=results_dir,
    )


# --- the table ---------------------------------------------------------------


def _print_sections(bench: Bench) -> None:
    print(f"\n{'=' * 100}\nResults: median of {bench.repeat} run(s) [min - max]")
    for section, title in SECTION_TITLES.items():
        rows = [row for row in bench.results if row["section"] == section]
        if not rows:
            continue
        print(f"\n{title}")
        for row in rows:
            spread = f"[{fmt(row['min'])} - {fmt(row['max'])}]"
            note = f"  ({row['note']})" if row.get("note") else ""
            print(
                f"  {row['label']:<60} {fmt(row['median']):>10} {row['unit']:<8} {spread:<22}{note}"
            )


def _best_noop(by_key: dict) -> dict | None:
    rows = [row for key, row in by_key.items() if key.startswith("forge.noop.w")]
    if not rows:
        return None
    row = max(rows, key=lambda r: r["median"])
    return {**row, "label": f"best Forge no-op ({row['key'].rsplit('.', 1)[1]})"}


def _comparisons(by_key: dict, bench: Bench) -> list[dict]:
    table = []
    bulk = sorted(
        {k.rsplit("many", 1)[1] for k in by_key if ".enqueue.many" in k}, key=int
    )
    compared = COMPARED + [
        (
            f"bulk enqueue of {int(n):,}",
            f"forge.enqueue.many{n}",
            f"enqueue.many{n}",
            "jobs/s",
        )
        for n in bulk
    ]
    for label, forge_key, suffix, unit in compared:
        forge = by_key.get(forge_key)
        peers = {name: by_key.get(f"{peer}.{suffix}") for peer, name in PEERS.items()}
        if forge is None or not any(peers.values()):
            continue
        table.append(
            {
                "workload": label,
                "unit": unit,
                "forge": forge["median"],
                "peers": {
                    name: (row["median"] if row else None)
                    for name, row in peers.items()
                },
                "forge_ratio": {
                    name: (
                        forge["median"] / row["median"]
                        if row and row["median"]
                        else None
                    )
                    for name, row in peers.items()
                },
            }
        )
    return table


def _print_comparisons(comparisons: list[dict]) -> None:
    if not comparisons:
        return
    names = list(PEERS.values())
    print(
        "\nForge against its peers"
        " (medians; x = Forge / peer: higher is better for jobs/s, lower for ms, commits, bytes)"
    )
    header = f"  {'workload':<32} {'unit':<8} {'Forge':>10}" + "".join(
        f" {n:>14} {'x':>6}" for n in names
    )
    print(header)
    for row in comparisons:
        line = f"  {row['workload']:<32} {row['unit']:<8} {fmt(row['forge']):>10}"
        for name in names:
            ratio = row["forge_ratio"][name]
            line += f" {fmt(row['peers'][name]):>14} {(f'{ratio:.2f}' if ratio else '-'):>6}"
        print(line)
    print(
        "  PgQueuer and Procrastinate run jobs inside their own worker process/event loop (no isolation);"
        " Forge and Celery run each job in a separate worker process.\n"
        "  Throughput counts from the start of each system's workers (start-up included) to its last completion."
    )


# --- targets -----------------------------------------------------------------


def _targets(by_key: dict) -> list[dict]:
    def median(key: str) -> float | None:
        return by_key[key]["median"] if key in by_key else None

    def fastest_peer(suffix: str) -> float | None:
        values = [median(f"{peer}.{suffix}") for peer in PEERS]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    best = median("best_noop")
    checks = [
        (
            "no-op >= 2x fastest Python peer",
            ratio(best, fastest_peer("noop")),
            ">=",
            2.0,
            "x",
        ),
        (
            "no-op >= 50% of the SQL ceiling",
            ratio(best, median("ceiling.sql")),
            ">=",
            0.5,
            "x",
        ),
        ("pickup p50 <= 2 ms", median("forge.latency.p50"), "<=", 2.0, "ms"),
        ("pickup p99 <= 5 ms", median("forge.latency.p99"), "<=", 5.0, "ms"),
    ]
    for key in sorted(
        (k for k in by_key if k.startswith("forge.enqueue.many")),
        key=lambda k: int(k[18:]),
    ):
        checks.append(
            (
                f"dispatch_many of {int(key[18:]):,} >= 100,000 jobs/s",
                median(key),
                ">=",
                100_000,
                "jobs/s",
            )
        )
    checks += [
        (
            "single dispatch >= fastest peer",
            ratio(median("forge.enqueue.single"), fastest_peer("enqueue.single")),
            ">=",
            1.0,
            "x",
        ),
        (
            "pending backlog: >= 80% of empty-queue no-op (2 w.)",
            ratio(median("forge.backlog.pending"), median("forge.noop.w2")),
            ">=",
            0.8,
            "x",
        ),
        (
            "completed rows: >= 80% of empty-queue no-op (2 w.)",
            ratio(median("forge.backlog.completed"), median("forge.noop.w2")),
            ">=",
            0.8,
            "x",
        ),
        (
            "supervisor < 25% of a core per 10,000 jobs/s",
            median("forge.cost.core_pct_at_10k"),
            "<",
            25.0,
            "%",
        ),
        (
            "supervisor peak RSS < 100 MB",
            median("forge.cost.supervisor_rss"),
            "<",
            100.0,
            "MB",
        ),
    ]
    results = []
    for name, value, op, limit, unit in checks:
        if value is None:
            status = "n/a"
        elif op == ">=":
            status = "PASS" if value >= limit else "MISS"
        elif op == "<=":
            status = "PASS" if value <= limit else "MISS"
        else:
            status = "PASS" if value < limit else "MISS"
        results.append({"target": name, "value": value, "unit": unit, "status": status})
    return results


def _print_targets(targets: list[dict]) -> None:
    print("\nTargets")
    for row in targets:
        value = (
            "not measured"
            if row["value"] is None
            else f"{fmt(row['value'])} {row['unit']}"
        )
        print(f"  {row['status']:<5} {row['target']:<58} {value}")


# --- the JSON file -------------------------------------------------------------


def _save(
    bench: Bench,
    *,
    args: dict,
    git: dict,
    wall_seconds: float,
    comparisons: list,
    targets: list,
    results_dir: Path,
) -> Path:
    now = datetime.now(UTC)
    document = {
        "when": now.isoformat(),
        "wall_seconds": wall_seconds,
        "args": args,
        "repeat": bench.repeat,
        "sizes": bench.sizes.__dict__,
        "git": git,
        "machine": _machine(),
        "versions": _versions(bench.admin_url),
        "results": bench.results,
        "comparisons": comparisons,
        "targets": targets,
        "notes": bench.notes,
    }
    results_dir.mkdir(exist_ok=True)
    out = results_dir / f"{now:%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(document, indent=2, default=list))
    print(f"\nwrote {out}")
    return out


def git_state() -> dict:
    """The commit measured (read when the run starts: the tree may move on meanwhile)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], check=False, capture_output=True, text=True, cwd=HERE
        ).stdout.strip()

    return {
        "sha": git("rev-parse", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def _machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory / 2**30, 1),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def _versions(admin_url: str) -> dict:
    with psycopg.connect(admin_url) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0]
    pins = [
        line.strip()
        for line in (HERE / "peers" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return {
        "python": platform.python_version(),
        "postgresql": postgres,
        "forge": metadata.version("forge-jobs"),
        "psycopg": metadata.version("psycopg"),
        "peers": pins,
    }
