// permessage-deflate interop with the Node `ws` client.
//
// usage: node ws_deflate.mjs ws://127.0.0.1:PORT/ shared|dedicated
// `ws` offers permessage-deflate by default (`client_max_window_bits`); here with threshold 0
// so that every message is compressed. The server must accept with the terms of its mode and
// echo text and binary messages of 0 B..1 MiB, whole and fragmented. In dedicated mode the
// server drops its own history after a short idle time (200 ms in the test server): the echo
// after a pause references nothing earlier, which the client (with context takeover) reads.
// Exit 0 when all pass. `ws` is found through NODE_PATH (scripts/test.sh installs it).
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const WebSocket = require("ws");
const [url, mode] = process.argv.slice(2);
const TIMEOUT_MS = 20000;

function check(cond, what) {
  if (!cond) {
    console.log("FAIL:", what);
    process.exit(1);
  }
  console.log("ok:", what);
}

function jsonLike(n, seed) {
  let s = "";
  for (let i = seed; s.length < n; i++) {
    s += `{"id":${i},"user":"user-${i % 97}","price":${(i * 7) % 1000}.${String(i % 100).padStart(2, "0")},"tags":["a","b${i % 13}"]},`;
  }
  return s.slice(0, n);
}

const ws = new WebSocket(url, {
  perMessageDeflate: { threshold: 0, clientMaxWindowBits: true },
  maxPayload: 32 << 20,
});
const inbox = [];
let waiter = null;
ws.on("message", (data, isBinary) => {
  inbox.push({ data, isBinary });
  if (waiter) {
    const w = waiter;
    waiter = null;
    w();
  }
});
function next() {
  return new Promise((resolve, reject) => {
    const take = () => resolve(inbox.shift());
    if (inbox.length) return take();
    const t = setTimeout(() => reject(new Error("no echo within 20 s")), TIMEOUT_MS);
    waiter = () => {
      clearTimeout(t);
      take();
    };
  });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

ws.on("error", (e) => check(false, "socket error " + e.message));
ws.on("upgrade", (res) => {
  const ext = res.headers["sec-websocket-extensions"] || "";
  check(ext.startsWith("permessage-deflate"), "deflate negotiated: " + ext);
  if (mode === "shared") {
    check(ext.includes("server_no_context_takeover") && ext.includes("client_no_context_takeover"), "shared terms");
  } else {
    check(!ext.includes("no_context_takeover") && ext.includes("client_max_window_bits=12"), "dedicated terms");
  }
});
ws.on("open", async () => {
  try {
    for (let round = 0; round < 2; round++) {
      for (const size of [0, 1, 100, 1000, 4096, 70000, 1 << 20]) {
        const text = jsonLike(size, size + round);
        ws.send(text);
        let m = await next();
        check(!m.isBinary && m.data.toString() === text, `text echo of ${size} bytes`);
        const bin = Buffer.alloc(size);
        for (let i = 0; i < size; i++) bin[i] = (i * 7) % 13;
        ws.send(bin);
        m = await next();
        check(m.isBinary && Buffer.compare(m.data, bin) === 0, `binary echo of ${size} bytes`);
      }
      // Fragmented: ws sends a message in pieces with fin: false.
      const parts = [jsonLike(3000, 1), jsonLike(10, 2), jsonLike(5000, 3)];
      parts.forEach((p, i) => ws.send(p, { fin: i === parts.length - 1, compress: true }));
      const m = await next();
      check(m.data.toString() === parts.join(""), "fragmented text echo");
      if (mode === "dedicated" && round === 0) await sleep(1000);
    }
    ws.close(1000, "bye");
  } catch (e) {
    check(false, e.message);
  }
});
ws.on("close", (code) => {
  check(code === 1000, "close 1000 (got " + code + ")");
  console.log("all checks passed");
  process.exit(0);
});
