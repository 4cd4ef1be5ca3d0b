/** Starts test/server.py (the Python servers) and reads the URLs it prints; Node only. */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";
import type { Servers } from "./scenarios.js";

export { makeCtx } from "./context.js";

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

