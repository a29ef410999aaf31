"""The two ends of the concurrent-connections check, each run inside a test network namespace.

    load_peers.py serve PORT
        An echo server on 0.0.0.0:PORT (one thread, selectors). Prints "listening" when ready and
        runs until it is ended by signal.
    load_peers.py connect HOST:PORT COUNT TIMEOUT
        Opens COUNT connections to HOST:PORT, sends a distinct line on each and checks that it
        comes back, and keeps all of them open. Prints one JSON line {"held": N, "errors": [...]}
        when all are established and echoed, then waits for a line on stdin and closes them.

Every connection goes to an address inside the namespaces the test made; the number of
connections and the time spent are bounded by the arguments.
"""

import json
import selectors
import socket
import sys
import time


def serve(port):
    selector = selectors.DefaultSelector()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4096)
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ)
    print("listening", flush=True)

    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                try:
                    connection, _ = listener.accept()
                except BlockingIOError:
                    continue
                connection.setblocking(False)
                selector.register(connection, selectors.EVENT_READ)
                continue

            connection = key.fileobj
            try:
                data = connection.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(connection)
                connection.close()
                continue
            # The lines are a few bytes: a socket buffer always has room for them.
            connection.sendall(data)


def connect(address, count, timeout):
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    connections = []
    errors = []

    for index in range(count):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            errors.append("out of time after %d connections" % index)
            break
        try:
            connection = socket.create_connection((host, int(port)), timeout=remaining)
            connections.append(connection)
            connection.sendall(b"line %d\n" % index)
        except OSError as error:
            errors.append("connection %d: %s" % (index, error))
            break

    for index, connection in enumerate(connections):
        expected = b"line %d\n" % index
        received = b""
        try:
            connection.settimeout(max(0.1, deadline - time.monotonic()))
            while len(received) < len(expected):
                chunk = connection.recv(len(expected) - len(received))
                if not chunk:
                    break
                received += chunk
        except OSError as error:
            errors.append("connection %d: %s" % (index, error))
            continue
        if received != expected:
            errors.append("connection %d: echoed %r" % (index, received))

    held = sum(1 for connection in connections if connection.fileno() >= 0)
    print(json.dumps({"held": held, "errors": errors[:10]}), flush=True)
    sys.stdin.readline()
    for connection in connections:
        connection.close()


def main(argv):
    if len(argv) == 2 and argv[0] == "serve":
        serve(int(argv[1]))
    elif len(argv) == 4 and argv[0] == "connect":
        connect(argv[1], int(argv[2]), float(argv[3]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
