"""permessage-deflate interop with the Python `websockets` client (sync API).

usage: websockets_deflate.py ws://127.0.0.1:PORT/ shared|dedicated
`websockets` offers permessage-deflate by default (`client_max_window_bits`): the server must
accept it with the terms of its mode, then echo text and binary messages of 0 B..1 MiB, whole
and fragmented, compressed both ways. In dedicated mode the server drops its own history (what
its next messages may reference) after a short idle time (the test server runs with 200 ms): the
echo after a pause references nothing earlier, which the client's decompressor (with context
takeover) must still read.
Exit 0 when all pass.
"""
import sys
import time

from websockets.sync.client import connect

URL, MODE = sys.argv[1], sys.argv[2]
TIMEOUT = 20


def check(cond, what):
    if not cond:
        print("FAIL:", what, flush=True)
        sys.exit(1)
    print("ok:", what, flush=True)


def json_like(n, seed):
    out, i = [], seed
    size = 0
    while size < n:
        s = '{"id":%d,"user":"user-%d","price":%d.%02d,"tags":["a","b%d"]},' % (
            i, i % 97, i * 7 % 1000, i % 100, i % 13)
        out.append(s)
        size += len(s)
        i += 1
    return "".join(out)[:n]


def main():
    with connect(URL, proxy=None, max_size=32 << 20, open_timeout=TIMEOUT,
                 close_timeout=TIMEOUT, ping_interval=None) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        check(ext.startswith("permessage-deflate"), "deflate negotiated: %r" % ext)
        if MODE == "shared":
            check("server_no_context_takeover" in ext and "client_no_context_takeover" in ext,
                  "shared terms")
        else:
            check("no_context_takeover" not in ext and "client_max_window_bits=12" in ext,
                  "dedicated terms")
        for rnd in range(2):
            for size in [0, 1, 100, 1000, 4096, 70000, 1 << 20]:
                text = json_like(size, size + rnd)
                ws.send(text)
                check(ws.recv(timeout=TIMEOUT) == text, "text echo of %d bytes" % size)
                data = bytes((i * 7) % 13 for i in range(size))
                ws.send(data)
                check(ws.recv(timeout=TIMEOUT) == data, "binary echo of %d bytes" % size)
            parts = [json_like(3000, 1), json_like(10, 2), json_like(5000, 3)]
            ws.send(parts)
            check(ws.recv(timeout=TIMEOUT) == "".join(parts), "fragmented text echo")
            bparts = [b"\x00" * 1000, b"", bytes(range(256)) * 40]
            ws.send(bparts)
            check(ws.recv(timeout=TIMEOUT) == b"".join(bparts), "fragmented binary echo")
            if MODE == "dedicated" and rnd == 0:
                time.sleep(1.0)  # the server's history is dropped meanwhile
        ws.close(code=1000, reason="bye")
        check(ws.close_code == 1000, "close 1000")
    print("all checks passed", flush=True)


main()
