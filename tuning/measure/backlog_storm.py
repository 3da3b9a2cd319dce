#!/usr/bin/env python3
"""Connection storm against a slow acceptor: listen(8) vs listen(4096).

Loopback only, bounded: one server process accepts one connection every ACCEPT_EVERY_MS;
one client process starts STORM non-blocking connects at once and records, per socket,
the time until connect() completes (or fails). TcpExtListenOverflows/ListenDrops deltas
are read from /proc/net/netstat (the same counters `nstat -az TcpExtListenOverflows
TcpExtListenDrops` prints). Every socket is closed with SO_LINGER 0. Stops by itself.

    python3 tuning/measure/backlog_storm.py [STORM] [ACCEPT_EVERY_MS]   # default 2000 1
"""
import multiprocessing as mp
import select
import socket
import struct
import sys
import time

STORM = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ACCEPT_EVERY_MS = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
DEADLINE_S = 20.0
LINGER0 = struct.pack("ii", 1, 0)


def netstat(names):
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    out = {}
    for head, vals in zip(lines[0::2], lines[1::2]):
        prefix = head.split(":")[0]
        for k, v in zip(head.split()[1:], vals.split()[1:]):
            out[prefix + k] = int(v)
    return {n: out.get(n, 0) for n in names}


def server(backlog, port_q, stop):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(backlog)
    port_q.put(ls.getsockname()[1])
    ls.settimeout(0.05)
    held = []
    end = time.monotonic() + DEADLINE_S + 5
    while not stop.is_set() and time.monotonic() < end:
        try:
            c, _ = ls.accept()
            held.append(c)
            time.sleep(ACCEPT_EVERY_MS / 1000.0)
        except socket.timeout:
            pass
    for c in held:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        c.close()
    ls.close()


def storm(port):
    ep = select.epoll()
    start = {}
    socks = {}
    lat = []
    failed = 0
    for _ in range(STORM):
        s = socket.socket()
        s.setblocking(False)
        t = time.monotonic()
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        start[s.fileno()] = t
        socks[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLOUT)
    pending = set(socks)
    end = time.monotonic() + DEADLINE_S
    while pending and time.monotonic() < end:
        for fd, ev in ep.poll(0.1):
            now = time.monotonic()
            ep.unregister(fd)
            pending.discard(fd)
            err = socks[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                failed += 1
            else:
                lat.append(now - start[fd])
    unfinished = len(pending)
    for s in socks.values():
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.close()
    ep.close()
    return sorted(lat), failed, unfinished


def pct(v, p):
    return v[min(len(v) - 1, int(len(v) * p))] * 1000 if v else float("nan")


def run(backlog):
    names = ["TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPReqQFullDrop", "TcpExtSyncookiesSent"]
    port_q = mp.Queue()
    stop = mp.Event()
    srv = mp.Process(target=server, args=(backlog, port_q, stop))
    srv.start()
    port = port_q.get(timeout=5)
    before = netstat(names)
    t0 = time.monotonic()
    lat, failed, unfinished = storm(port)
    wall = time.monotonic() - t0
    after = netstat(names)
    stop.set()
    srv.join(10)
    delta = " ".join("%s=%d" % (n[6:], after[n] - before[n]) for n in names)
    print("listen(%4d): %d connects, ok %d, failed %d, unfinished %d, %.2f s" %
          (backlog, STORM, len(lat), failed, unfinished, wall))
    print("   connect latency ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f" %
          (pct(lat, 0.5), pct(lat, 0.9), pct(lat, 0.99), pct(lat, 1.0)))
    print("   over 900 ms (SYN retransmitted): %d" % sum(1 for x in lat if x > 0.9))
    print("   counters: " + delta)


def main():
    with open("/proc/sys/net/core/somaxconn") as f:
        somax = f.read().strip()
    with open("/proc/sys/net/ipv4/tcp_max_syn_backlog") as f:
        synb = f.read().strip()
    with open("/proc/sys/net/ipv4/tcp_syncookies") as f:
        cookies = f.read().strip()
    print("somaxconn %s, tcp_max_syn_backlog %s, tcp_syncookies %s; server accepts one per %.1f ms"
          % (somax, synb, cookies, ACCEPT_EVERY_MS))
    for backlog in (8, 4096):
        run(backlog)


if __name__ == "__main__":
    main()
