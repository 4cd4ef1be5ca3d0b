/** The scenarios in a browser page (native WebSocket): results go to window.__asap for the runner. */
import { makeCtx } from "./context.js";
import { allScenarios, type Servers } from "./scenarios.js";

interface Result {
  name: string;
  encoding: string;
  ok: boolean;
  error?: string;
  ms: number;
}

const state = { done: false, results: [] as Result[] };
(window as unknown as { __asap: typeof state }).__asap = state;

async function main(): Promise<void> {
  const servers = JSON.parse(new URLSearchParams(location.search).get("servers") ?? "{}") as Servers;
  const list = document.getElementById("results")!;
  for (const encoding of ["proto", "json"] as const) {
    for (const scenario of allScenarios()) {
      const { ctx, dispose } = makeCtx(servers, encoding, "browser");
      const started = performance.now();
      let result: Result;
      try {
        await Promise.race([
          scenario.run(ctx),
          new Promise((_, reject) => setTimeout(() => reject(new Error("timed out after 30 s")), 30_000)),
        ]);
        result = { name: scenario.name, encoding, ok: true, ms: performance.now() - started };
      } catch (error) {
        const e = error as Error;
        result = { name: scenario.name, encoding, ok: false, error: `${e?.name}: ${e?.message}\n${e?.stack ?? ""}`, ms: performance.now() - started };
      } finally {
        dispose();
      }
      state.results.push(result);
      const item = document.createElement("li");
      item.textContent = `${result.ok ? "ok" : "FAIL"} ${encoding} ${scenario.name}`;
      list.append(item);
    }
  }
  state.done = true;
}

void main();
