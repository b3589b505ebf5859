"""A TCP proxy in front of a broker that can swallow Kafka Produce requests: a write that never
completes, for the worker's failed-write path (the broker advertises the proxy, so every client goes
through it after bootstrap)."""

from __future__ import annotations

import asyncio
import struct
import threading

PRODUCE = 0  # Kafka API key


class ProduceBlackhole:
    """Forwards every byte between clients and ``target_port``, except Produce requests that contain
    ``drop`` (a topic name), which get no answer while ``drop`` is set."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self.drop: bytes | None = None
        self.dropped = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProduceBlackhole:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.listen_port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._requests(client_r, broker_w), self._copy(broker_r, client_w),
                             return_exceptions=True)
        for w in (client_w, broker_w):
            w.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = await reader.readexactly(4)
                body = await reader.readexactly(struct.unpack(">i", size)[0])
                if self.drop is not None and struct.unpack(">h", body[:2])[0] == PRODUCE and self.drop in body:
                    self.dropped += 1
                    continue
                writer.write(size + body)
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
