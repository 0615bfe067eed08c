#!/usr/bin/env python3
"""h2_reset.py PORT PATH_RESET PATH_KEEP RESET_AFTER TIMEOUT

One HTTP/2 connection (prior knowledge): stream 1 GET PATH_RESET, stream 3
GET PATH_KEEP; after RESET_AFTER seconds RST_STREAM(CANCEL) on stream 1;
prints the :status of stream 3 (0: none within TIMEOUT) and whether the
connection got a GOAWAY."""
import socket, struct, sys, time

port, p1, p3, after, tmo = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])

def frame(t, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload

def lit(idx, val):
    v = val.encode()
    return bytes([idx]) + bytes([len(v)]) + v if len(v) < 127 else None

def headers(path):
    return b"\x82\x86" + lit(0x04, path) + lit(0x01, "localhost")

s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
s.sendall(frame(1, 0x5, 1, headers(p1)))
s.sendall(frame(1, 0x5, 3, headers(p3)))
t0 = time.time()
reset = False
buf = b""
status3 = 0
goaway = False
s.settimeout(0.1)
while time.time() - t0 < tmo:
    if not reset and time.time() - t0 >= after:
        s.sendall(frame(3, 0, 1, struct.pack(">I", 8)))
        reset = True
    try:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    except socket.timeout:
        pass
    while len(buf) >= 9:
        ln = int.from_bytes(buf[0:3], "big")
        if len(buf) < 9 + ln:
            break
        t, fl, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff
        pl = buf[9:9 + ln]
        buf = buf[9 + ln:]
        if t == 4 and not fl & 1:
            s.sendall(frame(4, 1, 0))
        if t == 7:
            goaway = True
        if t == 1 and sid == 3:
            b0 = pl[0] if pl else 0
            if fl & 0x20:
                b0 = pl[5]
                pl = pl[5:]
            if b0 == 0x88: status3 = 200
            elif b0 & 0x0f == 8 or b0 & 0x3f == 8:
                status3 = int(pl[2:2 + pl[1]].decode())
            else: status3 = -b0
    if status3:
        break
print("status3=%d goaway=%d" % (status3, goaway))
