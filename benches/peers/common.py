"""Peer-side helpers (peers' venv): worker subprocesses and the asyncio producers' loop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHES = HERE.parent


def peer_env(extra: dict[str, str]) -> dict[str, str]:
    """Environment for a peer's worker: benches/ and benches/peers/ importable."""
    return {**os.environ, "PYTHONPATH": f"{BENCHES}:{HERE}", **extra}


class Processes:
    """Worker subprocesses, stopped with SIGTERM (each peer's graceful stop), killed if they linger."""

    def __init__(self, commands: list[list[str]], env: dict[str, str]) -> None:
        self.procs = [
            subprocess.Popen(cmd, env=peer_env(env), cwd=HERE) for cmd in commands
        ]

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"worker {proc.args[:4]} exited with {proc.returncode}"
                )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def python_worker(module: str, url: str) -> list[str]:
    """The command running `module`.work(url) in a fresh interpreter."""
    return [sys.executable, "-c", f"import {module}; {module}.work({url!r})"]


class Loop:
    """One event loop for a synchronous caller of an async client (the producers)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __call__(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()
