"""Interop check with the Python `websockets` client (sync API).

usage: websockets_client.py ws://127.0.0.1:PORT/
Echo of text/binary (incl. 1 MiB and multi-byte UTF-8), ping/pong, a fragmented send,
subprotocol negotiation, and a clean close handshake. Exit 0 when all pass.
"""
import sys

from websockets.sync.client import connect

URL = sys.argv[1]
TIMEOUT = 20


def check(cond, what):
    if not cond:
        print("FAIL:", what, flush=True)
        sys.exit(1)
    print("ok:", what, flush=True)


def main():
    # permessage-deflate is offered (the default) and must be declined cleanly.
    with connect(URL, proxy=None, max_size=32 << 20, open_timeout=TIMEOUT,
                 close_timeout=TIMEOUT, ping_interval=None) as ws:
        check(ws.response.status_code == 101, "handshake 101")
        check("Sec-WebSocket-Extensions" not in ws.response.headers, "no extension negotiated")
        for text in ["", "hello", "héllo wörld €𝄞 中文 😀", "x" * 70000]:
            ws.send(text)
            got = ws.recv(timeout=TIMEOUT)
            check(got == text, "text echo of %d chars" % len(text))
        for size in [0, 1, 125, 126, 65535, 65536, 1 << 20]:
            data = bytes(i % 251 for i in range(size))
            ws.send(data)
            got = ws.recv(timeout=TIMEOUT)
            check(got == data, "binary echo of %d bytes" % size)
        pong = ws.ping(b"py-ping")
        check(pong.wait(TIMEOUT), "pong for ping")
        ws.send(["frag", "mented ", "text €"])
        check(ws.recv(timeout=TIMEOUT) == "fragmented text €", "fragmented text echo")
        ws.send([b"\x00\x01", b"", b"\x02" * 1000])
        check(ws.recv(timeout=TIMEOUT) == b"\x00\x01" + b"\x02" * 1000, "fragmented binary echo")
        ws.close(code=1000, reason="bye")
        check(ws.close_code == 1000, "close handshake echoed 1000 (got %r)" % ws.close_code)

    with connect(URL, proxy=None, subprotocols=["chat.v1", "chat.v2"], open_timeout=TIMEOUT,
                 ping_interval=None) as ws:
        check(ws.subprotocol == "chat.v2", "subprotocol chat.v2 selected (got %r)" % ws.subprotocol)
        ws.send("cmd:close:4000:server says bye")
        try:
            ws.recv(timeout=TIMEOUT)
            check(False, "expected a server close")
        except Exception as e:  # ConnectionClosedOK
            check(ws.close_code == 4000, "server-initiated close 4000 (got %r: %r)" % (ws.close_code, e))
            check(ws.close_reason == "server says bye", "close reason")

    print("all checks passed", flush=True)


main()
