#!/usr/bin/env python3
"""A tiny DNS server for the tests: UDP on 127.0.0.1:PORT, A records only.

    dns_test.py PORT ZONEFILE COUNTFILE

ZONEFILE holds "name ip" lines and is read again for every query, so that a
test moves a name by rewriting it; "name drop" leaves the queries for name
unanswered (a resolver that hangs).  The answer's TTL is 1 s.  A name not in
the file gets NXDOMAIN; a query for another type than A (nginx asks AAAA
too only with ipv6=on) gets an answer with no records.  After each query,
COUNTFILE holds "name count" lines: how many queries came for each name.
"""

import os
import socket
import struct
import sys

TTL = 1


def read_zone(path):
    zone = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    zone[parts[0].lower().rstrip('.')] = parts[1]
    except OSError:
        pass
    return zone


def parse_question(data):
    pos = 12
    labels = []
    while pos < len(data):
        n = data[pos]
        pos += 1
        if n == 0:
            break
        labels.append(data[pos:pos + n].decode('ascii', 'replace'))
        pos += n
    qtype, qclass = struct.unpack('!HH', data[pos:pos + 4])
    return '.'.join(labels).lower(), qtype, qclass, data[12:pos + 4]


def main():
    port, zone_path, count_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    counts = {}

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(('127.0.0.1', port))

    while True:
        data, peer = sock.recvfrom(4096)
        if len(data) < 17:
            continue
        try:
            name, qtype, qclass, question = parse_question(data)
        except (struct.error, IndexError):
            continue

        counts[name] = counts.get(name, 0) + 1
        with open(count_path + '.tmp', 'w') as f:
            for k, v in counts.items():
                f.write('%s %d\n' % (k, v))
        os.replace(count_path + '.tmp', count_path)

        ident = data[:2]
        zone = read_zone(zone_path)
        ip = zone.get(name)

        if ip == 'drop':
            continue

        if ip is None:
            flags, ancount, answer = 0x8183, 0, b''     # NXDOMAIN
        elif qtype != 1:
            flags, ancount, answer = 0x8180, 0, b''
        else:
            flags, ancount = 0x8180, 1
            answer = (b'\xc0\x0c' + struct.pack('!HHIH', 1, 1, TTL, 4)
                      + socket.inet_aton(ip))

        header = ident + struct.pack('!HHHHH', flags, 1, ancount, 0, 0)
        sock.sendto(header + question + answer, peer)


if __name__ == '__main__':
    main()
