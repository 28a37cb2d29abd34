"""Worker slots (a worker's process, the jobs handed to it, its killing) and the job-duration record.

A slot is one worker position. Jobs are handed to its worker in order over
its socket (through its outbox, outbox.py); the first one handed and not yet
reported (the head) is the one running, the others wait in the outbox or the
worker's socket. Only jobs known to be short are ever queued behind another,
so a job never waits behind a long one while other workers or nodes are idle
(see JobDurations); and should a short one turn out long, the jobs queued
behind it are taken back (take_back_waiting) for other workers.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from .._core import ClaimedJob
from .capacity import Grant
from .descendants import parent_of, signal_worker
from .outbox import OUTBOX_LIMIT, Outbox
from .protocol import FrameReader, FromWorker, Limits, RunJob, encode_padded

_log = logging.getLogger("forge.arbiter")

#: A job type is "short" when its recent runs average under this, in seconds.
SHORT_JOB = 0.002
#: How many short jobs a worker may hold at once (one running, the rest waiting).
MAX_BATCH = 32
#: A worker holding short jobs is topped up only once it is down to this many,
#: then back to MAX_BATCH in one write: a send (and a wake-up of the worker)
#: per ~16 jobs instead of one per job, which was most of the arbiter's time.
REFILL_AT = MAX_BATCH // 2
#: Jobs queued behind a head running this long are taken back for other workers, in seconds: well past
#: a short job (and the scheduling noise of a busy machine), well before a wait anyone would notice.
TAKE_BACK_AFTER = 0.05
#: A killed worker whose exit the zygote has not reported this long after a SIGKILL is looked at again, in
#: seconds: SIGKILLed again if it still runs, its slot freed if it is gone. A SIGKILL takes milliseconds.
KILL_RECHECK = 1.0
#: Weight of the newest run in a type's moving average.
_EMA_WEIGHT = 0.2


class JobDurations:
    """Moving averages of how long each job type runs, as seen by the arbiter."""

    def __init__(self) -> None:
        self._average: dict[str, float] = {}
        self._overall: float | None = None

    def observe(self, job_type: str, seconds: float) -> None:
        previous = self._average.get(job_type)
        self._average[job_type] = seconds if previous is None else previous + _EMA_WEIGHT * (seconds - previous)
        overall = self._overall
        self._overall = seconds if overall is None else overall + _EMA_WEIGHT * (seconds - overall)

    def short(self, job_type: str) -> bool:
        """Known to run briefly: may be batched behind other short jobs."""
        average = self._average.get(job_type)
        return average is not None and average < SHORT_JOB

    def per_worker(self) -> int:
        """How many jobs to keep per worker: a batch while recent jobs are short, else one."""
        return MAX_BATCH if self._overall is not None and self._overall < SHORT_JOB else 1

    def runs_within(self, seconds: float) -> int:
        """How many recent jobs, one after another, one worker runs in `seconds` (0 before any ran)."""
        return int(seconds / self._overall) if self._overall else 0


@dataclass
class Slot:
    """One worker position: its process, socket and the jobs handed to it."""

    index: int
    sock: socket.socket | None = None  # the supervisor's end of the worker's socket, non-blocking
    peer: socket.socket | None = None  # the worker's end, kept to take back what it has not read
    outbox: Outbox = field(default_factory=Outbox)
    writing: bool = False  # the outbox has bytes the socket did not take: watched for room
    reader: FrameReader[FromWorker] = field(default_factory=lambda: FrameReader(FromWorker))
    pid: int | None = None
    jobs: deque[ClaimedJob] = field(default_factory=deque)
    head_since: float = 0.0  # when the head job started running, monotonic
    deadline: float | None = None  # the head job's timeout, monotonic
    beat_deadline: float | None = None  # the head job's heartbeat timeout, monotonic
    kill_reason: str | None = None  # "timeout", "hung", "cancelled", "shutdown", "fenced" or "lost" once killed
    sigkill_at: float | None = None  # when a SIGKILL is due: kill_grace after the SIGTERM, then every KILL_RECHECK
    retiring: bool = False
    all_short: bool = True  # every job held was short when handed over
    stalled: bool = False  # the jobs behind the head were taken back: none are added until it reports
    grant: Grant | None = None  # what the head job was given of the node's capacity, if it asked (capacity.py)

    @property
    def job(self) -> ClaimedJob | None:
        """The job running now, if any."""
        return self.jobs[0] if self.jobs else None

    @property
    def usable(self) -> bool:
        """Its worker is up and may be handed jobs."""
        return self.sock is not None and self.pid is not None and not self.retiring and self.kill_reason is None

    def place_of(self, job_id: int, attempt: int) -> int | None:
        """Where that attempt of that job is among those held (0: the head, running), if it is."""
        return next((place for place, job in enumerate(self.jobs) if (job.id, job.attempt) == (job_id, attempt)),
                    None)

    def wants_jobs(self) -> bool:
        """Whether to hand this worker jobs in this pass: it is idle, or low on short jobs."""
        return self.usable and len(self.jobs) <= REFILL_AT

    def accepts(self, job_type: str, durations: JobDurations) -> bool:
        """Whether a job of `job_type` may be handed to this worker now."""
        if not self.usable:
            return False
        if not self.jobs:
            return True
        if self.stalled or self.grant is not None or self.outbox.waiting >= OUTBOX_LIMIT:
            return False
        return self.all_short and len(self.jobs) < MAX_BATCH and durations.short(job_type)

    def hold(self, job: ClaimedJob, durations: JobDurations, grant: Grant | None = None) -> None:
        """Hand `job` to this worker (after accepts() said yes, or to an idle one with what the job was granted):
        its frame goes to the outbox."""
        self.all_short = (self.all_short or not self.jobs) and durations.short(job.job_type)
        self.jobs.append(job)
        limits = None if grant is None else Limits(list(grant.cores), grant.memory, list(grant.gpus))
        self.outbox.add(encode_padded(RunJob(job.id, job.attempt, job.job_type, job.input, job.parent_id, limits)))
        if grant is not None:
            self.grant = grant

    def end_grant(self) -> Grant | None:
        """The head job ended: what it was given of the node's capacity, to give back (None: nothing)."""
        grant, self.grant = self.grant, None
        return grant

    def reported(self) -> ClaimedJob:
        """The head job ended: the worker read its frame, and will read the next one."""
        self.outbox.reported()
        self.stalled = False
        return self.jobs.popleft()

    def moments(self) -> list[float]:
        """When the arbiter must look at this slot again: its deadlines, a SIGKILL due, a take-back."""
        return [t for t in (self.deadline, self.beat_deadline, self.sigkill_at, self.take_back_at()) if t is not None]

    def take_back_at(self) -> float | None:
        """When to take back the jobs queued behind the head, should it still run then."""
        if len(self.jobs) < 2 or self.stalled or self.kill_reason is not None:
            return None
        return self.head_since + TAKE_BACK_AFTER

    def take_back_waiting(self) -> list[ClaimedJob]:
        """Take back the held jobs whose frames the worker has not begun to read; the head always stays.

        They never started: the caller hands them to another worker or back to
        the database, uncharged. No job is added until the head reports.
        """
        assert self.peer is not None
        self.outbox.take_back(self.peer)
        keep = max(1, self.outbox.begun())
        self.outbox.keep(keep)
        taken = [self.jobs.pop() for _ in range(len(self.jobs) - keep)]
        taken.reverse()
        self.stalled = True
        return taken

    def head_started(self) -> bool:
        """Whether the worker, now gone, had read the head job's frame whole (only then can it have run it)."""
        if self.peer is not None:
            self.outbox.take_back(self.peer)
        return self.outbox.first_read()

    def drop_held(self) -> list[ClaimedJob]:
        """Forget every job held, and its frame; return them, the head first."""
        held = list(self.jobs)
        self.jobs.clear()
        self.outbox = Outbox()
        return held

    def kill(self, reason: str, kill_grace: float, *, at_once: bool = False) -> None:
        """SIGTERM the worker and its process group (SIGKILL after kill_grace), or SIGKILL at once.

        The worker's socket is half-closed first: that is how the worker tells
        this SIGTERM from one sent to a whole process group or cgroup (signals.py).
        Until the zygote reports the worker's exit, the SIGKILL is repeated every
        KILL_RECHECK (escalate).
        """
        self.kill_reason = reason
        self.deadline = self.beat_deadline = None
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_WR)
        if at_once:
            self.sigkill(time.monotonic())
        else:
            self.sigkill_at = time.monotonic() + kill_grace
            self._signal(signal.SIGTERM)

    def escalate(self, now: float, zygote: int) -> int | None:
        """A SIGKILL is due (again: the worker's exit is not reported yet): sent while the worker is still the child
        of `zygote`. Once it is not (reaped, and its exit report lost, or on its way and then ignored) nothing will
        report it: returns its pid, for the caller to free the slot."""
        if self.pid is not None and parent_of(self.pid) != zygote:
            _log.error("worker %d is gone but its exit was never reported; freeing slot %d", self.pid, self.index)
            return self.pid
        self.sigkill(now)
        return None

    def sigkill(self, now: float) -> None:
        """SIGKILL the worker and its process group; look again in KILL_RECHECK if its exit is not reported."""
        self.sigkill_at = now + KILL_RECHECK
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        """Send `signum` to the worker and its group (whatever its job started there), if it has a process."""
        if self.pid is not None:
            signal_worker(self.pid, signum)

    def reset(self) -> None:
        """Forget the worker (it is gone or being replaced)."""
        self.pid = None
        self.jobs.clear()
        self.deadline = self.beat_deadline = self.sigkill_at = None
        self.kill_reason = None
        self.retiring = self.stalled = self.writing = False
        self.outbox = Outbox()
        self.reader = FrameReader(FromWorker)
