"""Interop check with the Python `websockets` client (sync API).

usage: websockets_client.py ws://127.0.0.1:PORT/
       websockets_client.py wss://localhost:PORT/ CA.pem
Echo of text/binary (incl. 1 MiB and multi-byte UTF-8), ping/pong, a fragmented send,
subprotocol negotiation, and a clean close handshake. Over wss:// the server is verified
against CA.pem, TLS 1.3 is negotiated, a client without the CA is refused and a TLS 1.2-only
client gets a protocol_version alert. Exit 0 when all pass.
"""
import ssl
import sys

from websockets.sync.client import connect

URL = sys.argv[1]
TIMEOUT = 20
SSL = None
if URL.startswith("wss://"):
    SSL = ssl.create_default_context(cafile=sys.argv[2])


def check(cond, what):
    if not cond:
        print("FAIL:", what, flush=True)
        sys.exit(1)
    print("ok:", what, flush=True)


def tls_checks():
    with connect(URL, proxy=None, ssl=SSL, open_timeout=TIMEOUT, ping_interval=None) as ws:
        tls = ws.socket
        check(tls.version() == "TLSv1.3", "TLS 1.3 negotiated (got %r)" % tls.version())
        check(tls.selected_alpn_protocol() in (None, "http/1.1"), "ALPN http/1.1 or none")
        ws.send("over tls")
        check(ws.recv(timeout=TIMEOUT) == "over tls", "echo over TLS")
    # A client that does not trust the test CA refuses the server.
    try:
        with connect(URL, proxy=None, ssl=ssl.create_default_context(), open_timeout=TIMEOUT):
            check(False, "an untrusted server was accepted")
    except ssl.SSLCertVerificationError as e:
        check("unable to get local issuer certificate" in str(e), "unknown CA refused: %s" % e)
    # TLS 1.2 at most: the server speaks TLS 1.3 only and says so with an alert.
    old = ssl.create_default_context(cafile=sys.argv[2])
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with connect(URL, proxy=None, ssl=old, open_timeout=TIMEOUT):
            check(False, "a TLS 1.2-only client was served")
    except ssl.SSLError as e:
        check("PROTOCOL_VERSION" in str(e).upper(), "TLS 1.2 refused with protocol_version: %s" % e)


def main():
    if SSL is not None:
        tls_checks()
    # permessage-deflate is offered (the default) and must be declined cleanly.
    with connect(URL, proxy=None, ssl=SSL, max_size=32 << 20, open_timeout=TIMEOUT,
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

    with connect(URL, proxy=None, ssl=SSL, subprotocols=["chat.v1", "chat.v2"],
                 open_timeout=TIMEOUT, ping_interval=None) as ws:
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
