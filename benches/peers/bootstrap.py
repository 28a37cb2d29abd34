"""Create or refresh the peers' venv (benches/.venv-peers) from requirements.txt, PyPI only.

Rebuilt only when requirements.txt changed since the last install (its hash is
kept in the venv), so repeated runs start at once.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE.parent / ".venv-peers"
REQUIREMENTS = HERE / "requirements.txt"
STAMP = VENV / ".requirements-sha256"


def ensure() -> Path:
    """The peers' venv python, after installing the pinned requirements if needed."""
    python = VENV / "bin" / "python"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return python
    print(
        f"  setting up {VENV.name} (pip install -r {REQUIREMENTS.name}) ...", flush=True
    )
    if not python.exists():
        # From inside Forge's venv, venv builds on the base interpreter, not on Forge's venv.
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    STAMP.write_text(wanted + "\n")
    return python


if __name__ == "__main__":
    print(ensure())
