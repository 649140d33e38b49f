// A headless Chromium driven over standard input, one JSON command a line, one JSON answer a
// line, for the Rust tests (testkit::Browser). playwright-core brings no browser of its
// own: it drives Debian's `chromium` (CHROMIUM_PATH, default /usr/bin/chromium).
//
// Commands: {"cmd":"goto","url":U} · {"cmd":"text","selector":S} (innerText) ·
// {"cmd":"waitFor","selector":S,"contains":T,"absent":bool,"timeoutMs":N} ·
// {"cmd":"attr","selector":S,"name":N} (the first match's attribute, null if none) ·
// {"cmd":"count","selector":S} (how many elements match) ·
// {"cmd":"screenshot","path":P} · {"cmd":"close"}. Answers: {"ok":true,"value":...} or
// {"ok":false,"error":"..."}.
import readline from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const reply = (answer) => process.stdout.write(JSON.stringify(answer) + "\n");

async function run(c) {
  switch (c.cmd) {
    case "goto":
      await page.goto(c.url, { waitUntil: "load", timeout: 30000 });
      return null;
    case "text":
      return await page.locator(c.selector).innerText({ timeout: 10000 });
    case "waitFor": {
      const deadline = Date.now() + (c.timeoutMs ?? 30000);
      let last = "";
      while (Date.now() < deadline) {
        last = await page.locator(c.selector).innerText({ timeout: 5000 }).catch(() => "");
        const has = last.includes(c.contains);
        if (c.absent ? !has : has) return last;
        await new Promise((r) => setTimeout(r, 200));
      }
      throw new Error(`${c.selector} ${c.absent ? "still contains" : "never contained"} ${JSON.stringify(c.contains)}; last: ${JSON.stringify(last.slice(0, 2000))}`);
    }
    case "attr":
      if ((await page.locator(c.selector).count()) === 0) return null;
      return await page.locator(c.selector).first().getAttribute(c.name, { timeout: 10000 });
    case "count":
      return await page.locator(c.selector).count();
    case "screenshot":
      await page.screenshot({ path: c.path, fullPage: true });
      return c.path;
    case "close":
      await browser.close();
      return null;
    default:
      throw new Error(`unknown command ${c.cmd}`);
  }
}

reply({ ok: true, value: "ready" });
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let command;
  try {
    command = JSON.parse(line);
    reply({ ok: true, value: await run(command) });
  } catch (err) {
    reply({ ok: false, error: String(err && err.message ? err.message : err) });
  }
  if (command && command.cmd === "close") break;
}
await browser.close().catch(() => {});
process.exit(0);
