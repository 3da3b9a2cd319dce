#!/usr/bin/env python3
"""Connect rate with kernel-picked source ports vs explicit (127.0.0.x, port) binds.

Loopback only, bounded: 2 client processes x PER_CLIENT connections to one listener
(127.0.0.1, ephemeral port) served by 2 SO_REUSEPORT accept processes. Every socket is
closed with SO_LINGER 0 (RST), so no TIME_WAIT is left behind. Stops by itself (< 60 s).

    python3 tuning/measure/source_ports.py [PER_CLIENT]   # default 14000
"""
import multiprocessing as mp
import socket
import struct
import sys
import time

PER_CLIENT = int(sys.argv[1]) if len(sys.argv) > 1 else 14000
CLIENTS = 2
DEADLINE_S = 25.0
LINGER0 = struct.pack("ii", 1, 0)


def server(port_q, go, stop, expected):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    port = port_q.get()
    if port == 0:
        ls.bind(("127.0.0.1", 0))
        port_q.put(ls.getsockname()[1])
        port_q.put(ls.getsockname()[1])
    else:
        ls.bind(("127.0.0.1", port))
    ls.listen(4096)
    ls.settimeout(0.2)
    go.set()
    held = []
    end = time.monotonic() + DEADLINE_S * 2
    while not stop.is_set() and time.monotonic() < end:
        try:
            c, _ = ls.accept()
            held.append(c)
        except (socket.timeout, BlockingIOError):
            pass
        except OSError:
            break
    for c in held:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        c.close()
    ls.close()


def client(idx, port, explicit, res_q, release):
    socks = []
    marks = []
    err = None
    t0 = time.monotonic()
    src_ip = "127.0.0.%d" % (2 + idx)
    for i in range(PER_CLIENT):
        s = socket.socket()
        try:
            if explicit:
                s.bind((src_ip, 10000 + i))
            s.connect(("127.0.0.1", port))
        except OSError as e:
            err = "%s after %d" % (e.strerror, i)
            s.close()
            break
        socks.append(s)
        if (i + 1) % 2000 == 0:
            marks.append(time.monotonic() - t0)
        if time.monotonic() - t0 > DEADLINE_S:
            err = "deadline after %d" % (i + 1)
            break
    total = time.monotonic() - t0
    res_q.put((idx, len(socks), total, marks, err))
    release.wait(DEADLINE_S)
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.close()


def run(explicit):
    port_q = mp.Queue()
    stop = mp.Event()
    gos = [mp.Event() for _ in range(2)]
    port_q.put(0)
    servers = [mp.Process(target=server, args=(port_q, gos[0], stop, 0))]
    servers[0].start()
    gos[0].wait(5)
    port = port_q.get()
    port_q.get()
    port_q.put(port)
    servers.append(mp.Process(target=server, args=(port_q, gos[1], stop, 0)))
    servers[1].start()
    gos[1].wait(5)
    res_q = mp.Queue()
    release = mp.Event()
    clients = [mp.Process(target=client, args=(i, port, explicit, res_q, release)) for i in range(CLIENTS)]
    t0 = time.monotonic()
    for c in clients:
        c.start()
    results = [res_q.get(timeout=DEADLINE_S + 10) for _ in clients]
    wall = time.monotonic() - t0
    release.set()
    for c in clients:
        c.join(10)
    stop.set()
    for s in servers:
        s.join(10)
    return wall, sorted(results)


def main():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        rng = f.read().split()
    print("ip_local_port_range %s-%s (%d ports), %d clients x %d connections to one 127.0.0.1 listener"
          % (rng[0], rng[1], int(rng[1]) - int(rng[0]) + 1, CLIENTS, PER_CLIENT))
    for explicit in (False, True):
        wall, results = run(explicit)
        n = sum(r[1] for r in results)
        label = "explicit bind(127.0.0.x, port)" if explicit else "kernel-picked source port"
        print("%-32s %6d connections in %6.2f s = %8.0f conn/s" % (label, n, wall, n / wall))
        for idx, cnt, total, marks, err in results:
            steps = " ".join("%.2f" % m for m in marks)
            print("   client %d: %d in %.2f s; elapsed at every 2000: %s%s"
                  % (idx, cnt, total, steps, ("; stopped: " + err) if err else ""))


if __name__ == "__main__":
    main()
