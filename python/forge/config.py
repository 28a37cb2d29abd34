"""The typed configuration of forge.toml, validated once by load_config().

Every default lives in the Struct definitions below. After loading, durations
are float seconds and sizes int bytes. `${VAR}` in any string value is
replaced from the environment. Every problem becomes one ConfigError naming
the key path and, where it can be found, the file and line, e.g.

    unknown key 'node.wrokers' at forge.toml:9; did you mean 'workers'?

Database URL resolution: $FORGE_DATABASE_URL, else [database] url, else the
embedded cluster under `<config folder>/.forge/postgres`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec

from forge.config_source import Source, dotted
from forge.errors import ConfigError, DatabaseError
from forge.supervisor.lease import MIN_SLACK, fence_after, refresh_period, renewal_slack
from forge.units import LONGEST_DEFINED_DURATION, UnitError, parse_duration, parse_size

if TYPE_CHECKING:
    from forge.db.embedded import EmbeddedPostgres

__all__ = [
    "AlertConfig", "AppConfig", "Config", "DatabaseConfig", "LogConfig", "NodeConfig", "RetentionConfig",
    "DATABASE_URL_ENV", "embedded_postgres", "import_app_modules", "load_config", "parse_config",
    "resolve_database_url",
]

DATABASE_URL_ENV = "FORGE_DATABASE_URL"
EMBEDDED_DIR = Path(".forge") / "postgres"  # relative to the config file's folder


class Duration(float):
    """Annotation: a duration written "30s"/"5m"/"250ms" or as seconds; a plain float after loading."""


class PositiveDuration(Duration):
    """A Duration that must be > 0 (intervals a loop sleeps for)."""


class Retention(Duration):
    """A Duration, or "forever" (read as infinity, None after loading): how long finished rows are kept."""


class Size(int):
    """Annotation: a size written "512MiB"/"8Gi"/"1GB" or as bytes; a plain int after loading."""


PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Name = Annotated[str, msgspec.Meta(min_length=1)]
Names = Annotated[list[Name], msgspec.Meta(min_length=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    def __post_init__(self) -> None:
        # Duration/Size values come from the dec_hook as subclasses; keep plain numbers.
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Duration):
                setattr(self, field.name, None if value == float("inf") else float(value))
            elif isinstance(value, Size):
                setattr(self, field.name, int(value))


class DatabaseConfig(_Section):
    """[database]: url is optional; $FORGE_DATABASE_URL overrides it; without both the embedded cluster is used."""

    url: str | None = None


class AppConfig(_Section):
    """[app]: modules holding the @forge.job definitions, imported before workers are forked."""

    modules: Names


class NodeConfig(_Section):
    """[node]: this node's roles, worker pool and timing. Durations in seconds, sizes in bytes."""

    roles: Names = msgspec.field(default_factory=lambda: ["worker"])
    worker_capabilities: Names = msgspec.field(default_factory=lambda: ["general"])
    workers: PositiveInt = 4
    max_jobs_per_worker: PositiveInt | None = None  # recycle a worker after this many jobs
    max_worker_memory: Size | None = None  # recycle a worker when its RSS passes this
    shutdown_grace: Duration = Duration(30.0)  # running jobs get this long to finish on shutdown
    kill_grace: Duration = Duration(1.0)  # SIGTERM -> SIGKILL gap for timeouts and shutdown
    heartbeat_interval: PositiveDuration = PositiveDuration(2.0)
    heartbeat_timeout: PositiveDuration = PositiveDuration(30.0)  # a lease not renewed this long is rescued
    poll_interval: PositiveDuration = PositiveDuration(1.0)
    # Most rows one claim statement takes; each claim takes min(this, the room the workers have). A statement's
    # fixed cost (round trip, commit) is spread over more jobs (docs/performance.md, "Design measurements").
    claim_batch: PositiveInt = 250
    # Extra jobs claimed beyond free workers, so a worker finishing a job gets the next at once. None means one per
    # worker (= workers). While jobs are short the arbiter holds whole batches per spare, and up to two
    # claim_batches (see supervisor/demand.py); 0 turns prefetching off.
    prefetch: Annotated[int, msgspec.Meta(ge=0)] | None = None
    prefetch_timeout: Duration = Duration(1.0)  # a prefetched job not started by then is handed back
    # Crash-class endings (signal, OOM, lost lease) a job may have before it fails for good, whatever max_attempts says.
    max_crashes: PositiveInt = 3
    maintenance_interval: PositiveDuration = PositiveDuration(1.0)  # rescue and dead-letter sweeps
    dead_letter_after: Duration = Duration(0.0)  # a failed job moves to dead_letter this long after failing
    dead_letter_retain: PositiveDuration = PositiveDuration(7 * 86400.0)  # unless the job sets its own retention
    # Due jobs of a type no node has run for this long (counted from when the last node that ran it stopped or went
    # silent) fail as UnknownJobType; a restart, or a rolling deploy, must take less.
    unknown_type_grace: Duration = Duration(3600.0)
    job_log_lines: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 200  # ctx.log lines stored per attempt
    # The capacity jobs' forge.Resources are admitted against (supervisor/capacity.py, supervisor/machine.py):
    cpus: PositiveInt | None = None  # whole CPUs; None: as many as this process may use (affinity, cgroup quota)
    memory: Size | None = None  # None: the machine's memory, or its cgroup's limit if lower
    gpus: list[Name] = msgspec.field(default_factory=list)  # device ids for CUDA_VISIBLE_DEVICES; none unless listed

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefetch is None:
            self.prefetch = self.workers


class RetentionConfig(_Section):
    """[retention]: finished rows deleted by the maintenance sweep this long after they ended (None: kept)."""

    completed: Retention | None = Retention(86400.0)  # after completed_at
    cancelled: Retention | None = Retention(7 * 86400.0)  # after failed_at, when it was cancelled
    discarded: Retention | None = Retention(7 * 86400.0)  # after failed_at, when it was discarded
    idempotency: Retention | None = Retention(86400.0)  # a finished job's idempotency key is held this long


class LogConfig(_Section):
    """[log]: level of Forge's own logging, and its format: text lines, or one JSON object a line ("json")."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class AlertConfig(_Section):
    """One [[alerts]] entry: a metric condition held `for` a duration, sent to `notify` targets."""

    name: str
    condition: str
    for_: Duration = msgspec.field(default=Duration(0.0), name="for")
    severity: Literal["info", "warning", "critical"] = "warning"
    notify: list[str] = msgspec.field(default_factory=list)


class Config(_Section, dict=True):
    """The whole forge.toml. `path` and `folder` (absolute) are set by load_config, not read from the file."""

    app: AppConfig
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    node: NodeConfig = msgspec.field(default_factory=NodeConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    alerts: list[AlertConfig] = msgspec.field(default_factory=list)

    # Set on each instance by parse_config (kept in the instance __dict__ that dict=True gives); ClassVar keeps
    # msgspec from taking them for fields.
    path: ClassVar[Path]
    folder: ClassVar[Path]

    def database_url(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The configured URL: $FORGE_DATABASE_URL, else [database] url, else None (use the embedded cluster)."""
        env = os.environ if environ is None else environ
        return env.get(DATABASE_URL_ENV) or self.database.url or None

    @property
    def embedded_dir(self) -> Path:
        """Data directory of the embedded cluster: <config folder>/.forge/postgres."""
        return self.folder / EMBEDDED_DIR


# --- loading -------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the forge.toml at `path`; ConfigError on any problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {file} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file}: {exc}") from None
    return parse_config(text, path=file, environ=environ)


def parse_config(text: str, *, path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Validate forge.toml contents `text`; `path` is where it came from (for messages and `folder`)."""
    file = Path(path)
    source = Source(str(path), text, Config)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise source.syntax_error(exc) from None
    data = _expand_env(data, (), source, os.environ if environ is None else environ)
    try:
        config = msgspec.convert(data, Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise source.validation_error(str(exc), data) from None
    _check_relations(config, source)
    config.path = file.absolute()  # type: ignore[misc]  # declared ClassVar only so msgspec skips it
    config.folder = config.path.parent  # type: ignore[misc]  # declared ClassVar only so msgspec skips it
    return config


#: What the Rust core accepts (rust/src/lib.rs, CoreSettings): its loops wait at least 1 ms, and its counts fit in
#: an i32 (claim_batch: a u32). Refused here, with the key, not at boot. (Every duration is at most 100 years,
#: _dec_hook, far below the 2^64 s the core holds.)
_CORE_INTERVALS = ("poll_interval", "heartbeat_interval", "heartbeat_timeout", "maintenance_interval")
_CORE_MIN_INTERVAL = 0.001
_CORE_MAX_COUNTS = {"workers": 2**31 - 1, "max_crashes": 2**31 - 1, "claim_batch": 2**32 - 1}


def _check_relations(config: Config, source: Source) -> None:
    """Checks between keys, and against the core's limits, which msgspec's per-value checks cannot express."""
    _check_core_limits(config.node, source)
    _check_lease(config.node, source)


def _check_core_limits(node: NodeConfig, source: Source) -> None:
    for key in _CORE_INTERVALS:
        seconds = getattr(node, key)
        if seconds < _CORE_MIN_INTERVAL:
            raise _invalid(source, key, f"{seconds:g}s is below 1ms, the shortest interval the core runs a loop at")
    for key, most in _CORE_MAX_COUNTS.items():
        if getattr(node, key) > most:
            raise _invalid(source, key, f"{getattr(node, key)} is more than the core can hold ({most})")


def _check_lease(node: NodeConfig, source: Source) -> None:
    """The lease settings must let a healthy node renew its leases well before it would fence itself."""
    interval, timeout = node.heartbeat_interval, node.heartbeat_timeout
    if timeout < 3 * interval:
        raise _invalid(
            source, "heartbeat_timeout",
            f"{timeout:g}s must be at least 3 x node.heartbeat_interval ({interval:g}s), so a node "
            "can fence itself before its leases are rescued",
        )
    slack = renewal_slack(interval, timeout)
    if slack < MIN_SLACK:
        fence = fence_after(timeout)
        raise _invalid(
            source, "heartbeat_timeout",
            f"{timeout:g}s makes this node fence itself {fence:g}s after its last lease renewal, which leaves "
            f"{slack * 1000:.0f}ms for a renewal round beyond node.heartbeat_interval ({interval:g}s) and the "
            f"lease page's refresh ({refresh_period(fence):g}s); a healthy but busy node needs "
            f"{MIN_SLACK * 1000:.0f}ms: raise heartbeat_timeout or lower heartbeat_interval",
        )


def _invalid(source: Source, key: str, detail: str) -> ConfigError:
    return ConfigError(f"invalid value for 'node.{key}'{source.where(('node', key))}: {detail}")


def _dec_hook(kind: type, value: Any) -> Any:
    """Parse Duration and Size values; a ValueError here becomes a ValidationError with the key path."""
    try:
        if issubclass(kind, Retention) and value == "forever":
            return kind(float("inf"))
        if issubclass(kind, Duration):
            # 100 years at most, as for job options: PostgreSQL's timestamps cannot hold now() minus much more
            seconds = parse_duration(value, what="value", at_most=LONGEST_DEFINED_DURATION)
            if issubclass(kind, PositiveDuration) and seconds <= 0:
                raise ValueError(f"expected a duration > 0, got {value!r}")
            return kind(seconds)
        if issubclass(kind, Size):
            return kind(parse_size(value, what="value"))
    except UnitError as exc:
        raise ValueError(exc.detail) from None
    raise NotImplementedError(kind)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, at: tuple[str | int, ...], source: Source, environ: Mapping[str, str]) -> Any:
    """Replace ${VAR} in every string value of the parsed TOML (keys are left alone)."""
    if isinstance(value, dict):
        return {k: _expand_env(v, (*at, k), source, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*at, i), source, environ) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(
                f"environment variable {name!r} is not set (used by {dotted(at)!r}{source.where(at)})"
            )
        return environ[name]

    return _ENV_REF.sub(replace, value)


# --- using the config ------------------------------------------------------------


def import_app_modules(config: Config) -> list[Any]:
    """Put the config folder on sys.path and import [app] modules; ConfigError if one does not exist."""
    folder = str(config.folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    imported = []
    for name in config.app.modules:
        try:
            imported.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise  # a module the app itself imports is missing: show the real traceback
            raise ConfigError(
                f"app.modules: module {name!r} not found (searched {folder} and sys.path; set in {config.path})"
            ) from None
    return imported


def embedded_postgres(config: Config) -> EmbeddedPostgres:
    """The embedded cluster of this config's folder (not started)."""
    from forge.db.embedded import EmbeddedPostgres

    return EmbeddedPostgres(config.embedded_dir)


def resolve_database_url(
    config: Config, *, environ: Mapping[str, str] | None = None
) -> tuple[str, EmbeddedPostgres | None]:
    """The URL to use, and the embedded cluster when that is where it points.

    $FORGE_DATABASE_URL > [database] url > the embedded cluster under
    <config folder>/.forge/postgres if it runs (forge-supervisor, `forge db
    start` and `forge migrate` start it); DatabaseError if it does not.
    """
    if url := config.database_url(environ):
        return url, None
    embedded = embedded_postgres(config)
    if (url := embedded.url) is not None:
        return url, embedded
    raise DatabaseError(
        f"no database configured and the embedded PostgreSQL at {embedded.data_dir} is not running: "
        f"start it with forge db start -c {config.path} (or forge-supervisor), set database.url in {config.path}, "
        f"or set {DATABASE_URL_ENV}"
    )
