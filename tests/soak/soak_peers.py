"""The two ends of the soak load, each run as its own process so that neither shares a core (or
Python's interpreter lock) with the other or with the test that watches the tunnel.

    soak_peers.py echo
        An echo server on 127.0.0.1 (port chosen by the kernel): echoes every byte and ends its
        side when the client has ended its own. Prints "listening PORT", then runs until it is
        ended by signal.
    soak_peers.py load PORT CONNECTIONS CONCURRENCY SECONDS SEED
        Keeps CONCURRENCY connections to 127.0.0.1:PORT in flight until CONNECTIONS have been
        made or SECONDS have passed (no new connection starts after that). Each connection sends
        100 distinct bytes, ends its sending side, and must read exactly those bytes back and then
        the end of stream. Prints one JSON line: {"started", "ok", "lost", "seconds", "examples"}.

Everything is on loopback; both the count and the time are bounded by the arguments.
"""

import asyncio
import json
import sys
import time

PAYLOAD_SIZE = 100
CONNECTION_TIMEOUT = 20.0


class EchoServer(asyncio.Protocol):

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False  # close once the echoed bytes are written


class ShortClient(asyncio.Protocol):
    """One soak connection: send the payload, end the sending side, expect the payload back."""

    def __init__(self, payload, done):
        self.payload = payload
        self.done = done
        self.received = bytearray()
        self.saw_end = False

    def connection_made(self, transport):
        transport.write(self.payload)
        transport.write_eof()

    def data_received(self, data):
        self.received += data

    def eof_received(self):
        self.saw_end = True
        return False

    def connection_lost(self, error):
        if self.done.done():
            return
        if error is None and self.saw_end and self.received == self.payload:
            self.done.set_result(None)
        else:
            self.done.set_result("%d of %d bytes back, end=%s, error=%r"
                                 % (len(self.received), len(self.payload), self.saw_end, error))


async def serve_echo():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoServer, "127.0.0.1", 0, backlog=4096,
                                      reuse_address=True)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def payload_for(index, seed):
    head = ("%d:%d:" % (seed, index)).encode()
    return (head * (PAYLOAD_SIZE // len(head) + 1))[:PAYLOAD_SIZE]


async def one_connection(loop, port, payload):
    done = loop.create_future()
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: ShortClient(payload, done), "127.0.0.1", port),
            CONNECTION_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as error:
        return "connect failed: %r" % (error,)
    try:
        return await asyncio.wait_for(done, CONNECTION_TIMEOUT)
    except asyncio.TimeoutError:
        transport.abort()
        return "no answer within %.0fs" % CONNECTION_TIMEOUT


async def run_load(port, connections, concurrency, seconds, seed):
    loop = asyncio.get_running_loop()
    started_at = time.monotonic()
    deadline = started_at + seconds
    counts = {"started": 0, "ok": 0, "lost": 0}
    examples = []

    async def lane():
        while counts["started"] < connections and time.monotonic() < deadline:
            index = counts["started"]
            counts["started"] += 1
            failure = await one_connection(loop, port, payload_for(index, seed))
            if failure is None:
                counts["ok"] += 1
            else:
                counts["lost"] += 1
                if len(examples) < 5:
                    examples.append(failure)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    counts["seconds"] = round(time.monotonic() - started_at, 3)
    counts["examples"] = examples
    return counts


def main(argv):
    if argv[1:2] == ["echo"]:
        asyncio.run(serve_echo())
        return 0
    if argv[1:2] == ["load"] and len(argv) == 7:
        port, connections, concurrency = int(argv[2]), int(argv[3]), int(argv[4])
        seconds, seed = float(argv[5]), int(argv[6])
        result = asyncio.run(run_load(port, connections, concurrency, seconds, seed))
        print(json.dumps(result), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
