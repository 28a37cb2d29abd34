"""A worker's outbox: the frames handed to one worker, written without blocking, and taking back those it never read.

The arbiter never blocks on a worker. Frames are appended here and written
as far as the socket takes them; the rest waits, bounded (OUTBOX_LIMIT), and
the arbiter writes more when the socket has room again.

The worker reads one frame at a time (protocol.FrameReader.receive_one), only
once it reported the one before: the frames behind the job it runs are still
here or in its socket. The supervisor keeps the worker's end of the socket
too (zygote.Zygote.spawn) and can read them back out of it. The kernel hands
each byte to exactly one reader, so what comes back is exactly what the
worker never saw, however the two race: take_back() leaves `written` at the
worker's read position. A frame the worker has begun to read stays (its rest
is written again); the jobs of the frames after it never started, and may
go to another worker.
"""

from __future__ import annotations

import socket
from collections import deque

#: The arbiter adds no frame to an outbox holding this many unwritten bytes (one frame may pass it).
OUTBOX_LIMIT = 256 * 1024
#: Bytes read back out of a worker's socket per recv (its buffer holds about 200 KiB).
_TAKE_BACK_READ = 1 << 18


class Outbox:
    """The byte stream to one worker: where each held job's frame starts in it, and what is not written yet."""

    def __init__(self) -> None:
        self._pending = bytearray()  # the stream from `_written` on, not in the socket
        self._written = 0  # bytes of the stream in the socket or read by the worker
        self._starts: deque[int] = deque()  # stream offset of each held job's frame, in the order held

    @property
    def waiting(self) -> int:
        """Bytes not written to the socket yet."""
        return len(self._pending)

    def add(self, frame: bytes) -> None:
        """Append the frame of a job just held (after the jobs held before)."""
        self._starts.append(self._written + len(self._pending))
        self._pending += frame

    def write(self, sock: socket.socket) -> bool:
        """Write what the non-blocking `sock` takes now; whether nothing is left to write."""
        if self._pending:
            try:
                sent = sock.send(self._pending)
            except BlockingIOError:
                sent = 0
            del self._pending[:sent]
            self._written += sent
        return not self._pending

    def reported(self) -> None:
        """The first held job ended (so its frame was read): forget it."""
        self._starts.popleft()

    def take_back(self, peer: socket.socket) -> None:
        """Read every byte the worker has not read out of its end `peer`: they are pending again, in front."""
        chunks = []
        while True:
            try:
                chunk = peer.recv(_TAKE_BACK_READ, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not chunk:  # our end was shut down for writing (a kill): nothing more can come
                break
            chunks.append(chunk)
        unread = b"".join(chunks)
        self._pending[:0] = unread
        self._written -= len(unread)

    def begun(self) -> int:
        """How many held jobs' frames the worker has begun to read; exact right after take_back()."""
        count = 0
        for start in self._starts:
            if start >= self._written:
                break
            count += 1
        return count

    def first_read(self) -> bool:
        """Whether the worker has read the first held job's frame whole; exact right after take_back()."""
        end = self._starts[1] if len(self._starts) > 1 else self._written + len(self._pending)
        return bool(self._starts) and end <= self._written

    def keep(self, count: int) -> None:
        """Drop the frames of the held jobs after the first `count`, none of which the worker has begun to read."""
        assert count >= self.begun()
        if count < len(self._starts):
            del self._pending[self._starts[count] - self._written :]
        while len(self._starts) > count:
            self._starts.pop()
