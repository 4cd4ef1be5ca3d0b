/** Starts test/server.py (the Python servers) and reads the URLs it prints; Node only. */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { AsapClient, taskEnvelope, type AsapClientOptions } from "../src/index.js";
import { AGENT, TESTER, type Ctx, type ServerName, type Servers } from "./scenarios.js";

export const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const ROOT = path.resolve(PACKAGE_DIR, "../..");
const PYTHON = process.env["ASAP_PYTHON"] ?? path.join(ROOT, ".venv/bin/python");

export interface Started {
  servers: Servers;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** Start the servers; resolves once they print their URLs (no sleeping). */
export async function startServers(origins: string[] = []): Promise<Started> {
  const args = [path.join(PACKAGE_DIR, "test/server.py"), ...origins.flatMap((o) => ["--origin", o])];
  const child = spawn(PYTHON, args, { stdio: ["pipe", "pipe", "inherit"] });
  const line = await new Promise<string>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`test/server.py exited with ${code} before listening`)));
    createInterface({ input: child.stdout! }).once("line", resolve);
  });
  const { servers } = JSON.parse(line) as { servers: Servers };
  return {
    servers,
    process: child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.stdin!.end();
      }),
  };
}

let counter = 0;

/** A scenario context in this process: clients closed by `dispose()`. */
export function makeCtx(servers: Servers, encoding: "proto" | "json", runtime: string) {
  const clients: AsapClient[] = [];
  const probes = new Map<ServerName, AsapClient>();
  const run = `${runtime}-${encoding}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  const ctx: Ctx = {
    servers,
    encoding,
    runtime,
    key: (name) => `${name}-${run}-${++counter}`,
    client(options: Partial<AsapClientOptions> & { server?: ServerName } = {}) {
      const { server = "default", ...rest } = options;
      const client = new AsapClient({ url: servers[server].ws, sender: TESTER, encoding, onWarning: () => undefined, ...rest });
      clients.push(client);
      return client;
    },
    async probe(op, key = "") {
      const server: ServerName = "default"; // every server shares one probe (test/server.py)
      let client = probes.get(server);
      if (client === undefined) {
        client = new AsapClient({ url: servers[server].ws, sender: TESTER, encoding, timeoutMs: 15_000 });
        probes.set(server, client);
      }
      const response = await client.send(taskEnvelope(AGENT, "probe", { op, key }));
      const payload = response.envelope?.payload;
      if (payload?.case !== "taskResponse") throw new Error(`probe ${op} failed`);
      return (payload.value.result ?? {}) as Record<string, never>;
    },
  };
  return {
    ctx,
    dispose() {
      for (const client of clients.splice(0)) client.close();
      for (const client of probes.values()) client.close();
      probes.clear();
    },
  };
}
