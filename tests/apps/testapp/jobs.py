"""Jobs the acceptance tests run under real supervisors.

Each job records what happened to it in test_events (created by the tests),
with the database clock, so tests can check order, spacing and timing.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time

import msgspec

import forge


class N(msgspec.Struct):
    n: int


class Sleep(msgspec.Struct):
    seconds: float


class Crash(msgspec.Struct):
    code: int = 3


class Fail(msgspec.Struct):
    error: str = "NetworkError"


class Child(msgspec.Struct):
    ignore_sigterm: bool = False


class NetworkError(Exception):
    pass


class RateLimitError(Exception):
    pass


class ValidationProblem(Exception):
    pass


ERRORS = {cls.__name__: cls for cls in (NetworkError, RateLimitError, ValidationProblem)}


def record(ctx: forge.JobContext, event: str, pid: int | None = None) -> None:
    """An event of this job, with the pid of the process it concerns (by default the worker)."""
    ctx.db.execute(
        "INSERT INTO test_events (job_id, job_type, attempt, event, pid) VALUES (%s, %s, %s, %s, %s)",
        (ctx.job_id, ctx.job_type, ctx.attempt, event, os.getpid() if pid is None else pid),
    )


@forge.job
def double(ctx: forge.JobContext, input: N) -> int:
    record(ctx, "start")
    return input.n * 2


@forge.job
async def double_async(ctx: forge.JobContext, input: N) -> dict:
    await asyncio.sleep(0.001)
    return {"doubled": input.n * 2}


def _always_fails(ctx: forge.JobContext, input: Fail) -> None:
    record(ctx, "start")
    record(ctx, "end")
    raise ERRORS[input.error](f"attempt {ctx.attempt} failed")


for _kind in ("exponential", "linear", "fixed"):
    forge.job(name=f"fail_{_kind}", retry=forge.Retry(max_attempts=4, backoff=_kind, base="0.3s"))(_always_fails)

forge.job(
    name="fail_capped",
    retry=forge.Retry(max_attempts=4, backoff="exponential", base="0.3s", max_backoff="0.5s"),
)(_always_fails)

forge.job(
    name="picky",
    retry=forge.Retry(max_attempts=3, backoff="fixed", base="0.05s", on=(NetworkError, "RateLimitError")),
)(_always_fails)


@forge.job(timeout="1s", retry=forge.Retry(max_attempts=1))
def sleep_forever(ctx: forge.JobContext, input: Sleep) -> None:
    record(ctx, "start")
    time.sleep(3600)


@forge.job(timeout="1s", retry=forge.Retry(max_attempts=1))
def spin(ctx: forge.JobContext, input: Sleep) -> None:
    record(ctx, "start")
    while True:
        pass


@forge.job(timeout="1s", retry=forge.Retry(max_attempts=2, backoff="fixed", base="0.1s"))
def sleep_then_retry(ctx: forge.JobContext, input: Sleep) -> None:
    record(ctx, "start")
    time.sleep(input.seconds if ctx.attempt > 1 else 3600)


@forge.job(retry=forge.Retry(max_attempts=1))
def crash(ctx: forge.JobContext, input: Crash) -> None:
    record(ctx, "start")
    os._exit(input.code)


@forge.job(timeout="2m")
def nap(ctx: forge.JobContext, input: Sleep) -> float:
    record(ctx, "start")
    time.sleep(input.seconds)
    record(ctx, "end")
    return input.seconds


class Print(msgspec.Struct):
    size: int = 4096


@forge.job(retry=forge.Retry(backoff="fixed", base="0.1s"))
def chatty(ctx: forge.JobContext, input: Print) -> None:
    """Prints `size` bytes to the stdout its worker inherited from the supervisor (blocking while that is full)."""
    print("x" * (input.size - 1), flush=True)


@forge.job
def report_progress(ctx: forge.JobContext, input: N) -> None:
    for step in range(1, input.n + 1):
        ctx.progress(step * 100 // input.n, f"step {step} of {input.n}")
    ctx.log.info("progress reported", steps=input.n)


_leaked: list[bytes] = []


@forge.job
def leak(ctx: forge.JobContext, input: N) -> None:
    """Keeps input.n MiB alive in the worker for good, like a leaking job would."""
    record(ctx, "start")
    _leaked.append(b"\x01" * (input.n * 1024 * 1024))  # written, so resident


@forge.job(retry=forge.Retry(max_attempts=1))
def segfault(ctx: forge.JobContext, input: N) -> None:
    import ctypes

    record(ctx, "start")
    ctypes.string_at(0)


@forge.job(retry=forge.Retry(max_attempts=1))
def quick(ctx: forge.JobContext, input: Crash) -> int:
    """A short job (no I/O) that kills its worker when input.code is 0."""
    if input.code == 0:
        os._exit(3)
    return input.code


@forge.job
def driver_loaded(ctx: forge.JobContext, input: N) -> bool:
    """Whether this worker had psycopg loaded before the job touched ctx.db."""
    return "psycopg" in sys.modules


@forge.job(timeout="1s", retry=forge.Retry(max_attempts=1))
def ignore_sigterm(ctx: forge.JobContext, input: Sleep) -> None:
    """Records the SIGTERM of its timeout and sleeps on: only a SIGKILL ends it."""
    signal.signal(signal.SIGTERM, lambda *_: record(ctx, "sigterm"))
    record(ctx, "start")
    time.sleep(3600)  # resumed after the handler (PEP 475)


@forge.job(timeout="3s", retry=forge.Retry(max_attempts=1))
def sleep_with_child(ctx: forge.JobContext, input: Child) -> None:
    """Starts a child process that sleeps (ignoring SIGTERM if asked), records its pid, and sleeps."""
    # An ignored signal stays ignored across exec, so sleep inherits the shell's trap.
    script = "trap '' TERM; exec sleep 3600" if input.ignore_sigterm else "exec sleep 3600"
    child = subprocess.Popen(["sh", "-c", script])
    record(ctx, "child", child.pid)
    time.sleep(3600)


class Payload(msgspec.Struct):
    data: str = ""
    seconds: float = 0.0
    log: str = ""  # a file to append "id attempt pid" to at each start


@forge.job(retry=forge.Retry(max_attempts=1))
def usually_short(ctx: forge.JobContext, input: Payload) -> int:
    """A short job (no database I/O) that runs input.seconds when asked, and logs its starts to a file."""
    if input.log:
        with open(input.log, "a") as log:
            log.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
    time.sleep(input.seconds)
    return len(input.data)


def _fork_descendants(report: int) -> None:
    """A child in a session of its own and a daemon (double fork: orphaned at once), each reporting its pid."""
    if os.fork() == 0:
        _descendant(report)
        os._exit(0)
    if os.fork() == 0:
        if os.fork() == 0:
            _descendant(report)
        os._exit(0)


def _descendant(report: int) -> None:
    """In a forked child: leave the worker's session and process group, report this pid, hang."""
    os.setsid()
    os.write(report, f"{os.getpid()}\n".encode())
    time.sleep(3600)


@forge.job(timeout="1s", retry=forge.Retry(max_attempts=1))
def leave_descendants(ctx: forge.JobContext, input: Payload) -> None:
    """Starts a child in a session of its own and a daemon (double fork: orphaned at once), then hangs.

    Each writes its pid to input.log (no database round trip: the job has 1 s before its timeout kill).
    """
    with open(input.log, "ab", buffering=0) as log:
        _fork_descendants(log.fileno())
    time.sleep(3600)


@forge.job
def measure(ctx: forge.JobContext, input: str) -> int:
    """The length of the input it was given."""
    return len(input)


@forge.job(retry=forge.Retry(max_attempts=1))
def keeps_a_daemon(ctx: forge.JobContext, input: Sleep) -> bool:
    """Starts a daemon (double fork), waits input.seconds, then stops it: whether it still ran by then."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        if os.fork() == 0:
            _descendant(write_end)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pids:
        pid = int(pids.readline())
    time.sleep(input.seconds)
    try:
        with open(f"/proc/{pid}/stat") as stat:
            running = stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:  # killed and reaped
        return False
    os.kill(pid, 9)
    return running


class ChildPid(msgspec.Struct):
    pid_file: str  # where the child's pid is written
    new_session: bool = False  # the child calls setsid(): no signal to the worker's group reaches it


@forge.job(retry=forge.Retry(max_attempts=1))
def leaves_a_child(ctx: forge.JobContext, input: ChildPid) -> int:
    """Starts `sleep 60`, writes its pid to input.pid_file, and returns without waiting for it: the pid."""
    child = subprocess.Popen(["sleep", "60"], start_new_session=input.new_session)
    partial = f"{input.pid_file}.partial"
    with open(partial, "w") as handle:
        handle.write(str(child.pid))
    os.rename(partial, input.pid_file)  # the test reads the whole pid or nothing
    return child.pid


@forge.job(retry=forge.Retry(max_attempts=3))
def closes_its_fds(ctx: forge.JobContext, input: N) -> int:
    """Closes every file descriptor but stdin, stdout and stderr, as a careless os.closerange does (the worker's
    socket to the supervisor among them), and returns input.n."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    return input.n


# --- data PostgreSQL cannot store (tests/acceptance/test_bad_reports.py) ---------


class Hand(msgspec.Struct):
    """What bad_data hands back: how (progress, return, raise...) and the text or size. In text, {NUL} and
    {SURROGATE} stand for what no input may hold: a NUL character and an unpaired surrogate."""

    how: str
    text: str = ""
    size: int = 0
    seconds: float = 0.0


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@forge.job(retry=forge.Retry(max_attempts=2, backoff="fixed", base="0.05s"))
def bad_data(ctx: forge.JobContext, input: Hand) -> object:
    """Reports, returns or raises input.text (or a result of input.size characters); retried once."""
    record(ctx, "start")
    text = input.text.replace("{NUL}", "\x00").replace("{SURROGATE}", "\ud800")
    if input.how == "progress":
        ctx.progress(10, text)
        time.sleep(input.seconds)
        return "done"
    if input.how == "return":
        return text
    if input.how == "return_nested":
        return {"fine": 1, "nested": ["ok", {"bad": text}]}
    if input.how == "return_size":
        return "x" * input.size
    if input.how == "raise":
        raise ValueError(text)
    if input.how == "raise_unprintable":
        raise Unprintable()
    raise AssertionError(f"unknown how {input.how!r}")


@forge.job(timeout="5m")
def progress_loop(ctx: forge.JobContext, input: Sleep) -> int:
    """Calls ctx.progress in a tight loop for input.seconds; how many calls it made."""
    record(ctx, "start")
    calls = 0
    ends = time.monotonic() + input.seconds
    while time.monotonic() < ends:
        calls += 1
        ctx.progress(calls % 101, f"call {calls}")
    return calls


# --- jobs whose processes try to outlive a kill (tests/acceptance/test_kills.py) ---------


@forge.job(retry=forge.Retry(max_attempts=1))
def spawn_children(ctx: forge.JobContext, input: Payload) -> None:
    """Starts three long-running children, writes their pids to input.log, then runs input.seconds.

    One in the worker's process group (subprocess), one in a session of its own, one a daemon (double fork).
    """
    with open(input.log, "ab", buffering=0) as log:
        child = subprocess.Popen(["sleep", "60"])
        log.write(f"{child.pid}\n".encode())
        _fork_descendants(log.fileno())
    time.sleep(input.seconds)


def _leave_group(ctx: forge.JobContext, input: Payload) -> None:
    """Moves its worker into the zygote's process group (out of the one the supervisor signals), writes the
    worker's pid to input.log, and runs input.seconds."""
    os.setpgid(0, os.getpgid(os.getppid()))
    with open(input.log, "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(input.seconds)


leave_group = forge.job(name="leave_group", retry=forge.Retry(max_attempts=1))(_leave_group)
leave_group_timed = forge.job(name="leave_group_timed", timeout="1s", retry=forge.Retry(max_attempts=1))(_leave_group)
