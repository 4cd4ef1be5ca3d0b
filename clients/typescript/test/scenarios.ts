/**
 * The conformance scenarios of the TypeScript client against the real Python server, written
 * once and run in Node (test/node.test.ts) and in headless Chromium (test/browser.test.ts), on
 * both subprotocols. They mirror tests/conformance/ where the scenario applies to a client.
 */
import type { JsonObject } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  AsapClient,
  AsapError,
  Code,
  MessageAckSchema,
  AckStatus,
  MetadataError,
  ServingStatus,
  taskEnvelope,
  tokenEntry,
  TOKEN_ENTRY_PREFIX,
  type AsapClientOptions,
  type Envelope,
  type WebSocketFactory,
  type WebSocketLike,
} from "../src/index.js";
import { BadRequestSchema, ResourceInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { OpaqueAnySchema } from "../src/gen/asap/v1/opaque_pb.js";
import { eq, ok, rejects, sleep } from "./assert.js";

export const AGENT = "urn:asap:agent:conformance";
export const TESTER = "urn:asap:agent:tester";
export const GOOD_TOKEN = "good-token";

export type ServerName = "default" | "auth" | "ratelimited" | "small" | "slots" | "busy" | "window" | "example";
export type Servers = Record<ServerName, { ws: string; grpc?: string }>;

export interface Ctx {
  servers: Servers;
  encoding: "proto" | "json";
  /** A client (closed after the scenario). */
  client(options?: Partial<AsapClientOptions> & { server?: ServerName }): AsapClient;
  /** Drive the server's probe (see test/server.py). */
  probe(op: string, key?: string): Promise<JsonObject>;
  /** A key unique to this run. */
  key(name: string): string;
  /** "node" or "browser". */
  runtime: string;
}

export interface Scenario {
  name: string;
  run(ctx: Ctx): Promise<void>;
}

const scenarios: Scenario[] = [];
function scenario(name: string, run: (ctx: Ctx) => Promise<void>): void {
  scenarios.push({ name, run });
}

const env = (skill: string, input?: JsonObject, init: Parameters<typeof taskEnvelope>[3] = {}) => taskEnvelope(AGENT, skill, input, init);
const result = (envelope: Envelope | undefined): JsonObject => {
  ok(envelope?.payload.case === "taskResponse", `expected a taskResponse, got ${envelope?.payload.case}`);
  return (envelope.payload.value.result ?? {}) as JsonObject;
};
async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

// -- unary ---------------------------------------------------------------------------------

scenario("send returns the answer envelope", async (ctx) => {
  const client = ctx.client();
  const request = env("echo", { text: "hi", n: 2 });
  request.id = ctx.key("id");
  const response = await client.send(request);
  eq(response.envelope?.correlationId, request.id);
  eq(response.envelope?.sender, AGENT);
  eq(result(response.envelope), { text: "hi", n: 2 });
});

scenario("send fills envelope defaults", async (ctx) => {
  const response = await ctx.client().send(env("inspect"));
  eq(result(response.envelope)["sender"], TESTER);
});

scenario("non-task payload reaches its handler", async (ctx) => {
  const response = await ctx.client().send({
    recipient: AGENT,
    payload: { case: "mcpToolCall", value: { requestId: "r1", toolName: "lookup", arguments: { q: "x" } } },
  });
  ok(response.envelope?.payload.case === "mcpToolResult");
  eq(response.envelope.payload.value.result, { tool: "lookup", q: "x" });
});

scenario("unknown skill is SKILL_NOT_FOUND", async (ctx) => {
  await rejects(ctx.client().send(env("no-such-skill")), { code: Code.NOT_FOUND, reason: "SKILL_NOT_FOUND" });
});

scenario("payload without handler is NO_HANDLER", async (ctx) => {
  await rejects(ctx.client().send({ recipient: AGENT, payload: { case: "stateQuery", value: { taskId: "t" } } }), {
    code: Code.UNIMPLEMENTED,
    reason: "NO_HANDLER",
  });
});

scenario("send batch answers each envelope in order", async (ctx) => {
  const results = await ctx.client().sendBatch([env("echo", { i: 1 }), env("no-such-skill"), env("echo", { i: 3 })]);
  eq(results.length, 3);
  ok(results[0]?.outcome.case === "envelope");
  eq(result(results[0].outcome.value)["i"], 1);
  ok(results[1]?.outcome.case === "error");
  eq(results[1].outcome.value.code, Code.NOT_FOUND);
  ok(results[2]?.outcome.case === "envelope");
  eq(await ctx.client().sendBatch([]), []);
});

scenario("raw createClient unary with an explicit envelope", async (ctx) => {
  const client = ctx.client();
  const envelope = env("echo", { raw: true }, { id: ctx.key("raw"), sender: TESTER, asapVersion: "1.1", timestamp: timestampFromMs(Date.now()) });
  const response = await client.service.send({ envelope });
  eq(result(response.envelope), { raw: true });
});

// -- streaming ------------------------------------------------------------------------------

scenario("subscribe streams updates in order then the answer", async (ctx) => {
  const items = await collect(ctx.client().subscribe(env("updates", { count: 4 })));
  eq(items.map((e) => e.payload.case), ["taskUpdate", "taskUpdate", "taskUpdate", "taskUpdate", "taskResponse"]);
  eq(items.slice(0, 4).map((e) => (e.payload.case === "taskUpdate" ? e.payload.value.progressPercent : -1)), [1, 2, 3, 4]);
});

scenario("subscribe to a unary handler yields its answer; zero updates", async (ctx) => {
  const items = await collect(ctx.client().subscribe(env("echo", { a: 1 })));
  eq(items.map((e) => e.payload.case), ["taskResponse"]);
  const none = await collect(ctx.client().subscribe(env("updates", { count: 0 })));
  eq(none.map((e) => e.payload.case), ["taskResponse"]);
});

scenario("subscribe error is raised by iteration", async (ctx) => {
  await rejects(collect(ctx.client().subscribe(env("raise", { class: "NotFound" }))), { code: Code.NOT_FOUND });
});

scenario("publish delivers each envelope in order, from an async iterable", async (ctx) => {
  async function* envelopes() {
    for (let i = 0; i < 5; i++) {
      await sleep(1);
      yield env("echo", { i });
    }
  }
  const results = await ctx.client().publish(envelopes());
  eq(results.map((r) => (r.outcome.case === "envelope" ? result(r.outcome.value)["i"] : null)), [0, 1, 2, 3, 4]);
  eq(await ctx.client().publish([]), []);
});

scenario("publish reports failures per envelope", async (ctx) => {
  const results = await ctx.client().publish([env("echo"), env("raise", { class: "NotFound" }), env("echo")]);
  eq(results.map((r) => r.outcome.case), ["envelope", "error", "envelope"]);
  ok(results[1]?.outcome.case === "error");
  eq(results[1].outcome.value.code, Code.NOT_FOUND);
});

scenario("stream acks each envelope received then processed", async (ctx) => {
  const stream = ctx.client().stream();
  const request = env("echo", { s: 1 }, { requiresAck: true });
  stream.send(request);
  stream.close();
  const items = await collect(stream);
  const kinds = items.map((r) => (r.item.case === "envelope" ? r.item.value.payload.case : r.item.case));
  eq(kinds, ["messageAck", "taskResponse", "messageAck"]);
  const acks = items.flatMap((r) => (r.item.case === "envelope" && r.item.value.payload.case === "messageAck" ? [r.item.value.payload.value.status] : []));
  eq(acks, [AckStatus.RECEIVED, AckStatus.PROCESSED]);
});

scenario("stream reports one failing envelope and goes on", async (ctx) => {
  const stream = ctx.client().stream();
  const bad = env("raise", { class: "NotFound" });
  stream.send(bad);
  stream.send(env("echo", { after: true }));
  stream.close();
  const items = await collect(stream);
  const error = items.find((r) => r.item.case === "error");
  ok(error?.item.case === "error");
  eq(error.item.value.status?.code, Code.NOT_FOUND);
  ok(items.some((r) => r.item.case === "envelope" && r.item.value.payload.case === "taskResponse"));
});

scenario("stream is interactive", async (ctx) => {
  const stream = ctx.client().stream();
  const iterator = stream[Symbol.asyncIterator]();
  for (const i of [1, 2, 3]) {
    stream.send(env("echo", { i }));
    const next = await iterator.next();
    ok(!next.done && next.value.item.case === "envelope");
    eq(result(next.value.item.value)["i"], i);
  }
  stream.close();
  ok((await iterator.next()).done);
  let refused = false;
  try {
    stream.send(env("echo"));
  } catch (error) {
    refused = error instanceof AsapError && error.code === Code.FAILED_PRECONDITION;
  }
  ok(refused, "sending after close() is refused");
});

// -- errors ---------------------------------------------------------------------------------

scenario("every handler error reaches the caller unchanged (code, reason, details, metadata, trailers)", async (ctx) => {
  const cases = (await ctx.probe("error-cases"))["cases"] as { class: string; reason: string; code: number }[];
  ok(cases.length > 30, `only ${cases.length} error cases`);
  const client = ctx.client({ retry: { maxAttempts: 1 } });
  const codes = new Set<number>();
  for (const c of cases) {
    const error = await rejects(client.send(env("raise", { class: c.class, reason: c.reason }), { headers: { "x-echo": c.class } }), {
      code: c.code,
      reason: c.reason,
    });
    codes.add(error.code);
    eq(error.message, `conformance agent raised ${c.class} (ünïcode ✓)`);
    eq(error.metadata, { origin: "conformance", class: c.class, "asked-reason": c.reason }, "ErrorInfo metadata");
    eq(error.domain, "asap");
    const bad = error.findDetail(BadRequestSchema);
    eq(bad?.fieldViolations[0]?.field, "input.class");
    eq(error.findDetail(ResourceInfoSchema)?.resourceName, "raise");
    eq(error.trailers.get("x-echo-trailer"), c.class);
    eq(error.trailers.get("x-echo-trailer-bin"), new Uint8Array([0, 0xff, ...new TextEncoder().encode(c.class), 0x80]));
    if (c.reason in { CANCELLED: 1, MISSING_PAYLOAD: 1 }) ok(error.errorReason !== undefined);
  }
  eq(codes.size, 16, "every non-OK code was seen");
});

scenario("rate limited from a handler keeps retry after", async (ctx) => {
  const error = await rejects(ctx.client().send(env("raise", { class: "RateLimited" })), { code: Code.RESOURCE_EXHAUSTED, reason: "RATE_LIMITED" });
  eq(error.retryAfterMs, 2500);
  ok(error.findDetail(RetryInfoSchema));
});

scenario("unexpected exception is INTERNAL with a generic message", async (ctx) => {
  const error = await rejects(ctx.client().send(env("crash"), { headers: { "x-echo": "c" } }), { code: Code.INTERNAL });
  ok(!error.message.includes("hunter2"), "the secret leaked");
  await rejects(collect(ctx.client().subscribe(env("crash"))), { code: Code.INTERNAL });
});

scenario("UNAVAILABLE from a handler is retried, SHUTTING_DOWN is not", async (ctx) => {
  const client = ctx.client({ retry: { maxAttempts: 3, initialBackoffMs: 1 } });
  const retried = ctx.key("retried");
  await rejects(client.send(env("raise", { class: "Unavailable", key: retried })), { code: Code.UNAVAILABLE });
  eq((await ctx.probe("runs", `raise:${retried}`))["runs"], 3);
  const once = ctx.key("once");
  await rejects(client.send(env("raise", { class: "ShuttingDown", key: once })), { code: Code.UNAVAILABLE, reason: "SHUTTING_DOWN" });
  eq((await ctx.probe("runs", `raise:${once}`))["runs"], 1);
});

scenario("error detail of an unknown type keeps the error and its type URL", async (ctx) => {
  const error = await rejects(ctx.client().send(env("opaque-detail")), { code: Code.NOT_FOUND });
  eq(error.metadata, { task_id: "t-9" });
  const unknown = error.details[1] as { $typeName: string; typeUrl: string };
  // proto: the Any itself; JSON: the server wrote it as an asap.v1.OpaqueAny.
  ok(unknown.$typeName === "google.protobuf.Any" || unknown.$typeName === OpaqueAnySchema.typeName, unknown.$typeName);
  eq(unknown.typeUrl, "type.googleapis.com/acme.v9.QuotaDetail");
});

scenario("error with requires_ack carries the REJECTED ack", async (ctx) => {
  const error = await rejects(ctx.client().send(env("raise", { class: "NotFound" }, { requiresAck: true })), { code: Code.NOT_FOUND });
  eq(error.findDetail(MessageAckSchema)?.status, AckStatus.REJECTED);
});

// -- metadata -------------------------------------------------------------------------------

scenario("request metadata reaches the handler; repeated keys and binary values", async (ctx) => {
  const response = await ctx.client().send(env("inspect"), {
    headers: [
      ["x-one", "1"],
      ["x-raw-bin", new Uint8Array([0, 1, 255])],
    ],
  });
  const seen = result(response.envelope);
  eq(seen["text"], { "x-one": "1" });
  eq(seen["binary"], { "x-raw-bin": "0001ff" });
});

scenario("trailing metadata on success, on error and of a subscription", async (ctx) => {
  let trailers: unknown;
  await ctx.client().send(env("echo"), { headers: { "x-echo": "ok" }, onTrailer: (t) => (trailers = t.get("x-echo-trailer")) });
  eq(trailers, "ok");
  const error = await rejects(ctx.client().send(env("raise", { class: "NotFound" }), { headers: { "x-echo": "bad" } }), { code: Code.NOT_FOUND });
  eq(error.trailers.get("x-echo-trailer"), "bad");
  let streamed: unknown;
  await collect(ctx.client().subscribe(env("echo"), { headers: { "x-echo": "sub" }, onTrailer: (t) => (streamed = t.get("x-echo-trailer")) }));
  eq(streamed, "sub");
  await ctx.client().send(env("echo"), { onTrailer: (t) => (trailers = t.size) });
  eq(trailers, 0);
});

scenario("invalid metadata is refused locally", async (ctx) => {
  const client = ctx.client();
  const bad: Record<string, string | Uint8Array>[] = [{ "X-Upper": "v" }, { "x-text": "line\nbreak" }, { "grpc-reserved": "v" }, { "x-data-bin": "text" }, { "x-text": new Uint8Array([1]) }];
  for (const headers of bad) {
    let refused = false;
    try {
      await client.send(env("echo"), { headers });
    } catch (error) {
      refused = error instanceof MetadataError;
    }
    ok(refused, `accepted ${JSON.stringify(headers)}`);
  }
  await client.send(env("echo"));
});

// -- deadlines ------------------------------------------------------------------------------

scenario("send past its deadline is DEADLINE_EXCEEDED and cancels the handler", async (ctx) => {
  const key = ctx.key("late");
  const started = Date.now();
  await rejects(ctx.client().send(env("park", { key }), { timeoutMs: 150 }), { code: Code.DEADLINE_EXCEEDED });
  ok(Date.now() - started < 2000);
  await ctx.probe("cancelled", key);
});

scenario("subscribe, stream and publish past their deadline", async (ctx) => {
  const client = ctx.client();
  await rejects(collect(client.subscribe(env("park", { key: ctx.key("s") }), { timeoutMs: 100 })), { code: Code.DEADLINE_EXCEEDED });
  const stream = client.stream({ timeoutMs: 100 });
  stream.send(env("park", { key: ctx.key("d") }));
  await rejects(collect(stream), { code: Code.DEADLINE_EXCEEDED });
  await rejects(client.publish([env("park", { key: ctx.key("p") })], { timeoutMs: 100 }), { code: Code.DEADLINE_EXCEEDED });
});

scenario("the handler sees the remaining time; no timeout means no deadline", async (ctx) => {
  const seen = result((await ctx.client().send(env("inspect"), { timeoutMs: 5000 })).envelope);
  const remaining = seen["remaining"] as number;
  ok(remaining > 3 && remaining <= 5, `remaining ${remaining}`);
  const none = result((await ctx.client({ timeoutMs: null }).send(env("inspect"))).envelope);
  eq(none["remaining"], -1);
});

scenario("the deadline stops a handler that never awaits", async (ctx) => {
  const key = ctx.key("spin");
  await rejects(collect(ctx.client().subscribe(env("spin", { key, count: 10_000_000 }), { timeoutMs: 200 })), { code: Code.DEADLINE_EXCEEDED });
  await ctx.probe("wait", `closed:${key}`);
});

// -- cancellation ---------------------------------------------------------------------------

scenario("aborting a send ends the call; its handler runs on (exactly-once); other calls survive", async (ctx) => {
  const client = ctx.client();
  const key = ctx.key("abort");
  const controller = new AbortController();
  const call = client.send(env("park", { key }), { signal: controller.signal });
  await ctx.probe("wait", `entered:${key}`);
  controller.abort();
  await rejects(call, { code: Code.CANCELLED });
  await ctx.probe("release", key); // an explicit cancel stops the call, not the delivery
  eq(result((await client.send(env("echo", { after: 1 }))).envelope), { after: 1 });
});

scenario("aborting or leaving a subscription ends it; its handler runs on", async (ctx) => {
  const client = ctx.client();
  const key = ctx.key("sub");
  const controller = new AbortController();
  const items = client.subscribe(env("park", { key }), { signal: controller.signal });
  const done = collect(items);
  await ctx.probe("wait", `entered:${key}`);
  controller.abort();
  await rejects(done, { code: Code.CANCELLED });
  await ctx.probe("release", key); // an explicit cancel stops the call, not the delivery
  const spin = ctx.key("leave");
  for await (const item of client.subscribe(env("spin", { key: spin, count: 20_000, pad: 10 }))) {
    ok(item.payload.case === "taskUpdate");
    break;
  }
  await ctx.probe("wait", `closed:${spin}`);
});

scenario("aborting a publish and a stream ends them; their handlers run on", async (ctx) => {
  const client = ctx.client();
  const key = ctx.key("pub");
  const controller = new AbortController();
  const call = client.publish([env("park", { key })], { signal: controller.signal });
  await ctx.probe("wait", `entered:${key}`);
  controller.abort(new Error("user gave up"));
  const error = await rejects(call, { code: Code.CANCELLED });
  eq((error.cause as Error | undefined)?.message, "user gave up");
  await ctx.probe("release", key); // an explicit cancel stops the call, not the delivery
  const skey = ctx.key("duplex");
  const streamAbort = new AbortController();
  const stream = client.stream({ signal: streamAbort.signal });
  stream.send(env("park", { key: skey }));
  const reading = collect(stream);
  await ctx.probe("wait", `entered:${skey}`);
  streamAbort.abort();
  await rejects(reading, { code: Code.CANCELLED });
  await ctx.probe("release", skey);
});

scenario("closing the client fails calls in flight with CONNECTION_LOST", async (ctx) => {
  const client = ctx.client();
  const key = ctx.key("close");
  const call = client.send(env("park", { key }), { timeoutMs: 10_000 });
  const sub = collect(client.subscribe(env("park", { key: key + "-s" })));
  await ctx.probe("wait", `entered:${key}`);
  await ctx.probe("wait", `entered:${key}-s`);
  const failures = [call, sub].map((p) => rejects(p, { code: Code.UNAVAILABLE, reason: "CONNECTION_LOST" }));
  client.close();
  await Promise.all(failures);
  await rejects(client.send(env("echo")), { code: Code.FAILED_PRECONDITION });
  await ctx.probe("release", key); // an explicit cancel stops the call, not the delivery
});

// -- delivery: acks and dedupe ----------------------------------------------------------------

scenario("requires_ack send returns PROCESSED", async (ctx) => {
  const response = await ctx.client().send(env("echo", {}, { requiresAck: true }));
  eq(response.ack?.status, AckStatus.PROCESSED);
});

scenario("a retransmission runs the handler once, also from another connection", async (ctx) => {
  const id = ctx.key("dup");
  const first = await ctx.client().send(env("count", {}, { id }));
  const again = await ctx.client().send(env("count", {}, { id }));
  eq(result(first.envelope), { runs: 1 });
  eq(result(again.envelope), { runs: 1 });
  eq((await ctx.probe("runs", `count:${id}`))["runs"], 1);
  const other = await ctx.client({ sender: "urn:asap:agent:someone-else" }).send(env("count", {}, { id }));
  eq(result(other.envelope), { runs: 2 });
});

scenario("concurrent retransmission waits for the first", async (ctx) => {
  const id = ctx.key("gate");
  const gate = ctx.key("g");
  const client = ctx.client();
  const first = client.send(env("count", { gate }, { id }));
  await ctx.probe("wait", `entered:${gate}`);
  const second = client.send(env("count", { gate }, { id }));
  await ctx.probe("release", gate);
  eq(result((await first).envelope), { runs: 1 });
  eq(result((await second).envelope), { runs: 1 });
});

// -- envelope validation ----------------------------------------------------------------------

scenario("invalid envelopes are refused with their reason", async (ctx) => {
  const client = ctx.client();
  const now = Date.now();
  const cases: [Parameters<typeof env>[2], string, number][] = [
    [{ sender: "not-a-urn" }, "INVALID_URN", Code.INVALID_ARGUMENT],
    [{ recipient: "urn:asap:agent:" }, "INVALID_URN", Code.INVALID_ARGUMENT],
    [{ id: "x".repeat(129) }, "INVALID_ID", Code.INVALID_ARGUMENT],
    [{ timestamp: timestampFromMs(now - 301_000) }, "STALE_TIMESTAMP", Code.INVALID_ARGUMENT],
    [{ timestamp: timestampFromMs(now + 60_000) }, "FUTURE_TIMESTAMP", Code.INVALID_ARGUMENT],
    [{ asapVersion: "2.0" }, "UNSUPPORTED_VERSION", Code.UNIMPLEMENTED],
  ];
  for (const [init, reason, code] of cases) {
    const envelope = env("echo", {}, init);
    if (init?.recipient !== undefined) envelope.recipient = init.recipient as string;
    const error = await rejects(client.send(envelope), { code, reason });
    if (code === Code.INVALID_ARGUMENT) ok(error.findDetail(BadRequestSchema), `${reason} has a BadRequest`);
  }
  await rejects(client.send({ recipient: AGENT }), { code: Code.INVALID_ARGUMENT, reason: "MISSING_PAYLOAD" });
  await client.send(env("echo", {}, { asapVersion: "1.99" }));
});

// -- auth -----------------------------------------------------------------------------------

scenario("auth: missing, wrong and good tokens", async (ctx) => {
  await rejects(ctx.client({ server: "auth" }).send(env("inspect")), { code: Code.UNAUTHENTICATED, reason: "MISSING_CREDENTIALS" });
  await rejects(ctx.client({ server: "auth", token: "nope" }).send(env("inspect")), { code: Code.UNAUTHENTICATED, reason: "INVALID_TOKEN" });
  const seen = result((await ctx.client({ server: "auth", token: GOOD_TOKEN }).send(env("inspect"))).envelope);
  eq(seen["identity"], TESTER);
  let calls = 0;
  const refreshing = ctx.client({ server: "auth", token: () => (calls++, GOOD_TOKEN) });
  await refreshing.send(env("echo"));
  await refreshing.send(env("echo"));
  eq(calls, 3, "a token function is asked per call, and once for the connection");
});

scenario("auth: the handshake token is a subprotocol entry, never in the URL or echoed", async (ctx) => {
  eq(tokenEntry(GOOD_TOKEN), "asap.token.Z29vZC10b2tlbg");
  const { factory, sockets, offers } = recording();
  const seen = result((await ctx.client({ server: "auth", handshakeToken: GOOD_TOKEN, webSocket: factory }).send(env("inspect"))).envelope);
  eq(seen["identity"], TESTER, "the handshake's token authenticates a call without metadata");
  eq(seen["authorization"], "[redacted]", "handlers never see the token");
  await ctx.client({ server: "auth", token: GOOD_TOKEN, webSocket: factory }).send(env("echo"));
  eq(offers.length, 2);
  for (const offer of offers) {
    ok(!offer.url.includes(GOOD_TOKEN), "no token in the URL");
    eq(offer.protocols.slice(-1), [tokenEntry(GOOD_TOKEN)]);
  }
  for (const ws of sockets) ok(!ws.protocol.startsWith(TOKEN_ENTRY_PREFIX), `selected ${ws.protocol}`);
  await rejects(ctx.client({ server: "auth", handshakeToken: "has space", retry: { maxAttempts: 1 } }).send(env("echo")), {
    code: Code.INVALID_ARGUMENT,
  });
});

scenario("auth: access_token in the URL (deprecated), and call metadata wins over it", async (ctx) => {
  const url = `${ctx.servers.auth.ws}?access_token=${GOOD_TOKEN}`;
  eq(result((await ctx.client({ url }).send(env("inspect"))).envelope)["identity"], TESTER);
  const bad = `${ctx.servers.auth.ws}?access_token=nope`;
  await rejects(ctx.client({ url: bad }).send(env("inspect")), { code: Code.UNAUTHENTICATED, reason: "INVALID_TOKEN" });
  eq(result((await ctx.client({ url: bad, token: GOOD_TOKEN }).send(env("inspect"))).envelope)["identity"], TESTER);
});

scenario("auth: bound sender mismatch, streaming calls need credentials, health needs none", async (ctx) => {
  await rejects(ctx.client({ server: "auth", token: GOOD_TOKEN, sender: "urn:asap:agent:other" }).send(env("echo")), {
    code: Code.PERMISSION_DENIED,
    reason: "SENDER_MISMATCH",
  });
  const anonymous = ctx.client({ server: "auth" });
  await rejects(collect(anonymous.subscribe(env("echo"))), { code: Code.UNAUTHENTICATED });
  await rejects(anonymous.publish([env("echo")]), { code: Code.UNAUTHENTICATED });
  await rejects(anonymous.manifest(), { code: Code.UNAUTHENTICATED });
  eq(await anonymous.checkHealth(), ServingStatus.SERVING);
});

// -- limits ---------------------------------------------------------------------------------

scenario("rate limit is RATE_LIMITED with retry after", async (ctx) => {
  const client = ctx.client({ server: "ratelimited", token: `t-${ctx.key("rl")}`, retry: { maxAttempts: 1 } });
  await client.send(env("echo"));
  await client.send(env("echo"));
  const error = await rejects(client.send(env("echo")), { code: Code.RESOURCE_EXHAUSTED, reason: "RATE_LIMITED" });
  ok((error.retryAfterMs ?? 0) > 0, "retry after is set");
});

scenario("messages over max_message_bytes are MESSAGE_TOO_LARGE both ways", async (ctx) => {
  const client = ctx.client({ server: "small" });
  await rejects(client.send(env("echo", { big: "x".repeat(20_000) })), { code: Code.RESOURCE_EXHAUSTED, reason: "MESSAGE_TOO_LARGE" });
  await rejects(client.send(env("blob", { size: 20_000 })), { code: Code.RESOURCE_EXHAUSTED, reason: "MESSAGE_TOO_LARGE" });
  eq(result((await client.send(env("echo", { small: 1 }))).envelope), { small: 1 });
});

scenario("too many concurrent calls is TOO_MANY_CALLS", async (ctx) => {
  const client = ctx.client({ server: "busy", retry: { maxAttempts: 1 } });
  const key = ctx.key("busy");
  const parked = [client.send(env("park", { key })), client.send(env("park", { key }))];
  while (((await ctx.probe("runs", `park:${key}`))["runs"] as number) < 2) await sleep(5);
  await rejects(client.send(env("echo")), { code: Code.RESOURCE_EXHAUSTED, reason: "TOO_MANY_CALLS" });
  await ctx.probe("release", key);
  await Promise.all(parked);
});

scenario("calls beyond max_concurrent_streams wait for a stream instead of failing", async (ctx) => {
  const client = ctx.client({ server: "slots" });
  const key = ctx.key("slots");
  const calls = [1, 2, 3, 4].map(() => client.send(env("park", { key })));
  await ctx.probe("wait", `entered:${key}`);
  await sleep(100);
  eq((await ctx.probe("runs", `park:${key}`))["runs"], 2, "only two streams run at once");
  await ctx.probe("release", key);
  eq((await Promise.all(calls)).length, 4);
  eq((await ctx.probe("runs", `park:${key}`))["runs"], 4);
});

// -- health and manifest ------------------------------------------------------------------------

scenario("manifest lists the skills and the endpoints", async (ctx) => {
  const manifest = await ctx.client().manifest();
  const skills = manifest.skills.map((s) => s.id);
  for (const skill of ["echo", "inspect", "updates", "raise", "park"]) ok(skills.includes(skill), `no ${skill}`);
  ok(manifest.endpoints.some((e) => e.url === ctx.servers.default.ws), "the bridge URL is listed");
});

scenario("health: serving, and an unknown service is NOT_FOUND", async (ctx) => {
  const client = ctx.client();
  eq(await client.checkHealth(), ServingStatus.SERVING);
  eq(await client.checkHealth("asap.v1.AgentService"), ServingStatus.SERVING);
  await rejects(client.checkHealth("nope"), { code: Code.NOT_FOUND });
});

// -- flow control ---------------------------------------------------------------------------

const FLOOD = 3000;

scenario("a slow consumer blocks its producer; reading on loses nothing", async (ctx) => {
  const client = ctx.client();
  const before = (await ctx.probe("runs", "flood:produced"))["runs"] as number;
  const iterator = client.subscribe(env("flood", { count: FLOOD, size: 1000 }), { timeoutMs: 60_000 })[Symbol.asyncIterator]();
  const received = [await iterator.next()];
  await sleep(700);
  const stalled = ((await ctx.probe("runs", "flood:produced"))["runs"] as number) - before;
  ok(stalled >= 1 && stalled <= FLOOD / 2, `produced ${stalled} while the consumer read one`);
  for (let item = await iterator.next(); !item.done; item = await iterator.next()) received.push(item);
  eq(received.length, FLOOD + 1);
  eq(((await ctx.probe("runs", "flood:produced"))["runs"] as number) - before, FLOOD);
});

scenario("a unary call completes beside a saturated stream", async (ctx) => {
  const client = ctx.client();
  const iterator = client.subscribe(env("flood", { count: FLOOD, size: 1000 }))[Symbol.asyncIterator]();
  await iterator.next();
  await sleep(300);
  const started = Date.now();
  eq(result((await client.send(env("echo", { text: "beside" }), { timeoutMs: 2000 })).envelope), { text: "beside" });
  ok(Date.now() - started < 1000);
  await iterator.return?.(undefined);
});

scenario("150 concurrent calls on one client all succeed", async (ctx) => {
  const client = ctx.client();
  const key = ctx.key("many");
  const calls = Array.from({ length: 150 }, () => client.send(env("park", { key })));
  await ctx.probe("wait", `entered:${key}`);
  await ctx.probe("release", key);
  const answers = await Promise.all(calls);
  eq(answers.length, 150);
  eq((await ctx.probe("runs", `park:${key}`))["runs"], 150);
});

scenario("a client-streaming call waits for credit (small server window)", async (ctx) => {
  const client = ctx.client({ server: "window" });
  const envelopes = Array.from({ length: 60 }, (_, i) => env("echo", { i, pad: "p".repeat(400) }));
  const results = await client.publish(envelopes);
  eq(results.length, 60);
  ok(results.every((r) => r.outcome.case === "envelope"));
  const big = await collect(client.subscribe(env("updates", { count: 200 })));
  eq(big.length, 201);
});

// -- connections ----------------------------------------------------------------------------

/** A WebSocket factory that remembers the sockets it made. */
function recording(): { factory: WebSocketFactory; sockets: WebSocketLike[]; offers: { url: string; protocols: string[] }[] } {
  const sockets: WebSocketLike[] = [];
  const offers: { url: string; protocols: string[] }[] = [];
  const global = (globalThis as { WebSocket?: new (url: string, protocols: string[]) => WebSocketLike }).WebSocket;
  const factory: WebSocketFactory = async (url, protocols) => {
    offers.push({ url, protocols: [...protocols] });
    let ws: WebSocketLike;
    if (global !== undefined) ws = new global(url, protocols);
    else {
      const name = "ws";
      const mod = (await import(name)) as { default: new (url: string, protocols: string[]) => WebSocketLike };
      ws = new mod.default(url, protocols);
    }
    sockets.push(ws);
    return ws;
  };
  return { factory, sockets, offers };
}

scenario("a lost connection fails its calls, and the next call reconnects", async (ctx) => {
  const { factory, sockets } = recording();
  const client = ctx.client({ webSocket: factory, retry: { maxAttempts: 1 } });
  await client.send(env("echo"));
  const key = ctx.key("lost");
  const call = client.send(env("park", { key }));
  await ctx.probe("wait", `entered:${key}`);
  sockets[0]!.close(4000, "test");
  await rejects(call, { code: Code.UNAVAILABLE, reason: "CONNECTION_LOST" });
  eq(result((await client.send(env("echo", { again: 1 }))).envelope), { again: 1 });
  eq(sockets.length, 2);
});

scenario("a refused connection is UNAVAILABLE, retried with backoff", async (ctx) => {
  const url = ctx.servers.default.ws.replace(/:\d+\//, ":1/");
  const client = ctx.client({ url, retry: { maxAttempts: 1 }, reconnect: { initialBackoffMs: 50 } });
  await rejects(client.send(env("echo")), { code: Code.UNAVAILABLE });
  const started = Date.now();
  await rejects(client.send(env("echo")), { code: Code.UNAVAILABLE });
  ok(Date.now() - started >= 20, "the second attempt waited");
  const wrongPath = ctx.client({ url: ctx.servers.default.ws.replace("/asap/v1/ws", "/nope"), retry: { maxAttempts: 1 } });
  const error = await rejects(wrongPath.send(env("echo")), {});
  // Node's ws reports the HTTP status (404: UNIMPLEMENTED); browsers hide it (UNAVAILABLE).
  ok(error.code === Code.UNIMPLEMENTED || error.code === Code.UNAVAILABLE, String(error));
});

scenario("after stream id 2^32-1 the client opens a new connection", async (ctx) => {
  const { factory, sockets } = recording();
  const client = ctx.client({ webSocket: factory, firstStreamId: 2 ** 32 - 2 });
  await client.send(env("echo"));
  await client.send(env("echo"));
  eq(sockets.length, 1);
  await client.send(env("echo"));
  eq(sockets.length, 2);
});

scenario("revision 1 subprotocols still work (no flow control)", async (ctx) => {
  const legacy = ctx.encoding === "json" ? "asap.v1.json" : "asap.v1.proto";
  const client = ctx.client({ subprotocols: [legacy] });
  eq(result((await client.send(env("echo", { legacy: true }))).envelope), { legacy: true });
  eq(client.transport.subprotocol, legacy);
  eq((await collect(client.subscribe(env("updates", { count: 100 })))).length, 101);
});

scenario("the negotiated subprotocol is revision 2 of the chosen encoding", async (ctx) => {
  const client = ctx.client();
  await client.checkHealth();
  eq(client.transport.subprotocol, ctx.encoding === "json" ? "asap.v1.1.json" : "asap.v1.1.proto");
});

export function allScenarios(): Scenario[] {
  return scenarios;
}
