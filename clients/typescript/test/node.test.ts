/** The scenarios in Node (the `ws` package as WebSocket), on both subprotocols. */
import { after, before, describe, test } from "node:test";
import { allScenarios } from "./scenarios.js";
import { makeCtx, startServers, type Started } from "./harness.js";

let started: Started;
before(async () => {
  started = await startServers();
});
after(async () => {
  await started.stop();
});

for (const encoding of ["proto", "json"] as const) {
  describe(`node ${encoding}`, () => {
    for (const scenario of allScenarios()) {
      test(scenario.name, { timeout: 30_000 }, async () => {
        const { ctx, dispose } = makeCtx(started.servers, encoding, "node");
        try {
          await scenario.run(ctx);
        } finally {
          dispose();
        }
      });
    }
  });
}
