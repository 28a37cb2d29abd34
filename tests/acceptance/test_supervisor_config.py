"""forge-supervisor finds its config as `forge` does: -c PATH, else $FORGE_CONFIG, else ./forge.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SUPERVISOR = Path(sys.executable).parent / "forge-supervisor"
BAD = '[app]\nmodules = ["myapp.jobs"]\n[node]\nwrokers = 3\n'  # refused at once, before any database


def boot(cwd: Path, *args: str, config_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FORGE_CONFIG"}
    if config_env is not None:
        env["FORGE_CONFIG"] = config_env
    return subprocess.run([SUPERVISOR, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def test_without_c_it_reads_the_forge_toml_of_its_folder(tmp_path):
    (tmp_path / "forge.toml").write_text(BAD)
    result = boot(tmp_path)
    assert result.returncode == 2, result.stderr
    assert "unknown key 'node.wrokers' at forge.toml:4" in result.stderr


def test_forge_config_names_the_file_and_c_wins_over_it(tmp_path):
    (tmp_path / "elsewhere.toml").write_text(BAD)
    from_env = boot(tmp_path, config_env=str(tmp_path / "elsewhere.toml"))
    assert from_env.returncode == 2 and "elsewhere.toml:4" in from_env.stderr, from_env.stderr
    given = boot(tmp_path, "-c", str(tmp_path / "missing.toml"), config_env=str(tmp_path / "elsewhere.toml"))
    assert given.returncode == 2 and "missing.toml not found" in given.stderr, given.stderr


def test_forge_config_wins_over_the_forge_toml_of_its_folder(tmp_path):
    (tmp_path / "forge.toml").write_text(BAD.replace("wrokers", "in_folder"))
    (tmp_path / "elsewhere.toml").write_text(BAD)
    result = boot(tmp_path, config_env=str(tmp_path / "elsewhere.toml"))
    assert result.returncode == 2, result.stderr
    assert "unknown key 'node.wrokers' at " in result.stderr and "elsewhere.toml:4" in result.stderr, result.stderr


def test_a_missing_config_is_one_line_and_exit_2(tmp_path):
    for args, env, named in (((), None, "forge.toml"), ((), str(tmp_path / "env.toml"), "env.toml"),
                             (("-c", str(tmp_path / "given.toml")), None, "given.toml")):
        result = boot(tmp_path, *args, config_env=env)
        assert result.returncode == 2, result
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("forge-supervisor: config file "), result.stderr
        assert lines[0].endswith(f"{named} not found"), result.stderr
