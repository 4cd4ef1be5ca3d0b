/**
 * The scenarios in headless Chromium (Debian's chromium via puppeteer-core, no browser download),
 * on both subprotocols, and the browser example with a screenshot. A static server here serves
 * build/browser; the Python servers allow its origin.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import puppeteer, { type Browser } from "puppeteer-core";
import { PACKAGE_DIR, startServers, type Started } from "./harness.js";
import { allScenarios } from "./scenarios.js";

const STATIC = path.join(PACKAGE_DIR, "build/browser");
const TYPES: Record<string, string> = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };
const CHROMIUM = process.env["ASAP_CHROMIUM"] ?? "/usr/bin/chromium";

let http: Server;
let origin: string;
let started: Started;
let browser: Browser;
let profile: string;

before(async () => {
  http = createServer(async (req, res) => {
    const file = path.join(STATIC, path.normalize(new URL(req.url ?? "/", "http://x").pathname).replace(/^\/+/, "") || "index.html");
    try {
      const body = await readFile(file.startsWith(STATIC) ? file : path.join(STATIC, "missing"));
      res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const address = http.address();
  assert.ok(address && typeof address === "object");
  origin = `http://127.0.0.1:${address.port}`;
  started = await startServers([origin]);
  profile = await mkdtemp(path.join(tmpdir(), "asap-chromium-"));
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      `--user-data-dir=${profile}`,
    ],
  });
});

after(async () => {
  await browser?.close();
  await started?.stop();
  await new Promise((resolve) => http?.close(resolve));
});

interface Result {
  name: string;
  encoding: string;
  ok: boolean;
  error?: string;
}

describe("chromium", () => {
  let results: Result[] = [];

  before(async () => {
    const page = await browser.newPage();
    page.on("pageerror", (error) => console.error("page error:", error));
    await page.goto(`${origin}/index.html?servers=${encodeURIComponent(JSON.stringify(started.servers))}`);
    await page.waitForFunction("window.__asap && window.__asap.done", { timeout: 170_000, polling: 200 });
    results = (await page.evaluate("window.__asap.results")) as Result[];
    await page.close();
  });

  for (const encoding of ["proto", "json"]) {
    describe(`chromium ${encoding}`, () => {
      for (const scenario of allScenarios()) {
        test(scenario.name, () => {
          const result = results.find((r) => r.name === scenario.name && r.encoding === encoding);
          assert.ok(result, "the scenario did not run in the page");
          assert.ok(result.ok, result.error);
        });
      }
    });
  }

  test("browser example shows a streaming task's progress live, to 100%", async () => {
    const page = await browser.newPage();
    const url = `${origin}/example.html?url=${encodeURIComponent(started.servers.example.ws)}&steps=20`;
    await page.goto(url);
    // Watch the progress bar while the task runs: it must pass through intermediate values.
    await page.evaluate(() => {
      const seen: number[] = [];
      (window as unknown as { __seen: number[] }).__seen = seen;
      const bar = document.getElementById("bar") as HTMLProgressElement;
      new MutationObserver(() => seen.push(bar.value)).observe(bar, { attributes: true });
      const observer = new MutationObserver(() => seen.push(bar.value));
      observer.observe(document.getElementById("percent")!, { childList: true, characterData: true, subtree: true });
    });
    await page.click("#run");
    await page.waitForFunction("document.body.dataset.state === 'done' || document.body.dataset.state === 'failed'", { timeout: 30_000 });
    const shown = await page.evaluate(() => ({
      state: document.body.dataset["state"],
      percent: document.getElementById("percent")!.textContent,
      status: document.getElementById("status")!.textContent,
      bar: (document.getElementById("bar") as HTMLProgressElement).value,
      log: document.getElementById("log")!.textContent,
      seen: (window as unknown as { __seen: number[] }).__seen,
    }));
    const dir = await mkdtemp(path.join(tmpdir(), "asap-example-"));
    const png = path.join(dir, "example.png");
    await page.screenshot({ path: png as `${string}.png`, fullPage: true });
    console.log(`# browser example screenshot: ${png}`);
    await page.close();
    assert.equal(shown.state, "done", shown.status ?? "");
    assert.equal(shown.percent, "100%");
    assert.equal(shown.bar, 100);
    assert.equal(shown.status, "completed");
    assert.match(shown.log ?? "", /step 1 of 20\n[\s\S]*step 20 of 20\ncompleted: \{"steps":20\}/);
    assert.ok(new Set(shown.seen).size > 2, `progress went through intermediate values: ${shown.seen.join(",")}`);
    assert.ok((await readFile(png)).length > 1000, "screenshot written");
  });
});
