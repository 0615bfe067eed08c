#!/usr/bin/env python3
"""A hostile Redis for the tests: a proxy in front of a real redis-server
that misbehaves on demand.

    fake_redis.py --port P --upstream PORT --control FILE

Each client connection gets its own connection to the real server at
127.0.0.1:PORT, and its commands go there, as they come (the module sends
AUTH, SELECT, PING and SUBSCRIBE when it connects, then EVAL).  The mode is
the first word of FILE, read every 50 ms (no file: "pass"):

    pass       everything goes through
    bulk       a command connection's next EVAL is answered with a bulk
               string that announces 1 GiB ("$1073741824"), then SIZE
               bytes of it (the second word of FILE, in MiB; 100), then
               nothing
    line       the same with a status line ("+xxx...") that never ends
    array      the same with an array that announces 100,000,000 elements,
               then ":1" elements
    trickle    the real server's answers on command connections go out one
               byte every 0.5 s
    bulk-sub   a SUBSCRIBE is confirmed by this proxy, then a message on
               the channel that announces 1 GiB, SIZE bytes of it, nothing
    mute-sub   a SUBSCRIBE is confirmed by this proxy, then nothing more
               is ever answered on that connection (PING included)

When the mode becomes bulk-sub or mute-sub, the subscriber connections are
closed, so that the module subscribes again.  A connection taken over by a
mode stays so; what the client sends on it is read and dropped.

Each event is a line on stdout: "accept N", "subscribe N", "hijack N MODE",
"closed N", "mode MODE".
"""

import argparse
import asyncio
import sys

MiB = 1024 * 1024


class Conn:
    count = 0

    def __init__(self, reader, writer):
        Conn.count += 1
        self.n = Conn.count
        self.reader = reader
        self.writer = writer
        self.up_reader = None
        self.up_writer = None
        self.subscriber = False
        self.hijacked = False
        self.tasks = []


def log(*words):
    print(*words, flush=True)


class Proxy:
    def __init__(self, args):
        self.args = args
        self.mode = 'pass'
        self.size = 100
        self.conns = set()

    # -- the mode ---------------------------------------------------------

    def read_mode(self):
        try:
            with open(self.args.control) as f:
                words = f.read().split()
        except OSError:
            words = []
        mode = words[0] if words else 'pass'
        size = int(words[1]) if len(words) > 1 else 100
        return mode, size

    async def watch_mode(self):
        while True:
            mode, size = self.read_mode()
            if (mode, size) != (self.mode, self.size):
                self.mode, self.size = mode, size
                log('mode', mode)
                if mode in ('bulk-sub', 'mute-sub'):
                    for c in list(self.conns):
                        if c.subscriber and not c.hijacked:
                            self.close(c)
            await asyncio.sleep(0.05)

    # -- connections ------------------------------------------------------

    def close(self, c):
        if c not in self.conns:
            return
        self.conns.discard(c)
        log('closed', c.n)
        for w in (c.writer, c.up_writer):
            if w is not None:
                try:
                    w.close()
                except Exception:
                    pass
        for t in c.tasks:
            if t is not asyncio.current_task():
                t.cancel()

    async def client(self, reader, writer):
        c = Conn(reader, writer)
        self.conns.add(c)
        log('accept', c.n)
        try:
            c.up_reader, c.up_writer = await asyncio.open_connection(
                '127.0.0.1', self.args.upstream)
        except OSError:
            self.close(c)
            return
        c.tasks = [asyncio.current_task(),
                   asyncio.ensure_future(self.downstream(c))]
        try:
            await self.upstream(c)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self.close(c)

    # client -> server: whole commands (RESP arrays of bulk strings)
    async def upstream(self, c):
        buf = b''
        while True:
            data = await c.reader.read(65536)
            if not data:
                return
            if c.hijacked:
                continue
            buf += data
            while True:
                cmd, used = parse_command(buf)
                if cmd is None:
                    break
                raw, buf = buf[:used], buf[used:]
                if not await self.command(c, cmd, raw):
                    buf = b''
                    break

    # one command: forwarded, or answered here (False: taken over)
    async def command(self, c, cmd, raw):
        name = cmd[0].upper() if cmd else b''
        mode = self.mode

        if name == b'SUBSCRIBE':
            c.subscriber = True
            log('subscribe', c.n)
            if mode in ('bulk-sub', 'mute-sub'):
                await self.hijack(c, mode, cmd[1] if len(cmd) > 1 else b'')
                return False

        elif name == b'EVAL' and mode in ('bulk', 'line', 'array') \
                and not c.subscriber:
            await self.hijack(c, mode, b'')
            return False

        c.up_writer.write(raw)
        await c.up_writer.drain()
        return True

    async def hijack(self, c, mode, channel):
        c.hijacked = True
        log('hijack', c.n, mode)
        w = c.writer
        size = self.size * MiB

        if mode in ('bulk-sub', 'mute-sub'):
            w.write(b'*3\r\n$9\r\nsubscribe\r\n'
                    + b'$%d\r\n%s\r\n:1\r\n' % (len(channel), channel))
            if mode == 'mute-sub':
                await w.drain()
                return
            w.write(b'*3\r\n$7\r\nmessage\r\n'
                    + b'$%d\r\n%s\r\n' % (len(channel), channel)
                    + b'$1073741824\r\n')
            unit = b'x' * 65536
        elif mode == 'bulk':
            w.write(b'$1073741824\r\n')
            unit = b'x' * 65536
        elif mode == 'line':
            w.write(b'+')
            unit = b'x' * 65536
        else:
            w.write(b'*100000000\r\n')
            unit = b':1\r\n' * 16384

        c.tasks.append(asyncio.ensure_future(self.stream(c, unit, size)))

    async def stream(self, c, unit, size):
        sent = 0
        try:
            while sent < size:
                c.writer.write(unit)
                sent += len(unit)
                await c.writer.drain()
            log('streamed', c.n, sent)
        except (ConnectionError, OSError):
            log('stream-cut', c.n, sent)
            self.close(c)
        except asyncio.CancelledError:
            pass

    # server -> client
    async def downstream(self, c):
        try:
            while True:
                data = await c.up_reader.read(65536)
                if not data:
                    break
                if c.hijacked:
                    continue
                if self.mode == 'trickle' and not c.subscriber:
                    for i in range(len(data)):
                        c.writer.write(data[i:i + 1])
                        await c.writer.drain()
                        await asyncio.sleep(0.5)
                        if c.hijacked:
                            break
                else:
                    c.writer.write(data)
                    await c.writer.drain()
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self.close(c)


def parse_command(buf):
    """(list of arguments, bytes used) of the first whole command in buf,
    or (None, 0)."""
    if not buf.startswith(b'*'):
        # an inline command: up to the line's end
        end = buf.find(b'\r\n')
        if end < 0:
            return None, 0
        return buf[:end].split(), end + 2
    end = buf.find(b'\r\n')
    if end < 0:
        return None, 0
    n = int(buf[1:end])
    pos = end + 2
    args = []
    for _ in range(n):
        end = buf.find(b'\r\n', pos)
        if end < 0:
            return None, 0
        size = int(buf[pos + 1:end])
        start = end + 2
        if len(buf) < start + size + 2:
            return None, 0
        args.append(buf[start:start + size])
        pos = start + size + 2
    return args, pos


async def main():
    p = argparse.ArgumentParser()
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--upstream', type=int, required=True)
    p.add_argument('--control', required=True)
    args = p.parse_args()

    proxy = Proxy(args)
    proxy.mode, proxy.size = proxy.read_mode()
    server = await asyncio.start_server(proxy.client, '127.0.0.1', args.port)
    log('listening', args.port)
    asyncio.ensure_future(proxy.watch_mode())
    async with server:
        await server.serve_forever()


if __name__ == '__main__':
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
