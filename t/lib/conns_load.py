#!/usr/bin/env python3
"""Many keepalive connections to nginx nodes, for the tests' load.

    conns_load.py --ports P1,P2,P3 --conns N --interval S --path PATH \
                  --out FILE [--timeout S]

Opens N HTTP/1.1 keepalive connections to 127.0.0.1, spread over PORTS
(connection i to PORTS[i % len]), and keeps every one of them busy until
SIGTERM: a GET of PATH, the whole answer read, then INTERVAL seconds of
rest (the first request of each connection after a random part of
INTERVAL, so that they do not all come at once).  A connection that the
server closes after a complete answer (Connection: close, keepalive_requests)
is opened again; that is no error.  An error is a connection refused,
reset, closed before a complete answer, or an answer that took longer than
TIMEOUT: it is counted, and the connection opened again.

Every half second, and at the end, FILE holds a JSON object:
    {"open": connections open now, "status": {"200": n, ...},
     "errors": n, "error_kinds": {"reset": n, ...}, "last": [[t, port,
     status], ...] (the last 20 non-2xx or errors), "ok_by_port":
     {"PORT": 2xx answers from that port, ...}, "done": true|false}
Standard library only.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import time


class Stats:
    def __init__(self):
        self.open = 0
        self.status = {}
        self.errors = 0
        self.kinds = {}
        self.last = []
        self.ok_by_port = {}

    def bad(self, port, what):
        self.last.append([round(time.time(), 3), port, what])
        del self.last[:-20]

    def error(self, port, kind):
        self.errors += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.bad(port, kind)


async def read_answer(reader):
    """The status of one answer, and whether the server closes after it."""
    line = await reader.readline()
    if not line:
        raise ConnectionError('closed')
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b'HTTP/'):
        raise ConnectionError('bad status line')
    status = int(parts[1])
    length = None
    chunked = False
    close = parts[0] == b'HTTP/1.0'
    while True:
        h = await reader.readline()
        if not h:
            raise ConnectionError('closed in headers')
        if h in (b'\r\n', b'\n'):
            break
        name, _, value = h.partition(b':')
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b'content-length':
            length = int(value)
        elif name == b'transfer-encoding' and b'chunked' in value:
            chunked = True
        elif name == b'connection':
            close = value == b'close'
    if chunked:
        while True:
            size = int((await reader.readline()).split(b';')[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, close


async def conn(port, path, interval, timeout, stats, stop):
    request = ('GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n' % path).encode()
    await asyncio.sleep(random.random() * interval)
    writer = None
    while not stop.is_set():
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection('127.0.0.1', port), timeout)
                stats.open += 1
            writer.write(request)
            status, close = await asyncio.wait_for(read_answer(reader),
                                                   timeout)
            key = str(status)
            stats.status[key] = stats.status.get(key, 0) + 1
            if not 200 <= status < 300:
                stats.bad(port, status)
            else:
                key = str(port)
                stats.ok_by_port[key] = stats.ok_by_port.get(key, 0) + 1
            if close:
                writer.close()
                writer = None
                stats.open -= 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.TimeoutError, ValueError) as e:
            kind = type(e).__name__
            if isinstance(e, ConnectionError) and e.args:
                kind = str(e.args[0])
            stats.error(port, kind)
            if writer is not None:
                writer.close()
                writer = None
                stats.open -= 1
            await asyncio.sleep(0.05)
            continue
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass
    if writer is not None:
        writer.close()
        stats.open -= 1


def dump(path, stats, done):
    with open(path + '.tmp', 'w') as f:
        json.dump({'open': stats.open, 'status': stats.status,
                   'errors': stats.errors, 'error_kinds': stats.kinds,
                   'last': stats.last, 'ok_by_port': stats.ok_by_port,
                   'done': done}, f)
    os.replace(path + '.tmp', path)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--ports', required=True)
    ap.add_argument('--conns', type=int, default=500)
    ap.add_argument('--interval', type=float, default=1.0)
    ap.add_argument('--timeout', type=float, default=30.0)
    ap.add_argument('--path', default='/services/data/v59.0/load')
    ap.add_argument('--out', required=True)
    args = ap.parse_args()

    ports = [int(p) for p in args.ports.split(',')]
    stats = Stats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    tasks = [asyncio.create_task(conn(ports[i % len(ports)], args.path,
                                      args.interval, args.timeout, stats,
                                      stop))
             for i in range(args.conns)]
    while not stop.is_set():
        dump(args.out, stats, False)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    # the answers in flight are awaited (up to TIMEOUT), not cut
    await asyncio.gather(*tasks)
    dump(args.out, stats, True)


if __name__ == '__main__':
    asyncio.run(main())
