/**
 * The browser example: subscribe to the example agent's `stream` skill (asap/example.py) and show
 * its progress live. Serve the agent with `asap serve` (allowing this page's origin), open
 * example.html?url=ws://HOST:PORT/asap/v1/ws, press "Run task".
 */
import { AsapClient, AsapError, taskEnvelope } from "../../src/index.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const url = $<HTMLInputElement>("url");
const steps = $<HTMLInputElement>("steps");
const bar = $<HTMLProgressElement>("bar");
const percent = $<HTMLSpanElement>("percent");
const status = $<HTMLSpanElement>("status");
const log = $<HTMLDivElement>("log");

const params = new URLSearchParams(location.search);
url.value = params.get("url") ?? `ws://${location.hostname || "127.0.0.1"}:8765/asap/v1/ws`;
if (params.get("steps")) steps.value = params.get("steps")!;

function line(text: string): void {
  log.textContent += `${text}\n`;
}

async function run(): Promise<void> {
  const client = new AsapClient({ url: url.value, sender: "urn:asap:agent:browser-demo", encoding: "json" });
  document.body.dataset["state"] = "running";
  status.textContent = "running";
  log.textContent = "";
  bar.value = 0;
  percent.textContent = "0%";
  try {
    const envelope = taskEnvelope("urn:asap:agent:example", "stream", { steps: Number(steps.value) });
    for await (const item of client.subscribe(envelope, { timeoutMs: 60_000 })) {
      if (item.payload.case === "taskUpdate") {
        const progress = item.payload.value.progressPercent;
        bar.value = progress;
        percent.textContent = `${Math.round(progress)}%`;
        line(item.payload.value.message);
      } else if (item.payload.case === "taskResponse") {
        status.textContent = "completed";
        line(`completed: ${JSON.stringify(item.payload.value.result)}`);
      }
    }
    document.body.dataset["state"] = "done";
  } catch (error) {
    status.textContent = error instanceof AsapError ? `${error.codeName}: ${error.message}` : String(error);
    status.className = "error";
    document.body.dataset["state"] = "failed";
  } finally {
    client.close();
  }
}

$<HTMLButtonElement>("run").addEventListener("click", () => void run());
if (params.get("autorun")) void run();
