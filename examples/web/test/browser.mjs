// Headless Chromium (Debian's package, /usr/bin/chromium) driven by playwright-core, for the
// browser tests (tests/e2e/test_web.py, tests/support/web_browser.py). No browser is downloaded:
// playwright-core only talks to the executable given.
//
// One JSON object per line on stdin, one answer per line on stdout:
//   -> {"id": 1, "cmd": "open", "args": {"url": "http://127.0.0.1:5173/"}}
//   <- {"id": 1, "ok": true, "result": 0}              or {"id": 1, "ok": false, "error": "..."}
//
// Every tab records its console errors and uncaught page errors (`errors`), with the time, so a
// test can assert there were none, and its console warnings (`warnings`), which the PowerSync SDK
// uses for sync events a failure message should show (a checkpoint it could not apply, say).
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
// Chromium's own background traffic (updates, sync, Google lookups) is refused on offline
// machines, noisily: turned off. --no-sandbox: the tests may run as root (CI containers).
const args = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // a name for this machine that is not a loopback name: the page must then ignore the worker and
  // the session its address names (tests/e2e/test_web.py)
  '--host-resolver-rules=MAP demo.test 127.0.0.1',
];

let browser = null;
let context = null;
const tabs = [];

function tab(index) {
  const t = tabs[index];
  if (!t) throw new Error(`no tab ${index}`);
  return t;
}

const commands = {
  async launch() {
    // A persistent context in a fresh directory: one browser profile shared by every tab (as two
    // tabs of one person's browser), with IndexedDB, OPFS and shared workers.
    const { mkdtemp } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = await mkdtemp(join(tmpdir(), 'web-demo-profile-'));
    context = await chromium.launchPersistentContext(dir, {
      executablePath,
      headless: true,
      args,
      viewport: { width: 900, height: 800 },
    });
    browser = context;
    return (await context.browser()?.version()) ?? 'chromium';
  },

  async open({ url }) {
    const page = await context.newPage();
    const t = { page, errors: [], warnings: [] };
    page.on('console', (msg) => {
      const entry = () => ({ at: Date.now(), text: msg.text(), url: msg.location()?.url ?? '' });
      if (msg.type() === 'error') t.errors.push(entry());
      if (msg.type() === 'warning') t.warnings.push(entry());
    });
    page.on('pageerror', (error) => t.errors.push({ at: Date.now(), text: `uncaught: ${error.message}`, url: '' }));
    tabs.push(t);
    await page.goto(url);
    return tabs.length - 1;
  },

  // `expression` is evaluated in the page (a promise is awaited); its value must be JSON.
  async eval({ tab: index, expression }) {
    return tab(index).page.evaluate(expression);
  },

  async waitFor({ tab: index, expression, timeoutMs = 30000 }) {
    const t = tab(index);
    try {
      const handle = await t.page.waitForFunction(expression, null, { timeout: timeoutMs, polling: 100 });
      return await handle.jsonValue();
    } catch (e) {
      // What the page showed then, to tell why.
      const shown = await t.page.evaluate(() => document.body.innerText).catch(() => '?');
      throw new Error(`${e.message}\n--- the page showed:\n${shown}\n--- console errors: ${JSON.stringify(t.errors)}`);
    }
  },

  async fill({ tab: index, selector, value }) {
    await tab(index).page.locator(selector).fill(String(value));
    return true;
  },

  async click({ tab: index, selector }) {
    await tab(index).page.locator(selector).click();
    return true;
  },

  // Types into whatever has the focus now (no element is focused first, unlike `fill`).
  async type({ tab: index, text }) {
    await tab(index).page.keyboard.type(String(text));
    return true;
  },

  async text({ tab: index, selector }) {
    return tab(index).page.locator(selector).allInnerTexts();
  },

  async screenshot({ tab: index, path }) {
    await tab(index).page.screenshot({ path, fullPage: true });
    return path;
  },

  async errors({ tab: index }) {
    return tab(index).errors;
  },

  async warnings({ tab: index }) {
    return tab(index).warnings;
  },

  async close() {
    if (context) await context.close();
    context = browser = null;
    return true;
  },
};

const rl = createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  const reply = (body) => process.stdout.write(JSON.stringify({ id: msg.id, ...body }) + '\n');
  try {
    const fn = commands[msg.cmd];
    if (!fn) throw new Error(`unknown command ${msg.cmd}`);
    reply({ ok: true, result: (await fn(msg.args ?? {})) ?? null });
  } catch (e) {
    reply({ ok: false, error: String(e?.stack ?? e) });
  }
});
rl.on('close', async () => {
  if (context) await context.close().catch(() => {});
  process.exit(0);
});
