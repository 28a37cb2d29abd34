"""forge-supervisor refuses bad configuration before doing anything, with the key named and status 2."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import APPS, SUPERVISOR


def _run(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "forge.toml"
    config.write_text(text)
    return subprocess.run(
        [SUPERVISOR, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(APPS)},
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[app]\nmodules = ["testapp.jobs"]\n[node]\nwrokers = 4\n', "node.wrokers"),
        ('[app]\nmodules = ["testapp.jobs"]\n[node]\nworkers = "four"\n', "node.workers"),
        ('[app]\nmodules = ["testapp.jobs"]\n[node]\nshutdown_grace = "soon"\n', "node.shutdown_grace"),
        ("[node]\nworkers = 2\n", "app"),
        ('[app]\nmodules = ["testapp.nope"]\n', "testapp.nope"),
        (
            '[database]\nurl = "${FORGE_TEST_UNSET_VARIABLE}"\n[app]\nmodules = ["testapp.jobs"]\n',
            "FORGE_TEST_UNSET_VARIABLE",
        ),
        ("[app\nmodules = 1\n", "forge.toml:1"),
    ],
    ids=["misspelled", "mistyped", "bad-duration", "missing", "no-module", "unset-env", "syntax"],
)
def test_bad_configuration_exits_2_naming_the_problem(tmp_path, text, expected):
    result = _run(tmp_path, text)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / ".forge").exists()  # nothing else happened


def test_misspelled_keys_get_a_suggestion(tmp_path):
    result = _run(tmp_path, '[app]\nmodules = ["testapp.jobs"]\n[node]\nwrokers = 4\n')
    assert "did you mean 'workers'" in result.stderr
    assert "forge.toml:4" in result.stderr


def test_a_broken_app_module_exits_3(tmp_path):
    (tmp_path / "brokenapp.py").write_text("raise RuntimeError('the app is broken')\n")
    result = _run(tmp_path, '[app]\nmodules = ["brokenapp"]\n')
    assert result.returncode == 3
    assert "the app is broken" in result.stderr


def test_help_lists_the_config_option():
    result = subprocess.run([SUPERVISOR, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "-c, --config" in result.stdout


def test_a_running_node_is_registered_with_what_it_runs(supervisor, db):
    sup = supervisor(workers=3, worker_capabilities=["general", "gpu"])
    row = db.execute(
        "SELECT hostname, pid, roles, capabilities, workers, job_types, stopped_at FROM forge_nodes"
    ).fetchone()
    assert row[0] == socket.gethostname()
    assert row[1:5] == (sup.proc.pid, ["worker"], ["general", "gpu"], 3)
    assert row[5] == sorted(row[5]) and {"double", "nap"} <= set(row[5])
    assert row[6] is None
