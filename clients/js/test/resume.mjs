// The browser client under Node's built-in WebSocket, against `percore serve --mode chat`
// (driven by bench/tests/resume_js.rs, which serves /client.js, restarts the server and reads
// the JSON lines this prints).
//
//   node resume.mjs CLIENT_JS_PATH ws://127.0.0.1:PORT COUNT CLIENTS
//
// 1. "drops": a subscriber whose connection is dropped every 100 ms while another client
//    publishes COUNT numbered messages to the room gets every one exactly once, in order.
// 2. "restart": CLIENTS clients in one room; prints {"ready":true} and waits for the server
//    to be restarted; every client must reconnect (within the backoff schedule) and be told
//    that the history restarted (a `reset` with a new epoch). Prints each reconnect time.

import { pathToFileURL } from "node:url";

const [clientPath, base, countArg, clientsArg] = process.argv.slice(2);
const { ResumeClient, backoffCeiling, parseEnvelope, parseNotice } = await import(
  pathToFileURL(clientPath).href
);
const COUNT = Number(countArg);
const CLIENTS = Number(clientsArg);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const fail = (why) => {
  say({ error: why });
  process.exit(1);
};
const deadline = (ms, what) =>
  setTimeout(() => fail(`timed out: ${what}`), ms).unref?.();

// Unit checks of the parsers.
{
  const e = parseEnvelope("m 12 3 lobby\nhi\nthere");
  if (e.topic !== "lobby" || e.position.epoch !== "12" || e.position.seq !== 3 || e.payload !== "hi\nthere")
    fail("parseEnvelope text");
  const b = parseEnvelope(new TextEncoder().encode("m 1 2 t\n\u0000\u0001").buffer);
  if (b.payload.length !== 2 || b.payload[1] !== 1) fail("parseEnvelope binary");
  const g = parseNotice("gap 5 1 9 a b");
  if (g.kind !== "gap" || g.first !== 1 || g.last.seq !== 9 || g.last.epoch !== "5" || g.topic !== "a b")
    fail("parseNotice gap");
  if (parseNotice("ok 1 x t") !== null) fail("parseNotice malformed");
  if (backoffCeiling({ base: 100, cap: 1000 }, 3) !== 800 || backoffCeiling({ base: 100, cap: 1000 }, 9) !== 1000)
    fail("backoffCeiling");
}

const opened = (c) => new Promise((res) => c.on("subscribed", res).on("resumed", res).on("reset", res));

// 1. Drops every 100 ms while COUNT messages are published.
{
  const room = "drops";
  const url = `${base}/room/${room}`;
  const backoff = { base: 10, cap: 50 };
  const sub = new ResumeClient(url, { topics: [room], backoff });
  const pub = new ResumeClient(url, { topics: [room], backoff });
  await Promise.all([opened(sub), opened(pub)]);
  const got = [];
  let gaps = 0;
  let drops = 0;
  sub.on("gap", () => (gaps += 1));
  deadline(60000, "drops");
  const done = new Promise((res) =>
    sub.on("message", (m) => {
      got.push(Number(m.data));
      if (got.length === COUNT || Number(m.data) === COUNT - 1) res();
    })
  );
  const dropper = setInterval(() => {
    drops += 1;
    sub.drop();
  }, 100);
  // Publish at a steady pace (about 2 s in all); only while the publisher is connected.
  let n = 0;
  const pace = setInterval(() => {
    for (let k = 0; k < 10 && n < COUNT; k++) {
      if (!pub.open) return;
      pub.send(String(n));
      n += 1;
    }
    if (n >= COUNT) clearInterval(pace);
  }, Math.max(1, Math.floor(2000 / (COUNT / 10))));
  await done;
  clearInterval(dropper);
  const inOrder = got.every((x, i) => x === i);
  say({ phase: "drops", received: got.length, inOrder, gaps, drops });
  sub.close();
  pub.close();
  if (!inOrder || got.length !== COUNT || gaps !== 0) fail("drops: not exactly once in order");
}

// 2. A server restart drops every client at once.
{
  const room = "restart";
  const url = `${base}/room/${room}`;
  const backoff = { base: 200, cap: 2000 };
  const clients = [];
  const epochs = [];
  for (let i = 0; i < CLIENTS; i++) {
    const c = new ResumeClient(url, { topics: [room], backoff });
    clients.push(c);
  }
  await Promise.all(
    clients.map(
      (c, i) =>
        new Promise((res) =>
          c.on("subscribed", (e) => {
            epochs[i] = e.position.epoch;
            res();
          })
        )
    )
  );
  const lostAt = new Array(CLIENTS).fill(null);
  const backAt = new Array(CLIENTS).fill(null);
  const attempts = new Array(CLIENTS).fill(0);
  const resets = new Array(CLIENTS).fill(false);
  deadline(60000, "restart");
  const all = Promise.all(
    clients.map(
      (c, i) =>
        new Promise((res) => {
          c.on("reconnecting", (e) => {
            if (lostAt[i] === null) lostAt[i] = performance.now();
            attempts[i] = e.attempt;
          });
          c.on("connected", () => {
            if (lostAt[i] !== null && backAt[i] === null) backAt[i] = performance.now();
          });
          c.on("reset", (e) => {
            resets[i] = e.position.epoch !== epochs[i];
            res();
          });
          c.on("resumed", () => fail("resumed on a restarted server"));
        })
    )
  );
  say({ ready: true });
  await all;
  const ms = backAt.map((t, i) => Math.round(t - lostAt[i]));
  say({
    phase: "restart",
    clients: CLIENTS,
    reset: resets.filter(Boolean).length,
    reconnectMs: ms,
    attempts,
  });
  for (const c of clients) c.close();
  process.exit(resets.every(Boolean) ? 0 : 1);
}
