// Drives Debian's chromium (headless, through puppeteer-core) for meridian/tests/it/ui.rs: reads
// one JSON command per line on stdin, answers one JSON line per command on stdout
// ({"ok":true,"value":...} or {"ok":false,"error":"..."}). The Rust test owns the cluster (it
// starts, kills and drains DCs); this script owns only the browser and its pages.
//
// Commands (`page` names a tab, opened by `open`):
//   {"cmd":"open","page":"dc1","url":"http://127.0.0.1:8500/ui/#/datacenters"}
//   {"cmd":"goto","page":"dc1","hash":"#/services"}
//   {"cmd":"wait","page":"dc1","js":"<expression>","timeoutMs":5000}  -> ms it took to hold
//   {"cmd":"eval","page":"dc1","js":"<expression>"}                   -> its value
//   {"cmd":"click","page":"dc1","selector":"#drain"}
//   {"cmd":"type","page":"dc1","selector":"#token","text":"..."}
//   {"cmd":"screenshot","page":"dc1","path":"/tmp/x.png"}
//   {"cmd":"close"}
//
// Bounded: every wait has a timeout (at most 120 s), and the browser is closed when stdin ends.

import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(`${process.env.MERIDIAN_UI_TOOLS}/`);
const puppeteer = require("puppeteer-core");

const browser = await puppeteer.launch({
  executablePath: process.env.MERIDIAN_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a container has no user namespace sandbox; the pages are our own UI on loopback.
  // Several DCs' UIs are open at once, as an operator's tabs: none is throttled for being in the
  // background, so each updates live.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--window-size=1366,900",
    "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows", "--disable-renderer-backgrounding",
  ],
  defaultViewport: { width: 1366, height: 900 },
});
const pages = new Map();
const errors = [];

function page(name) {
  const p = pages.get(name);
  if (!p) throw new Error(`no page ${name}: open it first`);
  return p;
}

async function run(c) {
  switch (c.cmd) {
    case "open": {
      const p = pages.get(c.page) || (await browser.newPage());
      pages.set(c.page, p);
      p.on("pageerror", (e) => errors.push(`${c.page}: ${e.message}`));
      p.on("console", (m) => { if (m.type() === "error") errors.push(`${c.page}: console: ${m.text()}`); });
      const t0 = Date.now();
      await p.goto(c.url, { waitUntil: "domcontentloaded", timeout: 30_000 });
      return Date.now() - t0;
    }
    case "goto": {
      const p = page(c.page);
      await p.evaluate((h) => { location.hash = h; }, c.hash);
      return null;
    }
    case "wait": {
      const p = page(c.page);
      const t0 = Date.now();
      const timeout = Math.min(c.timeoutMs || 10_000, 120_000);
      await p.waitForFunction(c.js, { timeout, polling: 25 });
      return Date.now() - t0;
    }
    case "eval":
      return await page(c.page).evaluate(c.js);
    case "click": {
      // Input goes to the tab in front, as a person's would.
      const p = page(c.page);
      await p.bringToFront();
      await p.click(c.selector);
      return null;
    }
    case "type": {
      const p = page(c.page);
      await p.bringToFront();
      await p.click(c.selector, { count: 3 });
      await p.keyboard.press("Backspace");
      await p.type(c.selector, c.text);
      return null;
    }
    case "press":
      await page(c.page).keyboard.press(c.key);
      return null;
    case "screenshot":
      await page(c.page).bringToFront();
      await page(c.page).screenshot({ path: c.path, fullPage: false });
      return c.path;
    case "errors":
      return errors.splice(0);
    default:
      throw new Error(`unknown command ${c.cmd}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let c;
  try { c = JSON.parse(line); } catch (e) { console.log(JSON.stringify({ ok: false, error: `bad command: ${e.message}` })); continue; }
  if (c.cmd === "close") break;
  try {
    console.log(JSON.stringify({ ok: true, value: (await run(c)) ?? null }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e && e.message || e) }));
  }
}
await browser.close();
