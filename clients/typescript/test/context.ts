/** A scenario context (clients and the probe) for any runtime: Node or the browser page. */
import { AsapClient, taskEnvelope, type AsapClientOptions } from "../src/index.js";
import { AGENT, TESTER, type Ctx, type ServerName, type Servers } from "./scenarios.js";

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
