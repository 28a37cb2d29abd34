"""A small TCP proxy on 127.0.0.1, run by asyncio in a thread of the test process.

A node whose [database] url points at the proxy's port can be partitioned
alone. Modes (set_mode, effective at once on every connection):

    pass       forward both ways
    blackhole  accept new connections and hold them; forward nothing, either way,
               on old or new connections (a silent network partition)
    reset      close every connection with a TCP RST, and new ones as they come
    refuse     close the listening socket (connection refused) and every connection

Bounded: at most `max_connections` at once, reads of 64 KiB; stop() ends everything.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

MODES = ("pass", "blackhole", "reset", "refuse")


class Proxy:
    def __init__(self, target_host: str, target_port: int, max_connections: int = 200) -> None:
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.mode = "pass"
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._flowing = asyncio.Event()

    # -- control, from the test thread ---------------------------------------

    def start(self) -> "Proxy":
        self._thread.start()
        self._call(self._listen())
        return self

    @property
    def url_netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self._call(self._set_mode(mode))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- the loop -------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.mode == "pass":
            self._flowing.set()

    async def _set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "pass":
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode in ("reset", "refuse"):
            for client, upstream in list(self._conns):
                _reset(client)
                if upstream is not None:
                    _reset(upstream)
            self._conns.clear()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif mode != "refuse" and self._server is None:
            await self._listen()

    async def _shutdown(self) -> None:
        self.mode = "refuse"
        await self._set_mode("refuse")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode in ("reset", "refuse") or len(self._conns) >= self.max_connections:
            _reset(writer)
            return
        entry: list[Any] = [writer, None]
        key = (writer, None)
        self._conns.add(key)
        try:
            await self._flowing.wait()  # blackhole: hold the new connection
            if self.mode != "pass":
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._conns.discard(key)
            key = (writer, up_writer)
            entry[1] = up_writer
            self._conns.add(key)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                                 return_exceptions=True)
        except OSError:
            pass
        finally:
            self._conns.discard(key)
            for w in entry:
                if w is not None:
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            if not self._flowing.is_set():
                await self._flowing.wait()
            data = await reader.read(65536)
            if not data:
                writer.close()
                return
            while not self._flowing.is_set():  # blackholed mid-read: hold what we read
                await self._flowing.wait()
            if self.mode != "pass":
                return
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer sees a reset, not an orderly end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.close()
