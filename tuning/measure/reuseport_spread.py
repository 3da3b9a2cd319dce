#!/usr/bin/env python3
"""How SO_REUSEPORT spreads connections over listeners (one listener per shard).

Loopback only, bounded: SHARDS listeners on one 127.0.0.1 port in one server process,
a client process opens CONNS connections (kernel-picked source ports), the server counts
how many each listener accepted. Every socket is closed with SO_LINGER 0. Stops by itself.

    python3 tuning/measure/reuseport_spread.py [SHARDS] [CONNS]   # default 4 8000
"""
import multiprocessing as mp
import select
import socket
import struct
import sys
import time

SHARDS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
CONNS = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
LINGER0 = struct.pack("ii", 1, 0)


def server(port_q, res_q):
    listeners = []
    port = 0
    for _ in range(SHARDS):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        ls.bind(("127.0.0.1", port))
        port = ls.getsockname()[1]
        ls.listen(4096)
        ls.setblocking(False)
        listeners.append(ls)
    port_q.put(port)
    counts = [0] * SHARDS
    held = []
    end = time.monotonic() + 30
    while sum(counts) < CONNS and time.monotonic() < end:
        ready, _, _ = select.select(listeners, [], [], 0.2)
        for ls in ready:
            i = listeners.index(ls)
            while True:
                try:
                    c, _ = ls.accept()
                except BlockingIOError:
                    break
                counts[i] += 1
                held.append(c)
    res_q.put(counts)
    for c in held:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        c.close()


def main():
    port_q, res_q = mp.Queue(), mp.Queue()
    srv = mp.Process(target=server, args=(port_q, res_q))
    srv.start()
    port = port_q.get(timeout=5)
    socks = []
    for _ in range(CONNS):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        socks.append(s)
    counts = res_q.get(timeout=40)
    srv.join(10)
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.close()
    mean = sum(counts) / len(counts)
    print("%d listeners with SO_REUSEPORT, %d connections: per listener %s; max/mean %.3f, min/mean %.3f"
          % (SHARDS, sum(counts), counts, max(counts) / mean, min(counts) / mean))


if __name__ == "__main__":
    main()
