#!/usr/bin/env python3
"""Kernel memory per idle loopback TCP connection pair.

Loopback only, bounded: a server process accepts PAIRS connections from a client process
(each process holds at most PAIRS fds, under a 20000 RLIMIT_NOFILE). With both ends open and
idle (one 16-byte message exchanged and read on each, so the sockets have seen traffic),
reads /proc/meminfo (Slab, SUnreclaim), /proc/net/sockstat (TCP inuse/mem in pages) and
/proc/slabinfo (root only) and prints the deltas per pair. Slab is machine-wide: other
processes add noise, so the run is repeated ROUNDS times. Stops by itself.

    python3 tuning/measure/idle_memory.py [PAIRS] [ROUNDS]   # default 10000 3
"""
import multiprocessing as mp
import socket
import struct
import sys
import time

PAIRS = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
LINGER0 = struct.pack("ii", 1, 0)
CACHES = ["TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "kmalloc-", "skbuff_head_cache",
          "selinux", "request_sock_TCP", "tw_sock_TCP", "inet_peer", "anon_vma", "pid"]


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v.split()[0])
    return out


def sockstat():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                p = line.split()
                return {p[i]: int(p[i + 1]) for i in range(1, len(p) - 1, 2)}
    return {}


def slabinfo():
    out = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f.readlines()[2:]:
                p = line.split()
                out[p[0]] = int(p[1]) * int(p[3])
    except OSError:
        pass
    return out


def snapshot():
    return meminfo(), sockstat(), slabinfo()


def server(port_q, ready, stop):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    port_q.put(ls.getsockname()[1])
    held = []
    ls.settimeout(10)
    try:
        while len(held) < PAIRS:
            c, _ = ls.accept()
            c.recv(16)
            c.sendall(b"x" * 16)
            held.append(c)
    except OSError:
        pass
    ready.set()
    stop.wait(60)
    for c in held:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        c.close()
    ls.close()


def client(port, ready, stop):
    socks = []
    for _ in range(PAIRS):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        s.sendall(b"y" * 16)
        s.recv(16)
        socks.append(s)
    ready.set()
    stop.wait(60)
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.close()


def one_round():
    port_q = mp.Queue()
    sready, cready, stop = mp.Event(), mp.Event(), mp.Event()
    time.sleep(0.5)
    m0, k0, s0 = snapshot()
    srv = mp.Process(target=server, args=(port_q, sready, stop))
    srv.start()
    port = port_q.get(timeout=5)
    cli = mp.Process(target=client, args=(port, cready, stop))
    cli.start()
    sready.wait(30)
    cready.wait(30)
    time.sleep(0.5)
    m1, k1, s1 = snapshot()
    stop.set()
    cli.join(10)
    srv.join(10)
    return (m0, k0, s0), (m1, k1, s1)


def main():
    print("%d idle loopback pairs (2 sockets each), %d rounds" % (PAIRS, ROUNDS))
    for r in range(ROUNDS):
        (m0, k0, s0), (m1, k1, s1) = one_round()
        slab = (m1["Slab"] - m0["Slab"]) * 1024 / PAIRS
        unrec = (m1["SUnreclaim"] - m0["SUnreclaim"]) * 1024 / PAIRS
        used = ((m0["MemAvailable"] - m1["MemAvailable"]) * 1024) / PAIRS
        print("round %d: Slab +%.0f B/pair (SUnreclaim +%.0f), MemAvailable -%.0f B/pair, "
              "sockstat TCP inuse +%d mem +%d pages"
              % (r + 1, slab, unrec, used, k1.get("inuse", 0) - k0.get("inuse", 0),
                 k1.get("mem", 0) - k0.get("mem", 0)))
        if s1:
            deltas = sorted(((s1.get(k, 0) - s0.get(k, 0), k) for k in set(s0) | set(s1)), reverse=True)
            top = [(d, k) for d, k in deltas if d > PAIRS * 16][:10]
            print("   slabinfo per pair: " + ", ".join("%s %.0f B" % (k, d / PAIRS) for d, k in top)
                  + "; sum of these %.0f B" % (sum(d for d, _ in top) / PAIRS))
        time.sleep(1)


if __name__ == "__main__":
    main()
