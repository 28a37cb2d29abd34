"""forge.config: a good forge.toml loads with defaults; each bad one gives one clear ConfigError."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from forge.config import (
    DATABASE_URL_ENV,
    import_app_modules,
    load_config,
    resolve_database_url,
)
from forge.errors import ConfigError, DatabaseError

MINIMAL = '[app]\nmodules = ["myapp.jobs"]\n'


def write(folder: Path, text: str) -> Path:
    path = folder / "forge.toml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(folder: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = write(folder, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_minimal_config_gets_every_default(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.app.modules == ["myapp.jobs"]
    assert config.database.url is None
    # Every [node] key, so that a new one fails here until its default is written down. The README documents
    # roles, worker_capabilities, workers, shutdown_grace, heartbeat_interval, heartbeat_timeout, max_crashes,
    # unknown_type_grace and that max_jobs_per_worker and max_worker_memory are optional; config.py the others.
    assert msgspec.structs.asdict(config.node) == {
        "roles": ["worker"],
        "worker_capabilities": ["general"],
        "workers": 4,
        "max_jobs_per_worker": None,
        "max_worker_memory": None,
        "shutdown_grace": 30.0,
        "kill_grace": 1.0,
        "heartbeat_interval": 2.0,
        "heartbeat_timeout": 30.0,
        "poll_interval": 1.0,
        "claim_batch": 250,
        "prefetch": 4,  # one extra job per worker
        "prefetch_timeout": 1.0,
        "max_crashes": 3,
        "maintenance_interval": 1.0,
        "dead_letter_after": 0.0,
        "dead_letter_retain": 7 * 86400.0,
        "unknown_type_grace": 3600.0,
        "job_log_lines": 200,
        "cpus": None,  # detected at boot (supervisor/machine.py)
        "memory": None,
        "gpus": [],
    }
    assert config.log.level == "info"
    assert config.alerts == []
    assert config.path == tmp_path / "forge.toml"
    assert config.folder == tmp_path
    assert config.embedded_dir == tmp_path / ".forge" / "postgres"


def test_full_config_converts_durations_and_sizes(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """\
            [database]
            url = "postgresql://db.example:5432/app"
            [app]
            modules = ["myapp.jobs", "myapp.more"]
            [node]
            roles = ["worker", "scheduler"]
            worker_capabilities = ["media", "general"]
            workers = 8
            max_jobs_per_worker = 1000
            max_worker_memory = "512MiB"
            shutdown_grace = "1m"
            kill_grace = "250ms"
            heartbeat_interval = 5
            heartbeat_timeout = "2m"
            poll_interval = 0.5
            claim_batch = 10
            prefetch = 0
            prefetch_timeout = "2s"
            [log]
            level = "debug"
            [[alerts]]
            name = "high_job_queue"
            condition = "forge_jobs_queue_depth > 1000"
            for = "5m"
            severity = "warning"
            notify = ["slack:#ops"]
            """,
        ),
        environ={},
    )
    node = config.node
    assert node.workers == 8 and node.max_jobs_per_worker == 1000
    assert node.max_worker_memory == 512 * 2**20 and type(node.max_worker_memory) is int
    assert node.shutdown_grace == 60.0 and type(node.shutdown_grace) is float
    assert node.kill_grace == 0.25
    assert (node.heartbeat_interval, node.heartbeat_timeout, node.poll_interval) == (5.0, 120.0, 0.5)
    assert node.prefetch == 0 and node.prefetch_timeout == 2.0
    assert config.log.level == "debug"
    assert config.alerts[0].for_ == 300.0
    assert config.alerts[0].notify == ["slack:#ops"]
    assert config.database_url(environ={}) == "postgresql://db.example:5432/app"


def test_env_vars_are_expanded_in_every_string(tmp_path):
    path = write(
        tmp_path,
        """\
        [database]
        url = "postgresql://${DB_USER}@${DB_HOST}:5432/app"
        [app]
        modules = ["${APP}.jobs"]
        """,
    )
    config = load_config(path, environ={"DB_USER": "u", "DB_HOST": "h", "APP": "shop"})
    assert config.database.url == "postgresql://u@h:5432/app"
    assert config.app.modules == ["shop.jobs"]


def test_forge_database_url_env_overrides_config(tmp_path):
    config = load_config(write(tmp_path, '[database]\nurl = "postgresql://from-file/app"\n' + MINIMAL), environ={})
    assert config.database_url(environ={}) == "postgresql://from-file/app"
    assert config.database_url(environ={DATABASE_URL_ENV: "postgresql://from-env/app"}) == "postgresql://from-env/app"
    url, embedded = resolve_database_url(config, environ={DATABASE_URL_ENV: "postgresql://e/a"})
    assert (url, embedded) == ("postgresql://e/a", None)


def test_without_url_and_no_running_cluster_resolution_explains(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.database_url(environ={}) is None
    with pytest.raises(DatabaseError, match="forge db start"):
        resolve_database_url(config, environ={})


def test_missing_app_modules(tmp_path):
    message = error_of(tmp_path, "[node]\nworkers = 2\n[app]\n")
    assert message.startswith("missing required key 'app.modules' at ")
    assert "forge.toml:3" in message


def test_missing_app_section(tmp_path):
    message = error_of(tmp_path, "[node]\nworkers = 2\n")
    assert "missing required key 'app'" in message
    assert "forge.toml" in message


def test_misspelled_key_suggests_nearest(tmp_path):
    message = error_of(tmp_path, MINIMAL + "\n[node]\nroles = ['worker']\nwrokers = 3\n")
    expected = f"unknown key 'node.wrokers' at {tmp_path / 'forge.toml'}:6; did you mean 'workers'?"
    assert message == expected


def test_misspelled_section_suggests_nearest(tmp_path):
    message = error_of(tmp_path, MINIMAL + "[nodes]\nworkers = 3\n")
    assert "unknown key 'nodes'" in message and "forge.toml:3" in message and "did you mean 'node'?" in message


def test_misspelled_key_in_array_of_tables(tmp_path):
    message = error_of(
        tmp_path, MINIMAL + '[[alerts]]\nname = "a"\ncondition = "x"\n[[alerts]]\nname = "b"\ncondtion = "y"\n'
    )
    assert "unknown key 'alerts[1].condtion'" in message and "forge.toml:8" in message
    assert "did you mean 'condition'?" in message


def test_wrong_type(tmp_path):
    message = error_of(tmp_path, MINIMAL + '[node]\nworkers = "4"\n')
    assert "'node.workers'" in message and "forge.toml:4" in message
    assert "expected `int`, got `str` '4'" in message


def test_workers_below_one(tmp_path):
    message = error_of(tmp_path, MINIMAL + "[node]\nworkers = 0\n")
    assert "invalid value for 'node.workers'" in message and "forge.toml:4" in message
    assert ">= 1" in message and "got 0" in message


def test_bad_duration(tmp_path):
    message = error_of(tmp_path, MINIMAL + '[node]\n\nshutdown_grace = "5 minutes"\n')
    assert "invalid value for 'node.shutdown_grace'" in message and "forge.toml:5" in message
    assert "'5 minutes'" in message


def test_zero_poll_interval_is_refused(tmp_path):
    message = error_of(tmp_path, MINIMAL + '[node]\npoll_interval = "0s"\n')
    assert "'node.poll_interval'" in message and "> 0" in message


def test_heartbeat_timeout_must_exceed_interval(tmp_path):
    message = error_of(tmp_path, MINIMAL + '[node]\nheartbeat_interval = "10s"\nheartbeat_timeout = "5s"\n')
    assert "'node.heartbeat_timeout'" in message and "forge.toml:5" in message


def test_bad_size(tmp_path):
    message = error_of(tmp_path, MINIMAL + '[node]\nmax_worker_memory = "lots"\n')
    assert "'node.max_worker_memory'" in message and "'lots'" in message


def test_bad_log_level_lists_choices(tmp_path):
    message = error_of(tmp_path, MINIMAL + '[log]\nlevel = "verbose"\n')
    assert "'log.level'" in message and "'warning'" in message and "'verbose'" in message


def test_log_format_is_text_or_json(tmp_path):
    assert load_config(write(tmp_path, MINIMAL), environ={}).log.format == "text"
    assert load_config(write(tmp_path, MINIMAL + '[log]\nformat = "json"\n'), environ={}).log.format == "json"
    message = error_of(tmp_path, MINIMAL + '[log]\nformat = "yaml"\n')
    assert "'log.format'" in message and "'json'" in message and "'yaml'" in message and "forge.toml:4" in message


def test_unset_env_var_names_key_and_var(tmp_path):
    message = error_of(tmp_path, MINIMAL + '[database]\nurl = "postgresql://${NO_SUCH_HOST}/app"\n')
    assert "'NO_SUCH_HOST'" in message and "'database.url'" in message and "forge.toml:4" in message


def test_toml_syntax_error_gives_line(tmp_path):
    message = error_of(tmp_path, MINIMAL + "[node]\nworkers 4\n")
    assert message.startswith("invalid TOML at ")
    assert "forge.toml:4" in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_app_modules_resolve_relative_to_config_folder(tmp_path, monkeypatch):
    package = tmp_path / "cfgapp_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text("VALUE = 42\n")
    config = load_config(write(tmp_path, '[app]\nmodules = ["cfgapp_pkg.jobs"]\n'), environ={})
    monkeypatch.chdir("/")
    monkeypatch.setattr("sys.path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (module,) = import_app_modules(config)
    assert module.VALUE == 42


def test_app_module_not_found_is_config_error(tmp_path, monkeypatch):
    config = load_config(write(tmp_path, '[app]\nmodules = ["no_such_forge_module.jobs"]\n'), environ={})
    monkeypatch.setattr("sys.path", list(sys.path))
    with pytest.raises(ConfigError, match="app.modules: module 'no_such_forge_module.jobs' not found"):
        import_app_modules(config)


def test_unknown_type_grace_is_a_duration(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + '[node]\nunknown_type_grace = "90s"\n'), environ={})
    assert config.node.unknown_type_grace == 90.0
    message = error_of(tmp_path, MINIMAL + '[node]\nunknown_type_grace = "later"\n')
    assert "node.unknown_type_grace" in message and "forge.toml:4" in message


@pytest.mark.parametrize("key", ["dead_letter_after", "dead_letter_retain", "unknown_type_grace", "shutdown_grace"])
def test_a_duration_past_100_years_is_refused_with_its_key(tmp_path, key):
    # 2,000,000 weeks (38,000 years): fits the core's 2^64 s, but now() minus it is before 4713 BC, out of
    # PostgreSQL's timestamp range, so every maintenance sweep would fail on it.
    message = error_of(tmp_path, MINIMAL + f'[node]\n{key} = "2000000w"\n')
    assert f"'node.{key}'" in message and "100 years" in message, message


def test_a_duration_of_100_years_is_accepted(tmp_path):
    path = tmp_path / "forge.toml"
    path.write_text(MINIMAL + f"[node]\ndead_letter_retain = {100 * 365.25 * 86400}\n")
    assert load_config(path).node.dead_letter_retain == 100 * 365.25 * 86400


def test_job_log_lines_is_a_count_the_core_holds(tmp_path):
    assert load_config(write(tmp_path, MINIMAL + "[node]\njob_log_lines = 0\n"), environ={}).node.job_log_lines == 0
    for bad in (-1, 2**32, '"many"'):
        message = error_of(tmp_path, MINIMAL + f"[node]\njob_log_lines = {bad}\n")
        assert "node.job_log_lines" in message and "forge.toml:4" in message, message


def test_node_capacity_keys(tmp_path):
    text = '[app]\nmodules = ["m"]\n[node]\ncpus = 2\nmemory = "8Gi"\ngpus = ["0", "1"]\n'
    node = load_config(write(tmp_path, text), environ={}).node
    assert (node.cpus, node.memory, node.gpus) == (2, 8 * 2**30, ["0", "1"])
    with pytest.raises(ConfigError, match="node.cpus"):
        load_config(write(tmp_path, text.replace("cpus = 2", "cpus = 0")), environ={})
    with pytest.raises(ConfigError, match="node.gpus"):
        load_config(write(tmp_path, text.replace('"1"', '""')), environ={})
