"""Frames between the supervisor, the zygote and the workers.

Every frame is a msgspec-encoded (MessagePack) tagged struct preceded by its
length as 4 big-endian bytes, over a Unix stream socket. Job inputs and
results travel as the JSON bytes stored in the database, never re-encoded.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import TYPE_CHECKING, Generic, TypeVar, Union

import msgspec

if TYPE_CHECKING:
    from typing_extensions import TypeForm  # PEP 747: a Struct class or a Union of them

_LENGTH = struct.Struct(">I")
#: Longest text (characters) stored from a job: each of an error's message and traceback, a progress message.
MAX_TEXT = 64 * 1024
#: What neither PostgreSQL's text nor jsonb can store: NUL, and unpaired surrogates (not UTF-8 at all).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: One read takes at most this much; a longer frame is put together over reads.
_READ_SIZE = 1 << 18
#: A frame to a worker is padded to at least this many bytes (encode_padded), so a worker reads a short job's
#: frame with one recv of this size and never a byte of the frame after it (which must stay in the socket,
#: where the supervisor can take it back: supervisor/outbox.py). One recv per job, not two: a few percent of
#: no-op throughput (docs/performance.md). Inputs of up to about 450 bytes fit.
PADDED_FRAME = 512


class Limits(msgspec.Struct, array_like=True):
    """With a job whose type asks for resources: what it was given (capacity.Grant), for confine.py."""

    cores: list[int]  # the CPU ids it is pinned to (none: not pinned)
    memory: int  # bytes its process tree may use (0: no limit)
    gpus: list[str]  # its CUDA_VISIBLE_DEVICES


class RunJob(msgspec.Struct, tag="run", array_like=True):
    """Supervisor -> worker: run this job now."""

    id: int
    attempt: int
    job_type: str
    input: bytes
    parent_id: int | None = None
    limits: Limits | None = None  # None for a job that asks for nothing (nearly all): a nil byte


class Completed(msgspec.Struct, tag="done", array_like=True):
    """Worker -> supervisor: the job returned; result is its JSON (None for None)."""

    id: int
    attempt: int
    result: bytes | None
    retiring: bool = False


class Failed(msgspec.Struct, tag="fail", array_like=True):
    """Worker -> supervisor: the job raised; error is a JSON object."""

    id: int
    attempt: int
    retryable: bool
    error: bytes
    retiring: bool = False


class Progress(msgspec.Struct, tag="progress", array_like=True):
    """Worker -> supervisor: the running job's progress (0-100) and message."""

    id: int
    attempt: int
    percent: int
    message: str | None


class Log(msgspec.Struct, tag="log", array_like=True):
    """Worker -> supervisor: a line of the running job's log (ctx.log); fields is the JSON of its fields."""

    id: int
    attempt: int
    level: str
    message: str
    fields: bytes | None


class Heartbeat(msgspec.Struct, tag="beat", array_like=True):
    """Worker -> supervisor: the running job is alive (ctx.heartbeat())."""

    id: int
    attempt: int


class Spawn(msgspec.Struct, tag="spawn", array_like=True):
    """Supervisor -> zygote: fork a worker for `slot` on the socket sent with this frame."""

    slot: int
    settings: bytes


class Spawned(msgspec.Struct, tag="spawned", array_like=True):
    """Zygote -> supervisor: the worker for `slot` runs as `pid`."""

    slot: int
    pid: int


class Exited(msgspec.Struct, tag="exited", array_like=True):
    """Zygote -> supervisor: worker `pid` ended with wait status `status`."""

    pid: int
    status: int


class Fenced(msgspec.Struct, tag="fenced", array_like=True):
    """Zygote -> supervisor: the lease went stale, so these workers were SIGKILLed."""

    pids: list[int]


FromWorker = Union[Completed, Failed, Progress, Log, Heartbeat]
FromZygote = Union[Spawned, Exited, Fenced]

_encoder = msgspec.msgpack.Encoder()

#: The message type a FrameReader decodes: one Struct, or a Union of tagged Structs.
M = TypeVar("M")


def encode(message: msgspec.Struct) -> bytes:
    """One frame: length prefix and body."""
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


def encode_padded(message: msgspec.Struct) -> bytes:
    """One frame padded with zero bytes to PADDED_FRAME, for FrameReader.receive_one."""
    return encode(message).ljust(PADDED_FRAME, b"\0")


class FrameReader(Generic[M]):
    """Splits a byte stream into decoded messages of one union type."""

    def __init__(self, message_type: TypeForm[M]) -> None:
        self._decoder = msgspec.msgpack.Decoder(message_type)
        self._buffer = bytearray()
        # Reads land in one reused buffer: a fresh bytes object per recv() of
        # this size costs an mmap, a resize and an munmap each time, the
        # arbiter's largest line of Python time (docs/performance.md).
        self._scratch = memoryview(bytearray(_READ_SIZE))

    def receive(self, sock: socket.socket, flags: int = 0) -> list[M] | None:
        """Read once from `sock`; every message now complete, or None at the end of the stream.

        Errors of the read (BlockingIOError with MSG_DONTWAIT, OSError) are the caller's.
        """
        size = sock.recv_into(self._scratch, _READ_SIZE, flags)
        if not size:
            return None
        return self.feed(self._scratch[:size])

    def receive_one(self, sock: socket.socket) -> M | None:
        """Read exactly one padded frame (encode_padded) from a blocking `sock`, not a byte past it; None at the
        end of the stream.

        What follows stays in the socket, where its writer can still take it back
        unread (supervisor/outbox.py). Not to be mixed with receive() or feed().
        """
        head = self._scratch[:PADDED_FRAME]
        # Nearly always one recv; _fill only if a signal or a part-written frame cut it short.
        got = sock.recv_into(head, PADDED_FRAME, socket.MSG_WAITALL)
        if got < PADDED_FRAME and not (got and _fill(sock, head[got:])):
            return None
        end: int = _LENGTH.size + _LENGTH.unpack_from(head)[0]
        if end <= PADDED_FRAME:
            message: M = self._decoder.decode(head[_LENGTH.size : end])
            return message
        whole = self._scratch[:end] if end <= _READ_SIZE else memoryview(bytearray(end))
        whole[:PADDED_FRAME] = head
        return self._decoder.decode(whole[_LENGTH.size :]) if _fill(sock, whole[PADDED_FRAME:]) else None

    def feed(self, data: bytes | memoryview) -> list[M]:
        """Add received bytes; return every message now complete."""
        self._buffer += data
        messages: list[M] = []
        offset = 0
        with memoryview(self._buffer) as view:
            while len(view) - offset >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(view, offset)
                end = offset + _LENGTH.size + size
                if len(view) < end:
                    break
                messages.append(self._decoder.decode(view[offset + _LENGTH.size : end]))
                offset = end
        del self._buffer[:offset]
        return messages


def _fill(sock: socket.socket, view: memoryview) -> bool:
    """Fill `view` from `sock`; False if the stream ends first."""
    got = 0
    while got < len(view):
        count = sock.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
        if not count:
            return False
        got += count
    return True


def storable(text: str, *, keep_end: bool = False) -> str:
    """`text` as PostgreSQL can store it: NUL characters and unpaired surrogates become U+FFFD, and text over
    MAX_TEXT characters is cut, keeping its start (its end with keep_end: a traceback's last lines), saying so."""
    if "\x00" in text or not text.isascii():
        text = _UNSTORABLE.sub("\ufffd", text)
    cut = len(text) - MAX_TEXT
    if cut <= 0:
        return text
    if keep_end:
        return f"[{cut} characters cut]\n{text[cut:]}"
    return f"{text[:MAX_TEXT]} [{cut} characters cut]"


def error_payload(error_type: str, message: str, attempt: int, traceback: str | None = None) -> bytes:
    """The JSON stored in forge_jobs.last_error for one failed attempt, its text made storable."""
    return msgspec.json.encode({
        "type": storable(error_type),
        "message": storable(message),
        "traceback": None if traceback is None else storable(traceback, keep_end=True),
        "attempt": attempt,
    })


class WorkerSettings(msgspec.Struct, array_like=True):
    """What a freshly forked worker needs to know (sent with each Spawn)."""

    dsn: str
    max_jobs: int | None
    max_memory: int | None
    log_level: str
    # The node's lease owner (forge_jobs.claimed_by): for completions written in a job's own transaction,
    # and named in the job log lines of the stream.
    owner: str
    memory_cgroup: str | None = None  # the node's memory cgroup (machine.MemoryCgroups), if it has one
    gpu_node: bool = False  # [node] gpus lists devices: jobs without a GPU get CUDA_VISIBLE_DEVICES=""
