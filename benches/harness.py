"""Shared plumbing of the benchmark suite: the throwaway cluster, databases, summaries.

Imported only from the Forge venv (it uses forge.db.embedded to run the cluster);
the peer drivers, which run in their own venv, use workloads.py instead.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from forge.db.embedded import EmbeddedPostgres, create_database, drop_database
from forge.db.migrate import migrate
from workloads import checkpoint

__all__ = ["QUICK", "Bench", "Sizes", "checkpoint", "throwaway_cluster"]

HERE = Path(__file__).resolve().parent

# The cluster is durable on purpose (fsync, synchronous_commit and
# full_page_writes stay on): a commit's cost is part of what is measured.
# Room for the peers' pools and the 16-worker runs; WAL sized so a 1M-row
# fill does not force checkpoints mid-measurement.
CLUSTER_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "'512MB'",
    "max_wal_size": "'4GB'",
    "checkpoint_timeout": "'30min'",
}


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; --quick shrinks everything to a smoke test."""

    noop_jobs: int = 20_000
    worker_counts: tuple[int, ...] = (1, 2, 4)
    work_jobs: int = 5_000
    io_workers: int = 16
    cpu_workers: int = 2
    latency_jobs: int = 500
    single_dispatches: int = 2_000
    many_sizes: tuple[int, ...] = (20_000, 200_000)
    backlog_rows: int = 1_000_000
    backlog_jobs: int = 20_000
    ceiling_rows: int = 200_000
    cost_jobs: int = 20_000
    wakeup_nodes: tuple[int, ...] = (1, 8, 32)
    wakeup_seconds: float = 5.0


QUICK = Sizes(
    noop_jobs=2_000,
    work_jobs=400,
    latency_jobs=50,
    single_dispatches=200,
    many_sizes=(2_000, 20_000),
    backlog_rows=50_000,
    backlog_jobs=2_000,
    ceiling_rows=20_000,
    wakeup_nodes=(1, 4),
    wakeup_seconds=1.0,
    cost_jobs=2_000,
)


@dataclass
class Bench:
    """One run of the suite: its cluster, scratch folder, sizes and repetition count."""

    admin_url: str
    scratch: Path
    sizes: Sizes
    repeat: int
    results: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _serial: int = 0

    def record(
        self,
        key: str,
        label: str,
        unit: str,
        values: list[float],
        *,
        section: str,
        note: str = "",
    ) -> dict:
        """Summarize the repetitions of one metric and keep it for the report."""
        row = {
            "key": key,
            "section": section,
            "label": label,
            "unit": unit,
            **summarize(values),
        }
        if note:
            row["note"] = note
        self.results.append(row)
        print(
            f"  {label:<52} {fmt(row['median'])} {unit}  [{fmt(row['min'])} - {fmt(row['max'])}]",
            flush=True,
        )
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    @contextlib.contextmanager
    def database(self, prefix: str, *, forge_schema: bool = True) -> Iterator[str]:
        """A fresh database for one repetition (Forge's schema applied unless told not to), dropped after."""
        self._serial += 1
        name = f"{prefix}_{self._serial}"
        url = create_database(self.admin_url, name)
        try:
            if forge_schema:
                migrate(url)
            yield url
        finally:
            drop_database(self.admin_url, name)

    def repeat_run(self, measure: Callable[[int], float]) -> list[float]:
        return [measure(run) for run in range(self.repeat)]


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[tuple[str, Path]]:
    """A private durable PostgreSQL in a temporary folder: (admin URL, scratch folder)."""
    with tempfile.TemporaryDirectory(prefix="forge-bench-", dir="/tmp") as scratch:
        cluster = EmbeddedPostgres(
            Path(scratch) / "pg", durable=True, settings=CLUSTER_SETTINGS
        )
        admin = cluster.start()
        try:
            yield admin, Path(scratch)
        finally:
            cluster.stop()


def summarize(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def fmt(value: float | None) -> str:
    """Numbers as a reader wants them: thousands separated, decimals only when small."""
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
