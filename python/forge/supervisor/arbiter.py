"""The arbiter: the supervisor's one loop, in the manner of gunicorn's.

Signal handlers only record the signal; the loop acts on it. Each pass:
  1. waits for the zygote, the workers, the Rust core or a signal to speak;
  2. records what workers report (outcomes go to the core, which writes them in batches) and what the zygote
     reports (spawned and exited workers);
  3. enforces deadlines and stops jobs: a job past its timeout, or cancelled by an operator, has its worker and
     group SIGTERMed (SIGKILL after kill_grace, again until its exit is reported); prefetched jobs held too long
     go back; at the end of the shutdown grace busy workers are killed; when the core has not renewed this
     node's leases for fence_after, or finds a lease lost, the workers concerned are SIGKILLed so that no job
     runs here while another node runs it; jobs queued behind a head that turns out long are taken back,
     unstarted, for other workers (slot.Slot.take_back_waiting);
  4. hands claimed jobs to workers, best priority first: one at a time, or a batch of frames in one write when
     the jobs are known to be short; a job whose type asks for resources only once they are free (capacity.py);
     writes never block: what a worker's socket does not take waits in its outbox;
  5. grants the core claim credits for the room the workers have, plus a prefetch (how many: demand.py).
The loop wakes at least every lease.refresh_period, so the lease page the zygote watches is never older than the
renewals allow. Per job the arbiter does O(1) work: decode one frame, one call into the core, encode one frame
(and one call per log line or progress report). A worker that dies fails only the job it was running, and only if
it had read that job's frame; the jobs waiting behind it go back unrun. Its socket is read to the end first.
"""

from __future__ import annotations

import logging
import selectors
import signal
import socket
import time
from enum import Enum
from typing import Any

from .._core import ClaimedJob, Core
from ..config import NodeConfig
from ..job import Job
from .arbiter_log import Throughput, dump_state, log_failure, log_take_back
from .capacity import Admission, Capacity
from .demand import Demand, credits
from .lease import LeaseClock, RenewalDates, fence_after, refresh_period
from .lease import now as lease_now
from .machine import MemoryCgroups
from .protocol import Completed, Failed, Fenced, Log, Progress, Spawned, WorkerSettings
from .settle import fail_unknown, settle_head
from .signal_inbox import SignalInbox
from .slot import JobDurations, Slot
from .waiting import Waiting
from .zygote import Zygote

_log = logging.getLogger("forge.arbiter")

#: How long to wait for the zygote to report killed workers during shutdown.
_EXIT_WAIT = 5.0


class State(Enum):
    RUNNING = "running"
    DRAINING = "draining"  # no new jobs; handed ones may finish until the grace ends
    KILLING = "killing"  # grace over: workers are being killed, their jobs handed back


class Arbiter:
    def __init__(self, node: NodeConfig, core: Core, zygote: Zygote, jobs: dict[str, Job[Any]],
                 settings: WorkerSettings, lease: LeaseClock, admission: Admission | None = None,
                 cgroups: MemoryCgroups | None = None) -> None:
        self.node = node
        self.core = core
        self.zygote = zygote
        self.jobs = jobs
        self.settings = settings
        self.lease = lease
        self.state = State.RUNNING
        self.slots = [Slot(i) for i in range(node.workers)]
        self.durations = JobDurations()
        assert node.prefetch is not None  # NodeConfig.__post_init__ defaults it to workers
        self._spares: int = node.prefetch
        self._fence_after = fence_after(node.heartbeat_timeout)
        self._refresh = refresh_period(self._fence_after)  # the longest the loop sleeps
        self._renewals = RenewalDates(time.monotonic(), lease_now())
        self._fenced = False
        self._by_pid: dict[int, Slot] = {}
        self._queue = Waiting()  # claimed jobs that ask for no resources; those that do wait in _admission
        self._admission = Admission(Capacity(0, 0, (), (0,)), {}, 0) if admission is None else admission
        self._cgroups = MemoryCgroups(None) if cgroups is None else cgroups
        self._requested = 0
        self._received = 0
        self._prefetching = True  # see demand.Demand.prefetching
        self._signals = SignalInbox()
        self._grace_ends = 0.0
        self._selector = selectors.DefaultSelector()
        self._throughput = Throughput(time.monotonic())

    # -- the loop ---------------------------------------------------------

    def run(self) -> int:
        """Run until a stop signal has been handled and every worker is gone; the exit code."""
        self._signals.install(signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)
        self._selector.register(self._signals.fileno(), selectors.EVENT_READ, lambda _mask: self._signals.drain())
        self._selector.register(self.zygote.fileno(), selectors.EVENT_READ, self._on_zygote)
        self._selector.register(self.core.fileno(), selectors.EVENT_READ, self._on_core)
        self._watch_lease()
        for slot in self.slots:
            self._spawn(slot)
        while not self._finished():
            self._wait(self._timeout())
            self._handle_signals()
            now = time.monotonic()
            self._watch_lease()
            self._apply_cancels(now)
            self._enforce_deadlines(now)
            self._assign(now)
            self._grant_credits()
            self._throughput.summarise(now, self.core, self.slots)
        self._hand_back_queue()
        return 0

    def _wait(self, timeout: float) -> None:
        for key, mask in self._selector.select(timeout):
            key.data(mask)

    def _timeout(self) -> float:
        now = time.monotonic()
        moments = [now + self._refresh]
        for slot in self.slots:
            moments.extend(slot.moments())
        oldest = self._queue.oldest()
        if oldest is not None:
            moments.append(oldest + self.node.prefetch_timeout)
        if self.state is State.DRAINING:
            moments.append(self._grace_ends)
        return max(0.0, min(moments) - now)

    def _finished(self) -> bool:
        if self.state is State.RUNNING:
            return False
        alive = [s for s in self.slots if s.pid is not None or s.sock is not None]
        if not alive:
            return True
        if self.state is State.KILLING and time.monotonic() > self._grace_ends + self.node.kill_grace + _EXIT_WAIT:
            _log.error("workers %s did not report their exit; giving up on them", [s.pid for s in alive])
            for slot in alive:
                self._worker_gone(slot, None)
            return True
        return False

    # -- signals ------------------------------------------------------------

    def _handle_signals(self) -> None:
        for signum in self._signals.take():
            if signum == signal.SIGUSR1:  # log what every slot is doing, the lease and the core's counters
                dump_state(self.state.value, self._fenced, self.core, len(self._queue) + len(self._admission),
                           self._requested, self._received, self.slots)
            elif signum == signal.SIGQUIT or self.state is not State.RUNNING:
                self._kill_all(signal.Signals(signum).name)
            else:
                self._drain(signal.Signals(signum).name)

    def _drain(self, reason: str) -> None:
        """Stop claiming, hand back every job that has not started, let workers finish theirs."""
        _log.info("%s: stopping; running jobs have %.0fs to finish", reason, self.node.shutdown_grace)
        self.state = State.DRAINING
        self._grace_ends = time.monotonic() + self.node.shutdown_grace
        self.core.pause()
        self._hand_back_queue()
        for slot in self.slots:
            if slot.jobs and slot.kill_reason is None:
                self._release(slot.take_back_waiting())
                self._write(slot)
            elif not slot.jobs:
                self._dismiss(slot)

    def _kill_all(self, reason: str) -> None:
        """Grace over (or asked twice): kill every busy worker; its jobs go back unrun."""
        if self.state is not State.KILLING:
            _log.warning("%s: killing the workers still running jobs", reason)
        if self.state is State.RUNNING:
            self.core.pause()
            self._hand_back_queue()
        self.state = State.KILLING
        self._grace_ends = min(self._grace_ends or time.monotonic(), time.monotonic())
        for slot in self.slots:
            if slot.jobs and slot.kill_reason is None:
                self._kill(slot, "shutdown")
            elif not slot.jobs:
                self._dismiss(slot)

    def _kill(self, slot: Slot, reason: str, *, at_once: bool = False) -> None:
        """Kill a slot's worker: it gets no more frames (see slot.Slot.kill)."""
        slot.kill(reason, self.node.kill_grace, at_once=at_once)
        self._write(slot)  # stops watching the socket for room

    # -- the zygote and worker processes -----------------------------------------

    def _spawn(self, slot: Slot) -> None:
        slot.reset()
        sock, slot.peer = self.zygote.spawn(slot.index, self.settings)
        sock.setblocking(False)
        slot.sock = sock
        self._selector.register(sock, selectors.EVENT_READ, lambda mask: self._on_worker(slot, sock, mask))

    def _on_zygote(self, _mask: int) -> None:
        messages = self.zygote.receive()
        if messages is None:
            raise SystemExit("forge-supervisor: the zygote (fork server) died; cannot fork workers any more")
        for message in messages:
            if isinstance(message, Fenced):
                self._zygote_fenced(message.pids)
            elif isinstance(message, Spawned):
                slot = self.slots[message.slot]
                slot.pid = message.pid
                self._by_pid[message.pid] = slot
                if self.state is not State.RUNNING:
                    self._dismiss(slot)
            else:
                gone = self._by_pid.pop(message.pid, None)
                if gone is not None:
                    self._worker_gone(gone, message.status)

    def _on_worker(self, slot: Slot, sock: socket.socket, mask: int) -> None:
        # One select() returns a batch of events; handling an earlier one may have replaced this slot's socket (and
        # its fd number reused), so an event for a socket the slot no longer has is stale.
        if slot.sock is not sock:
            return
        if mask & selectors.EVENT_WRITE:
            self._write(slot)
        if mask & selectors.EVENT_READ:
            self._read(slot)

    def _read(self, slot: Slot) -> bool:
        """Apply one read's worth of what the worker wrote; False when there was nothing to read.

        The stream never ends here: the supervisor holds the worker's end too (zygote.Zygote.spawn); that the
        worker is gone, the zygote says."""
        assert slot.sock is not None
        try:
            messages = slot.reader.receive(slot.sock, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        now = time.monotonic()
        for message in messages or ():
            self._on_message(slot, message, now)
        return messages is not None

    def _write(self, slot: Slot) -> None:
        """Write what the worker's socket takes of its outbox; watch it for room while some is left."""
        assert slot.sock is not None
        done = slot.kill_reason is not None or slot.outbox.write(slot.sock)  # a killed worker gets nothing more
        if done == slot.writing:
            slot.writing = not done
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if slot.writing else 0)
            self._selector.modify(slot.sock, events, self._selector.get_key(slot.sock).data)

    def _on_message(self, slot: Slot, message: Any, now: float) -> None:
        job = slot.job
        if job is None or message.id != job.id or message.attempt != job.attempt:
            _log.warning("worker %s reported on job %s it does not run; ignored", slot.pid, message.id)
            return
        if isinstance(message, Completed):
            self.core.complete(job.id, job.attempt, message.result)
            self._job_done(slot, message.retiring, now)
        elif isinstance(message, Failed):
            self.core.fail(job.id, job.attempt, message.retryable, message.error)
            log_failure(job, message, self.jobs.get(job.job_type), self.node.dead_letter_after)
            self._job_done(slot, message.retiring, now)
        elif isinstance(message, Progress):
            self.core.progress(job.id, job.attempt, message.percent, message.message)
            self._renew_beat(slot, now)
        elif isinstance(message, Log):  # the core caps, cuts and stores it
            self.core.log(job.id, job.attempt, message.level, message.message, message.fields)
        else:  # a Heartbeat
            self._renew_beat(slot, now)

    def _job_done(self, slot: Slot, retiring: bool, now: float) -> None:
        """The head job reported: the next one handed to this worker starts now."""
        done = slot.reported()
        if slot.grant is not None:  # its capacity is free again
            self._admission.give_back(slot.end_grant())
        self.durations.observe(done.job_type, now - slot.head_since)
        self._prefetching = True
        if retiring:  # the worker exits now: what it still held never started
            slot.retiring = True
            self._release(slot.drop_held())
        if slot.jobs:
            self._begin_head(slot, now)
        else:
            slot.deadline = slot.beat_deadline = None
            if self.state is not State.RUNNING:
                self._dismiss(slot)

    def _begin_head(self, slot: Slot, now: float) -> None:
        """The first job the worker holds is now running: mark it and start its clocks."""
        job = slot.jobs[0]
        definition = self.jobs[job.job_type]
        slot.head_since = now
        slot.deadline = now + definition.timeout if definition.timeout is not None else None
        slot.beat_deadline = now + definition.heartbeat_timeout if definition.heartbeat_timeout else None
        self.core.start(job.id, job.attempt)

    def _renew_beat(self, slot: Slot, now: float) -> None:
        definition = self.jobs.get(slot.job.job_type) if slot.job else None
        if definition is not None and definition.heartbeat_timeout is not None:
            slot.beat_deadline = now + definition.heartbeat_timeout

    def _worker_gone(self, slot: Slot, status: int | None) -> None:
        """The worker process ended: apply all it wrote, settle its jobs, then replace it unless stopping."""
        while slot.sock is not None and self._read(slot):
            pass
        if slot.jobs:
            started = slot.head_started()
            head, *rest = slot.drop_held()
            oom = self._cgroups.killed(head, slot.grant)  # and its memory cgroup goes, whatever killed it
            reason = slot.kill_reason or oom
            settle_head(self.core, head, started, reason, status, self.jobs.get(head.job_type),
                        self._fence_after, self.node.dead_letter_after)
            self._release(rest)
        self._admission.give_back(slot.end_grant())
        self._close(slot)
        slot.reset()
        if self.state is State.RUNNING:
            self._spawn(slot)

    def _release(self, jobs: list[ClaimedJob]) -> None:
        """Hand jobs that never started back to the database, uncharged."""
        for job in jobs:
            self.core.release(job.id, job.attempt)

    def _close(self, slot: Slot) -> None:
        if slot.sock is not None:
            self._selector.unregister(slot.sock)
            slot.sock.close()
            slot.sock = None
        if slot.peer is not None:
            slot.peer.close()
            slot.peer = None

    def _dismiss(self, slot: Slot) -> None:
        """Close an idle worker's socket: it exits by itself."""
        if not slot.jobs and slot.pid is not None:
            self._close(slot)

    # -- the lease ------------------------------------------------------------

    def _watch_lease(self) -> None:
        """Share the last renewal with the zygote; fence this node while it is stale."""
        age_ms = self.core.lease_age_ms()
        now = lease_now()
        renewed = self._renewals.date(age_ms / 1000.0, time.monotonic(), now)
        self.lease.renewed(renewed)
        age = now - renewed
        stale = age > self._fence_after
        if stale and not self._fenced:
            _log.error("leases not renewed for %.1fs (limit %.1fs): killing the workers running jobs",
                       age, self._fence_after)
            for slot in self.slots:
                if slot.jobs and slot.kill_reason not in ("fenced", "lost"):
                    self._kill(slot, "fenced", at_once=True)
        elif self._fenced and not stale:
            _log.warning("leases renewed again; running jobs resumes")
        self._fenced = stale
        for job_id, attempt in self.core.lost():
            self._lease_lost(job_id, attempt)

    def _lease_lost(self, job_id: int, attempt: int) -> None:
        """Another node owns this job now: it must not run here (any more)."""
        for slot in self.slots:
            if slot.place_of(job_id, attempt) is not None:
                _log.error("job %s attempt %s: lease lost to another node; killing worker %s",
                           job_id, attempt, slot.pid)
                self._kill(slot, "lost", at_once=True)
                return
        self._queue.take(job_id, attempt) or self._admission.take(job_id, attempt)

    def _zygote_fenced(self, pids: list[int]) -> None:
        _log.error("the zygote found the lease clock stale and killed workers %s", pids)
        for pid in pids:
            slot = self._by_pid.get(pid)
            if slot is not None and slot.jobs and slot.kill_reason not in ("fenced", "lost"):
                self._kill(slot, "fenced", at_once=True)  # again: repeated until it takes (Slot.escalate)

    # -- an operator's cancel -------------------------------------------------------

    def _apply_cancels(self, now: float) -> None:
        """Stop the held jobs an operator cancelled: the database records whatever end they get as cancelled."""
        for job_id, attempt in self.core.cancels():
            self._cancel(job_id, attempt, now)

    def _cancel(self, job_id: int, attempt: int, now: float) -> None:
        """Kill the worker running it, or hand it back unstarted from the queue or from behind a worker's head.
        A job not found here has ended, or is still in the core's hands (the next renewal asks again)."""
        for slot in self.slots:
            place = slot.place_of(job_id, attempt)
            if place == 0 and slot.kill_reason is None:
                _log.warning("job %s (%s): cancelled by an operator; killing worker %s",
                             job_id, slot.jobs[0].job_type, slot.pid)
                self._kill(slot, "cancelled")
            elif place:
                for job in slot.take_back_waiting():
                    if (job.id, job.attempt) == (job_id, attempt):
                        self._release([job])
                    else:
                        self._queue.push(job, now)
                self._write(slot)
            if place is not None:
                return
        self._release(self._queue.take(job_id, attempt) or self._admission.take(job_id, attempt))

    # -- deadlines ------------------------------------------------------------

    def _enforce_deadlines(self, now: float) -> None:
        for slot in self.slots:
            take_back_at = slot.take_back_at()
            if slot.deadline is not None and now >= slot.deadline:
                self._kill(slot, "timeout")
            elif slot.beat_deadline is not None and now >= slot.beat_deadline:
                self._kill(slot, "hung")
            elif slot.sigkill_at is not None and now >= slot.sigkill_at:
                if (gone := slot.escalate(now, self.zygote.pid)) is not None:  # its exit unreported: free the slot
                    self._by_pid.pop(gone, None)
                    self._worker_gone(slot, None)
            elif take_back_at is not None and now >= take_back_at:  # the head turned out long
                taken = slot.take_back_waiting()
                log_take_back(slot.jobs[0], now - slot.head_since, taken)
                for job in taken:
                    self._queue.push(job, now)
                self._write(slot)  # the rest of a frame the worker had begun, if any
        if self.state is State.DRAINING and now >= self._grace_ends:
            self._kill_all("shutdown grace over")
        self._release_stale(now)

    def _release_stale(self, now: float) -> None:
        """Prefetched jobs not handed out within prefetch_timeout go back for other nodes."""
        limit = now - self.node.prefetch_timeout
        self._release(self._admission.take_stale(limit))
        oldest = self._queue.oldest()
        if oldest is None or oldest > limit:
            return
        self._release(self._queue.take_held_since(limit))
        self._prefetching = False

    # -- handing out jobs -------------------------------------------------------

    def _on_core(self, _mask: int) -> None:
        for level, message in self.core.logs():
            _log.log(logging.getLevelName(level.upper()), "core: %s", message)
        now = time.monotonic()
        for job in self.core.take():
            self._received += 1
            if self.state is not State.RUNNING:
                self.core.release(job.id, job.attempt)
                continue
            if job.job_type not in self.jobs:
                fail_unknown(self.core, job)
                continue
            (self._admission if job.job_type in self._admission.requests else self._queue).push(job, now)

    def _assign(self, now: float) -> None:
        """Hand queued jobs to workers that accept them, best first; one write per worker."""
        if not (self._queue or self._admission) or self._fenced:
            return
        for slot in self.slots:
            if not slot.wants_jobs():
                continue
            held = len(slot.jobs)
            durations = self.durations
            if not held and self._admission and (admitted := self._admission.admit(now, self._queue.best())):
                slot.hold(admitted[0], durations, admitted[1])
            while (job := self._queue.pop_if(lambda job: slot.accepts(job.job_type, durations))) is not None:
                slot.hold(job, durations)
            if len(slot.jobs) > held:
                if held == 0:
                    self._begin_head(slot, now)
                self._write(slot)
            if not (self._queue or self._admission):
                return

    def _grant_credits(self) -> None:
        """Grant the core the claim credits the demand policy asks for now (see demand.credits)."""
        per_worker = self.durations.per_worker()
        room = sum(per_worker - len(s.jobs) for s in self.slots if s.kill_reason is None and not s.retiring)
        wanted = credits(
            Demand(
                running=self.state is State.RUNNING, room=room,
                queued=len(self._queue) + len(self._admission),  # those waiting for capacity too (capacity.py)
                outstanding=self._requested - self._received, per_worker=per_worker,
                prefetching=self._prefetching, prefetch=self._spares, claim_batch=self.node.claim_batch,
                prefetch_timeout=self.node.prefetch_timeout, slots=len(self.slots), pace=self.durations,
            )
        )
        if wanted:
            self.core.request(wanted)
            self._requested += wanted

    def _hand_back_queue(self) -> None:
        self._release(self._queue.take_all() + self._admission.take_all())
        for job in self.core.take():
            self._received += 1
            self.core.release(job.id, job.attempt)
