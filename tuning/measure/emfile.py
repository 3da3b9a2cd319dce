#!/usr/bin/env python3
"""What a process sees at RLIMIT_NOFILE: socket() fails with EMFILE.

Loopback only, bounded: opens unconnected TCP sockets until socket() fails (at most the
soft limit + 10), prints the count and the error, closes them all.

    python3 tuning/measure/emfile.py
"""
import resource
import socket

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
socks = []
err = None
for _ in range(soft + 10):
    try:
        socks.append(socket.socket())
    except OSError as e:
        err = e
        break
print("RLIMIT_NOFILE soft %d hard %d: opened %d sockets, then %s" % (soft, hard, len(socks), err))
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard + 1, hard + 1))
    print("raising the hard limit to %d: allowed" % (hard + 1))
except (ValueError, OSError) as e:
    print("raising the hard limit to %d: %s" % (hard + 1, e))
for s in socks:
    s.close()
