// percore resume client for browsers and Node (its built-in WebSocket): the percore.resume.v1
// subprotocol (docs/resume-protocol-v1.md). It reconnects with exponential backoff and full
// jitter, resumes every subscription from the last position seen (no gap, no duplicate while
// the server's history reaches back; a `gap` or `reset` event when it does not), detects a dead
// path with heartbeats, and emits events an application can show.
//
//   import { ResumeClient } from "/client.js";
//   const c = new ResumeClient("wss://example.com/room/lobby", { topics: ["lobby"] });
//   c.on("message", (m) => render(m.topic, m.position, m.data));
//   c.on("reconnecting", (e) => status(`reconnecting in ${e.delay} ms`));
//   c.on("gap", (e) => resync(e.topic));   c.on("reset", (e) => resync(e.topic));
//   c.send("hello");   // an application message (`msg hello`)
//
// Positions are { epoch: string, seq: number }: the epoch is kept as the server's decimal
// text, compared for equality only.

export const PROTOCOL = "percore.resume.v1";

const DEFAULTS = {
  topics: [],
  // Reconnect schedule: attempt n waits uniform [0, min(cap, base * 2^n)] ms.
  backoff: { base: 500, cap: 30000, attemptsMax: Infinity },
  // Ping after `interval` ms of silence; dead if nothing arrives `timeout` ms after it.
  heartbeat: { interval: 15000, timeout: 10000 },
  // Give up an attempt that has not opened after this many ms.
  connectTimeout: 10000,
  random: Math.random,
  WebSocket: globalThis.WebSocket,
};

// The longest wait before retry `attempt` (0 = the first retry).
export function backoffCeiling(backoff, attempt) {
  return Math.min(backoff.cap, backoff.base * 2 ** Math.min(attempt, 52));
}

const decoder = new TextDecoder();

// `m EPOCH SEQ TOPIC\n` + payload -> { topic, position, payload } (payload: string or
// Uint8Array as it came), or null if it is not a topic message.
export function parseEnvelope(data) {
  let head;
  let payload;
  if (typeof data === "string") {
    if (!data.startsWith("m ")) return null;
    const nl = data.indexOf("\n");
    if (nl < 0) return null;
    head = data.slice(2, nl);
    payload = data.slice(nl + 1);
  } else {
    const bytes = new Uint8Array(data);
    if (bytes.length < 2 || bytes[0] !== 0x6d || bytes[1] !== 0x20) return null;
    const nl = bytes.indexOf(0x0a);
    if (nl < 0) return null;
    head = decoder.decode(bytes.subarray(2, nl));
    payload = bytes.slice(nl + 1);
  }
  const [epoch, seq, ...rest] = head.split(" ");
  const topic = rest.join(" ");
  if (!/^\d+$/.test(epoch) || !/^\d+$/.test(seq) || !topic) return null;
  return { topic, position: { epoch, seq: Number(seq) }, payload };
}

// A server notice (`ok`, `gap`, `reset`, `pong`, `err`), or null.
export function parseNotice(text) {
  const sp = text.indexOf(" ");
  const word = sp < 0 ? text : text.slice(0, sp);
  const rest = sp < 0 ? "" : text.slice(sp + 1);
  const fields = (n) => {
    const parts = rest.split(" ");
    if (parts.length <= n) return null;
    const nums = parts.slice(0, n);
    if (!nums.every((x) => /^\d+$/.test(x))) return null;
    return { nums, topic: parts.slice(n).join(" ") };
  };
  switch (word) {
    case "ok":
    case "reset": {
      const f = fields(2);
      return f && { kind: word, topic: f.topic, position: { epoch: f.nums[0], seq: Number(f.nums[1]) } };
    }
    case "gap": {
      const f = fields(3);
      return f && {
        kind: "gap",
        topic: f.topic,
        first: Number(f.nums[1]),
        last: { epoch: f.nums[0], seq: Number(f.nums[2]) },
      };
    }
    case "pong":
      return { kind: "pong", token: rest };
    case "err":
      return { kind: "err", text: rest };
    default:
      return null;
  }
}

export class ResumeClient {
  constructor(url, options = {}) {
    this.url = url;
    this.opts = {
      ...DEFAULTS,
      ...options,
      backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) },
      heartbeat: { ...DEFAULTS.heartbeat, ...(options.heartbeat || {}) },
    };
    if (!this.opts.WebSocket) throw new Error("no WebSocket implementation");
    // topic -> { last: position | null, acked: position | null }
    this.topics = new Map();
    for (const t of this.opts.topics) this.topics.set(t, { last: null, acked: null });
    this.handlers = new Map();
    this.attempt = 0;
    this.pings = 0;
    this.ws = null;
    this.open = false;
    this.closed = false;
    this.timers = { retry: null, beat: null, connect: null };
    this.connect();
  }

  // Listen to an event: connected, reconnecting {attempt, delay}, gaveup, subscribed,
  // resumed, gap, reset, message {topic, position, data}, direct {data}, refused {text}.
  on(name, fn) {
    if (!this.handlers.has(name)) this.handlers.set(name, []);
    this.handlers.get(name).push(fn);
    return this;
  }

  emit(name, ev) {
    for (const fn of this.handlers.get(name) || []) fn(ev);
  }

  // The last position seen on `topic`.
  position(topic) {
    return this.topics.get(topic)?.last ?? null;
  }

  subscribe(topic) {
    if (!this.topics.has(topic)) this.topics.set(topic, { last: null, acked: null });
    if (this.open) this.ws.send(`sub ${topic}`);
  }

  // An application message; dropped while disconnected (delivery is reliable from the server
  // to the client, not the other way).
  send(text) {
    if (this.open) this.ws.send(`msg ${text}`);
  }

  // Stop for good.
  close() {
    this.closed = true;
    this.clearTimers();
    if (this.ws) this.ws.close(1000);
  }

  // Drop the current connection as a network failure would (tests, "reconnect now").
  drop() {
    if (this.ws) this.lost(this.ws);
  }

  clearTimers() {
    for (const k of Object.keys(this.timers)) {
      clearTimeout(this.timers[k]);
      this.timers[k] = null;
    }
  }

  connect() {
    if (this.closed) return;
    let ws;
    try {
      ws = new this.opts.WebSocket(this.url, [PROTOCOL]);
    } catch (e) {
      this.retry();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.timers.connect = setTimeout(() => this.lost(ws), this.opts.connectTimeout);
    ws.onopen = () => {
      clearTimeout(this.timers.connect);
      if (ws.protocol !== PROTOCOL) {
        this.emit("refused", { text: `server did not accept ${PROTOCOL}` });
        this.lost(ws);
        return;
      }
      this.open = true;
      this.attempt = 0;
      this.emit("connected", {});
      for (const [topic, t] of this.topics) {
        ws.send(t.last ? `resume ${t.last.epoch} ${t.last.seq} ${topic}` : `sub ${topic}`);
      }
      this.alive();
    };
    ws.onmessage = (e) => {
      if (this.ws !== ws) return;
      this.alive();
      this.received(e.data);
    };
    ws.onclose = () => this.lost(ws);
    ws.onerror = () => this.lost(ws);
  }

  // Heard from the server: the heartbeat starts over.
  alive() {
    clearTimeout(this.timers.beat);
    const hb = this.opts.heartbeat;
    this.timers.beat = setTimeout(() => {
      if (!this.open) return;
      this.pings += 1;
      this.ws.send(`ping ${this.pings}`);
      for (const [topic, t] of this.topics) {
        if (t.last && (!t.acked || t.acked.seq !== t.last.seq || t.acked.epoch !== t.last.epoch)) {
          this.ws.send(`ack ${t.last.epoch} ${t.last.seq} ${topic}`);
          t.acked = t.last;
        }
      }
      const ws = this.ws;
      this.timers.beat = setTimeout(() => this.lost(ws), hb.timeout);
    }, hb.interval);
  }

  received(data) {
    const env = parseEnvelope(data);
    if (env) {
      const t = this.topics.get(env.topic);
      if (!t) return;
      const p = env.position;
      if (t.last && t.last.epoch === p.epoch) {
        if (p.seq <= t.last.seq) return; // had it already
        if (p.seq > t.last.seq + 1) {
          this.emit("gap", { topic: env.topic, first: t.last.seq + 1, last: { epoch: p.epoch, seq: p.seq - 1 } });
        }
      }
      t.last = p;
      this.emit("message", { topic: env.topic, position: p, data: env.payload });
      return;
    }
    const n = typeof data === "string" ? parseNotice(data) : null;
    if (!n) {
      this.emit("direct", { data });
      return;
    }
    const t = n.topic !== undefined ? this.topics.get(n.topic) : null;
    switch (n.kind) {
      case "ok":
        if (!t) return;
        this.emit(t.last ? "resumed" : "subscribed", { topic: n.topic, position: n.position });
        t.last = n.position;
        break;
      case "reset":
        if (!t) return;
        t.last = n.position;
        this.emit("reset", { topic: n.topic, position: n.position });
        break;
      case "gap":
        if (!t) return;
        t.last = n.last;
        this.emit("gap", { topic: n.topic, first: n.first, last: n.last });
        break;
      case "err":
        this.emit("refused", { text: n.text });
        break;
      default:
        break;
    }
  }

  // The connection `ws` is gone (closed, failed, silent, or never opened in time).
  lost(ws) {
    if (this.ws !== ws) return;
    this.ws = null;
    this.open = false;
    this.clearTimers();
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close();
    } catch (e) {
      // already closing
    }
    if (!this.closed) this.retry();
  }

  retry() {
    const b = this.opts.backoff;
    if (this.attempt >= b.attemptsMax) {
      this.closed = true;
      this.emit("gaveup", {});
      return;
    }
    const delay = Math.floor(this.opts.random() * (backoffCeiling(b, this.attempt) + 1));
    this.attempt += 1;
    this.emit("reconnecting", { attempt: this.attempt, delay });
    this.timers.retry = setTimeout(() => this.connect(), delay);
  }
}
