"""`make run`: start forge-supervisor on this example, dispatch jobs, watch them finish, stop it.

The embedded PostgreSQL the supervisor started outlives it; this script stops it too (`forge db stop`).

The supervisor is the real thing (`forge-supervisor -c examples/hello/forge.toml`);
this script only plays the part of the application that dispatches jobs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

import forge
from forge.config import embedded_postgres, load_config, resolve_database_url

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "forge.toml"
sys.path.insert(0, str(HERE))

from app import jobs  # noqa: E402  (the example's job module, beside this file)


def main() -> int:
    supervisor = subprocess.Popen([str(Path(sys.executable).with_name("forge-supervisor")), "-c", str(CONFIG)])
    try:
        url = _wait_for_database()
        ids = _dispatch(url)
        _watch(url, ids)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(60)
        embedded_postgres(load_config(CONFIG)).stop()
    print(f"supervisor stopped with exit status {code}; its embedded PostgreSQL too")
    return code


def _wait_for_database() -> str:
    """The embedded database's URL once the supervisor has it up and migrated."""
    config = load_config(CONFIG)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            url, _ = resolve_database_url(config)
            with psycopg.connect(url, connect_timeout=2) as conn:
                if conn.execute("SELECT count(*) FROM forge_nodes WHERE stopped_at IS NULL").fetchone()[0]:
                    return url
        except (forge.ForgeError, psycopg.Error):
            pass
        time.sleep(0.2)
    raise SystemExit("the supervisor did not come up within 120 s")


def _dispatch(url: str) -> list[int]:
    with psycopg.connect(url) as conn:  # one transaction: all of these exist, or none
        conn.execute("CREATE TABLE IF NOT EXISTS welcome_emails (user_id int PRIMARY KEY, email text NOT NULL)")
        ids = forge.dispatch_many(
            conn, jobs.send_welcome_email, [jobs.Welcome(user_id=i, email=f"user{i}@example.com") for i in range(8)]
        )
        ids += [forge.dispatch(conn, jobs.sync_external_service, jobs.Sync(account=f"acct-{i}")) for i in range(4)]
        ids.append(forge.dispatch(conn, jobs.generate_report, jobs.Report(pages=10)))
        ids.append(forge.dispatch(conn, jobs.generate_report, jobs.Report(pages=5), delay="2s"))
        again = forge.dispatch(conn, jobs.send_welcome_email, jobs.Welcome(user_id=3, email="user3@example.com"))
    print(f"dispatched {len(ids)} jobs (user 3's welcome, dispatched again, is the same job: {again})")
    return ids


def _watch(url: str, ids: list[int]) -> None:
    seen: dict[int, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        while len([s for s in seen.values() if s in ("completed", "failed")]) < len(ids):
            rows = conn.execute(
                "SELECT id, job_type, status, attempts, progress, result"
                " FROM forge_jobs WHERE id = ANY(%s) ORDER BY id",
                (ids,),
            ).fetchall()
            for job_id, job_type, status, attempts, progress, result in rows:
                if seen.get(job_id) != status:
                    seen[job_id] = status
                    detail = f" result={result}" if status == "completed" else ""
                    print(
                        f"  job {job_id:>4} {job_type:<22} {status:<9} attempt {attempts} progress {progress}%{detail}"
                    )
            time.sleep(0.1)
    print(f"all {len(ids)} jobs finished")


if __name__ == "__main__":
    sys.exit(main())
