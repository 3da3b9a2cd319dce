// The dashboard in headless Chromium (driven by playwright-core, Debian's /usr/bin/chromium):
// the page loads from the metrics port with nothing fetched from anywhere else, the charts
// draw, and they update while a load runs. Writes OUT/dashboard.png (the whole page) and
// OUT/result.json; exits non-zero on any failed check.
//
//   node dashboard.cjs http://127.0.0.1:PORT/dashboard OUT_DIR
"use strict";
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const [url, out] = process.argv.slice(2);
const origin = new URL(url).host;

function fail(msg) {
  console.error("dashboard test: " + msg);
  process.exitCode = 1;
  throw new Error(msg);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors = [], foreign = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    page.on("request", (r) => { if (new URL(r.url()).host !== origin) foreign.push(r.url()); });
    page.on("websocket", (ws) => { if (new URL(ws.url()).host !== origin) foreign.push(ws.url()); });

    const resp = await page.goto(url, { waitUntil: "load" });
    if (!resp || resp.status() !== 200) fail("GET " + url + ": " + (resp && resp.status()));
    await page.waitForFunction(
      () => window.percoreDashboard && window.percoreDashboard.connected &&
            window.percoreDashboard.snapshots >= 3 && window.percoreDashboard.points > 0,
      null, { timeout: 20000 });
    const read = () => page.evaluate(() => {
      const s = window.percoreDashboard;
      const rx = s.last.shards.reduce((a, sh) => a + sh.rx, 0);
      // Pixels each chart drew (the canvases start transparent).
      const drawn = {};
      for (const c of document.querySelectorAll("canvas")) {
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
        drawn[c.id] = n;
      }
      return { snapshots: s.snapshots, points: s.points, draws: s.draws, t: s.last.t, rx,
               open: s.last.open, series: s.series, drawn,
               tiles: Object.fromEntries([...document.querySelectorAll(".tile")].map(
                 (t) => [t.querySelector(".k").textContent, t.querySelector(".v").textContent])) };
    });
    const first = await read();
    await page.waitForTimeout(3500);
    const second = await read();

    if (second.snapshots <= first.snapshots) fail("no new snapshot in 3.5 s");
    if (second.t <= first.t) fail("the last snapshot did not move on");
    if (second.draws <= first.draws) fail("the charts were not redrawn");
    if (second.rx <= first.rx) fail("messages received did not grow while the load runs");
    if (second.open < 1) fail("no connection open while the load runs");
    for (const [id, n] of Object.entries(second.drawn)) {
      if (n < 2000) fail("chart " + id + " drew only " + n + " pixels");
    }
    for (const id of ["c-conn", "c-msgs", "c-rtt", "c-turn", "c-busy", "c-shard"]) {
      const s = second.series[id];
      if (!s || s.points < 2) fail("chart " + id + " has no line: " + JSON.stringify(s));
    }
    const rate = second.tiles["messages/s in"];
    if (!/^[0-9.]+k?M?$/.test(rate) || parseFloat(rate) <= 0) fail("messages/s in reads " + rate);
    if (!/ms$/.test(second.tiles["ping rtt p99"])) fail("no ping round trip: " + second.tiles["ping rtt p99"]);
    if (errors.length) fail("page errors: " + errors.join("; "));
    if (foreign.length) fail("requests off the metrics port: " + foreign.join(", "));

    fs.mkdirSync(out, { recursive: true });
    await page.screenshot({ path: path.join(out, "dashboard.png"), fullPage: true });
    const result = { url, first, second };
    fs.writeFileSync(path.join(out, "result.json"), JSON.stringify(result, null, 2));
    console.log("dashboard test: ok: " + (second.snapshots - first.snapshots) + " snapshots in 3.5 s, " +
                second.points + " points drawn, messages/s in " + rate + ", ping rtt p99 " +
                second.tiles["ping rtt p99"] + "; screenshot " + path.join(out, "dashboard.png"));
  } finally {
    await browser.close();
  }
})().catch((e) => { if (!process.exitCode) { console.error(e); process.exitCode = 1; } });
