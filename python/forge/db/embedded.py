"""An embedded PostgreSQL cluster in a folder, for development and tests.

Layout, for a data directory `<dir>/postgres` (forge uses `<config folder>/.forge/postgres`):

    <dir>/postgres/        the cluster (initdb), owned by the postgres user when run as root
    <dir>/postgres.url     the URL of the running cluster, for other processes to find
    <dir>/postgres.lock    fcntl lock held while starting or stopping
    <dir>/postgres.users   fcntl lock each user holds shared while it uses the cluster (used())
    <dir>/postgres.log     the server log (pg_ctl -l)

The server listens on 127.0.0.1 only, with trust authentication for user
`postgres`, and no unix socket (socket paths have a 107-byte limit that deep
project folders exceed). Its port is a free one picked at the first start and
kept in the cluster's forge.conf: every later start uses it again, so a
restarted cluster has the same URL and its clients reconnect. The cluster
outlives whoever started it; stop() refuses while any process holds used(),
a lock the kernel drops when its holder dies. PostgreSQL refuses to run as
root, so when the caller is root every binary runs through
`runuser -u postgres --` (or the user $FORGE_PG_USER names) and the data
directory is chowned to that user. A machine without the binaries or, as
root, without that user is refused before anything is made.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from forge.errors import DatabaseError, NoServiceUser, PostgresNotInstalled

__all__ = ["EmbeddedPostgres", "create_database", "drop_database", "find_bin_dir"]

SERVICE_USER = "postgres"  # the database superuser initdb makes, and the URL's user
#: Whom the binaries run as when forge runs as root (PostgreSQL refuses root): the system user postgres, or another.
RUN_AS_ENV = "FORGE_PG_USER"
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
START_ATTEMPTS = 3  # at the first start, a picked free port can be taken before postgres binds it
SETTINGS_FILE = "forge.conf"  # in the data directory, included by postgresql.conf

# Settings for throwaway clusters: crash safety traded for speed.
NON_DURABLE_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def find_bin_dir() -> Path:
    """The folder of initdb/pg_ctl: $FORGE_PG_BIN, pg_ctl on PATH, or the newest /usr/lib/postgresql/*/bin."""
    if env := os.environ.get("FORGE_PG_BIN"):
        return Path(env)
    if found := shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    raise PostgresNotInstalled(f"PostgreSQL binaries (initdb, pg_ctl) not found: {_INSTALL_HINT}")


_INSTALL_HINT = "install PostgreSQL, put pg_ctl on PATH or set FORGE_PG_BIN, or set database.url in forge.toml"
#: The binaries a start runs.
PROGRAMS = ("initdb", "pg_ctl")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # an AF_INET socket's name is (host, port)
        return port


def _port_taken(port: int) -> bool:
    """Whether a program listens on 127.0.0.1:`port`. SO_REUSEADDR as postgres sets it: connections of an
    earlier run of the cluster that linger in TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _is_postmaster(pid: int) -> bool:
    """Whether `pid` lives and (where /proc tells) is a postgres process, not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    with contextlib.suppress(OSError):
        return "postgres" in Path(f"/proc/{pid}/comm").read_text()
    return True


class EmbeddedPostgres:
    """A PostgreSQL cluster living in `data_dir`; start() is idempotent across processes.

    durable=False initialises with --no-sync and runs with fsync, synchronous
    commit and full page writes off: for test clusters only. `settings` adds
    server settings (name -> value) written to the cluster's forge.conf.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        durable: bool = True,
        settings: Mapping[str, str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.durable = durable
        self.settings = dict(settings or {})
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.run_as = os.environ.get(RUN_AS_ENV) or SERVICE_USER
        self.url_file = self.data_dir.with_name(self.data_dir.name + ".url")
        self.lock_file = self.data_dir.with_name(self.data_dir.name + ".lock")
        self.users_file = self.data_dir.with_name(self.data_dir.name + ".users")
        self.log_file = self.data_dir.with_name(self.data_dir.name + ".log")

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r})"

    # --- public API ---------------------------------------------------------

    def start(self) -> str:
        """Start the cluster unless it runs already (initdb first if needed); return its URL."""
        with self._locked():
            if (port := self._running_port()) is not None:
                return self._publish(port)
            self._check_machine()
            self._prepare()
            return self._publish(self._start_server())

    def stop(self) -> None:
        """Stop the cluster (fast shutdown) if it runs, and remove the URL file.

        DatabaseError, leaving it running, while any process (this one too) holds used().
        """
        if not self.data_dir.parent.exists():
            return
        with self._locked(), self._flock(self.users_file, fcntl.LOCK_EX | fcntl.LOCK_NB) as unused:
            if not unused:
                raise DatabaseError(
                    f"embedded PostgreSQL at {self.data_dir} is in use: a forge-supervisor or forge command "
                    f"holds {self.users_file}; stop them first"
                )
            if self._running_port() is not None:
                self._pg_ctl_stop()
            self.url_file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def used(self) -> Iterator[None]:
        """Mark the cluster used while inside (a shared lock on the users file): stop() refuses meanwhile.

        Waits while a stop is under way. The lock is this open file's, so it is not inherited by the
        programs the holder runs, and the kernel drops it when the holder dies.
        """
        with self._as_owner(), self._flock(self.users_file, fcntl.LOCK_SH):
            yield

    def in_use(self) -> bool:
        """Whether some process holds used()."""
        with self._locked(), self._flock(self.users_file, fcntl.LOCK_EX | fcntl.LOCK_NB) as unused:
            return not unused

    def running(self) -> bool:
        """Whether a postmaster owns the data directory right now."""
        return self.url is not None

    @property
    def url(self) -> str | None:
        """The URL of the running cluster, or None when stopped.

        Read from the pid file; a process that may not read the data directory
        (another user's cluster) trusts the URL file instead.
        """
        try:
            port = self._running_port()
        except PermissionError:
            with contextlib.suppress(OSError):
                return self.url_file.read_text().strip() or None
            return None
        return None if port is None else self._url_for(port)

    # --- steps --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the folder's lock file (one starter or stopper at a time, across processes)."""
        with self._as_owner(), self._flock(self.lock_file, fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def _as_owner(self) -> Iterator[None]:
        """Turn the PermissionError of a cluster that belongs to another user into a DatabaseError saying so."""
        try:
            yield
        except PermissionError as exc:
            raise DatabaseError(
                f"embedded PostgreSQL at {self.data_dir} belongs to another user ({exc}); "
                "run forge as that user or set database.url"
            ) from exc

    @staticmethod
    @contextlib.contextmanager
    def _flock(path: Path, operation: int) -> Iterator[bool]:
        """Hold flock `operation` on `path` while inside (closing the file drops it): True, or False (holding
        nothing) when a LOCK_NB `operation` finds the lock taken."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, operation)
            except BlockingIOError:
                yield False
                return
            yield True

    def _running_port(self) -> int | None:
        """Port of the live postmaster per postmaster.pid (line 1 pid, line 4 port), else None.

        PermissionError propagates: the caller cannot tell whether it runs.
        """
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except PermissionError:
            raise
        except (OSError, ValueError, IndexError):
            return None
        return port if _is_postmaster(pid) else None

    def _check_machine(self) -> None:
        """PostgresNotInstalled or NoServiceUser, before anything is made, when this machine cannot run the
        cluster (a missing binary would fail later, as a traceback or after an empty data folder was made)."""
        bin_dir = self._bin_dir or find_bin_dir()
        missing = [name for name in PROGRAMS if not os.access(bin_dir / name, os.X_OK)]
        if missing:
            raise PostgresNotInstalled(
                f"PostgreSQL binaries ({', '.join(PROGRAMS)}) not found in {bin_dir} (no {', '.join(missing)}): "
                + _INSTALL_HINT
            )
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(self.run_as)
            except KeyError:
                raise NoServiceUser(
                    f"forge runs as root, which PostgreSQL refuses, so the embedded PostgreSQL runs as the system "
                    f"user {self.run_as!r} (${RUN_AS_ENV}), but there is no user {self.run_as!r} on this machine: "
                    "create it (a PostgreSQL package does), run forge as another user, or set database.url in "
                    "forge.toml"
                ) from None

    def _prepare(self) -> None:
        """Create and hand over the folder, run initdb once, and reset the log file."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.data_dir, mode=0o700)
        if os.geteuid() == 0:
            for folder in self.data_dir.parents:
                _make_searchable(folder)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self.log_file.touch(exist_ok=True)
        self._hand_over(self.log_file, mode=0o600)

    def _initdb(self) -> None:
        args = ["-D", str(self.data_dir), "-U", SERVICE_USER, "-A", "trust", "-E", "UTF8", "--locale=C"]
        if not self.durable:
            args.append("--no-sync")
        self._run("initdb", *args)
        conf = self.data_dir / "postgresql.conf"
        with open(conf, "a") as handle:
            handle.write(f"\n# Forge writes its settings (port, ...) to {SETTINGS_FILE} before each start.\n")
            handle.write(f"include_if_exists = '{SETTINGS_FILE}'\n")

    def _start_server(self) -> int:
        """pg_ctl start on the cluster's port, and return it: the one saved in forge.conf, or at the first start
        a free one (another one if it was taken before postgres bound it)."""
        if (port := self._saved_port()) is not None:
            if _port_taken(port):
                raise DatabaseError(
                    f"embedded PostgreSQL at {self.data_dir} cannot start: its port {port} (kept in "
                    f"{self.data_dir / SETTINGS_FILE} since its first start) is in use by another program; "
                    "stop that program, or set another port there"
                )
            self._start_on(port)
            return port
        last_error: DatabaseError | None = None
        for _ in range(START_ATTEMPTS):
            port = _free_port()
            try:
                self._start_on(port)
            except DatabaseError as exc:
                last_error = exc
                continue
            return port
        assert last_error is not None
        raise last_error

    def _start_on(self, port: int) -> None:
        self._write_settings(port)
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(START_TIMEOUT)
        )
        self._wait_connectable(port)

    def _pg_ctl_stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(START_TIMEOUT))
        except DatabaseError:
            # A postmaster that died (killed) meanwhile leaves its pid file, which pg_ctl reports as a server
            # that "does not shut down": it is stopped all the same.
            if self._running_port() is not None:
                raise

    def _saved_port(self) -> int | None:
        """The port forge.conf says (written before the cluster's first start), None before that start."""
        path = self.data_dir / SETTINGS_FILE
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            name, equals, value = line.partition("=")
            if equals and name.strip() == "port":
                try:
                    return int(value.strip())
                except ValueError:
                    raise DatabaseError(f"{path}: port must be a number, not {value.strip()!r}") from None
        return None

    def _write_settings(self, port: int) -> None:
        settings = {
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            **({} if self.durable else NON_DURABLE_SETTINGS),
            **self.settings,
        }
        lines = [f"{name} = {value}\n" for name, value in settings.items()]
        path = self.data_dir / SETTINGS_FILE
        header = "# Written by forge before each start; edits are overwritten, but port is read back and kept.\n"
        path.write_text(header + "".join(lines))
        self._hand_over(path, mode=0o600)

    def _wait_connectable(self, port: int) -> None:
        """pg_ctl -w waits for 'ready' in the pid file; also wait until a TCP connection succeeds."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg.connect(self._url_for(port), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise DatabaseError(
                        f"embedded PostgreSQL at {self.data_dir} does not accept connections: {exc}"
                    ) from exc
                time.sleep(0.05)

    def _publish(self, port: int) -> str:
        """Write the URL file (atomically) so other processes find the running cluster."""
        url = self._url_for(port)
        tmp = self.url_file.with_name(self.url_file.name + f".{os.getpid()}.tmp")
        tmp.write_text(url + "\n")
        os.replace(tmp, self.url_file)
        return url

    @staticmethod
    def _url_for(port: int) -> str:
        return f"postgresql://{SERVICE_USER}@127.0.0.1:{port}/postgres"

    # --- running binaries, as the postgres user when root ---------------------

    def _run(self, program: str, *args: str) -> None:
        bin_dir = self._bin_dir or find_bin_dir()
        command = [str(bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.run_as, "--", *command]
        # A new session keeps the server out of the caller's terminal process
        # group, so Ctrl-C on the caller does not kill it mid-shutdown.
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, start_new_session=True, cwd="/"
        )
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            tail = self._log_tail()
            action = program if program == "initdb" else f"{program} {args[0]}"
            raise DatabaseError(
                f"{action} failed for embedded PostgreSQL at {self.data_dir} "
                f"(exit {result.returncode}): {output}" + (f"\nserver log:\n{tail}" if tail else "")
            )

    def _log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _hand_over(self, path: Path, *, mode: int) -> None:
        """chmod `path`; as root, also give it to the postgres user."""
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.run_as)
            os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(mode)


def _make_searchable(folder: Path) -> None:
    """Add the others-search bit (x, not r) to `folder` if it lacks it, so the postgres user can reach inside."""
    mode = folder.stat().st_mode
    if not mode & 0o001:
        folder.chmod((mode & 0o7777) | 0o001)


# --- database helpers (used by tests and examples) ----------------------------


def _with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead (URL in, URL out; key=value strings stay so)."""
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    return psycopg.conninfo.make_conninfo(url, dbname=name)


def create_database(url: str, name: str, *, template: str | None = None) -> str:
    """CREATE DATABASE `name` (optionally from `template`) on the server of `url`; return its URL."""
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query)
    return _with_database(url, name)


def drop_database(url: str, name: str) -> None:
    """DROP DATABASE IF EXISTS `name` on the server of `url`, closing its sessions (WITH (FORCE))."""
    query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query)
