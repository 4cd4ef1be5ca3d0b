/**
 * Node gRPC interop: @grpc/grpc-js with stubs loaded from proto/ by @grpc/proto-loader calls the
 * Python server's gRPC listener: Send, Subscribe, Stream, an error whose grpc-status-details-bin
 * decodes (with this package's generated google.rpc types) to ErrorInfo, health, and the rule that
 * a unary-request method takes exactly one request message.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { fromBinary, isMessage } from "@bufbuild/protobuf";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { registry } from "../src/index.js";
import { PACKAGE_DIR, ROOT, startServers, type Started } from "./harness.js";
import { AGENT, TESTER } from "./scenarios.js";

// protobufjs spells the well-known types (Struct, Value) in camelCase even with keepCase.
const LOADER: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: false, oneofs: true };
type Stub = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

let started: Started;
let agent: Stub;
let health: Stub;

function load(file: string): grpc.GrpcObject {
  const definition = protoLoader.loadSync(file, { ...LOADER, includeDirs: [path.join(ROOT, "proto"), path.join(PACKAGE_DIR, "proto")] });
  return grpc.loadPackageDefinition(definition);
}

function envelope(skill: string, input: Record<string, string | number>, extra: Record<string, unknown> = {}) {
  const fields = Object.fromEntries(
    Object.entries(input).map(([k, v]) => [k, typeof v === "number" ? { numberValue: v } : { stringValue: v }]),
  );
  const now = Date.now();
  return {
    id: `grpc-${Math.random().toString(16).slice(2)}`,
    asap_version: "1.1",
    timestamp: { seconds: String(Math.floor(now / 1000)), nanos: (now % 1000) * 1e6 },
    sender: TESTER,
    recipient: AGENT,
    task_request: { skill_id: skill, input: { fields } },
    ...extra,
  };
}

before(async () => {
  started = await startServers();
  const target = started.servers.default.grpc!.replace("grpc://", "");
  const asap = load("asap/v1/agent_service.proto") as unknown as { asap: { v1: { AgentService: grpc.ServiceClientConstructor } } };
  agent = new asap.asap.v1.AgentService(target, grpc.credentials.createInsecure()) as unknown as Stub;
  const h = load("grpc/health/v1/health.proto") as unknown as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } };
  health = new h.grpc.health.v1.Health(target, grpc.credentials.createInsecure()) as unknown as Stub;
});

after(async () => {
  agent?.close();
  health?.close();
  await started?.stop();
});

function unary<T>(stub: Stub, name: string, request: unknown): Promise<T> {
  return new Promise((resolve, reject) => stub[name]!(request, (error: Error | null, response: T) => (error ? reject(error) : resolve(response))));
}

describe("grpc-js interop", () => {
  test("Send answers with the task's response", async () => {
    const response = await unary<{ envelope: { correlation_id: string; task_response: { result: { fields: Record<string, { stringValue: string }> } } } }>(
      agent,
      "Send",
      { envelope: envelope("echo", { hello: "grpc" }) },
    );
    assert.equal(response.envelope.task_response.result.fields["hello"]?.stringValue, "grpc");
  });

  test("Subscribe streams the updates, then the answer", async () => {
    const call = agent["Subscribe"]!({ envelope: envelope("updates", { count: 3 }) }) as grpc.ClientReadableStream<{ envelope: { payload: string } }>;
    const kinds: string[] = [];
    for await (const item of call) kinds.push(item.envelope.payload);
    assert.deepEqual(kinds, ["task_update", "task_update", "task_update", "task_response"]);
  });

  test("Stream acks and answers each envelope", async () => {
    const call = agent["Stream"]!() as grpc.ClientDuplexStream<unknown, { item: string; envelope?: { payload: string } }>;
    call.write({ envelope: envelope("echo", { s: 1 }, { requires_ack: true }) });
    call.end();
    const kinds: string[] = [];
    for await (const item of call) kinds.push(item.envelope?.payload ?? item.item);
    assert.deepEqual(kinds, ["message_ack", "task_response", "message_ack"]);
  });

  test("an error carries ErrorInfo in grpc-status-details-bin", async () => {
    const error = (await unary(agent, "Send", { envelope: envelope("raise", { class: "NotFound" }) }).catch((e: unknown) => e)) as grpc.ServiceError;
    assert.equal(error.code, grpc.status.NOT_FOUND);
    const bin = error.metadata.get("grpc-status-details-bin")[0] as Buffer;
    const status = fromBinary(StatusSchema, new Uint8Array(bin));
    assert.equal(status.code, 5);
    const info = anyUnpack(status.details[0]!, registry);
    assert.ok(info && isMessage(info, ErrorInfoSchema));
    assert.deepEqual([info.domain, info.reason, info.metadata["class"]], ["asap", "NOT_FOUND", "NotFound"]);
  });

  test("health Check reports SERVING", async () => {
    const response = await unary<{ status: string }>(health, "Check", { service: "" });
    assert.equal(response.status, "SERVING");
    const missing = (await unary(health, "Check", { service: "nope" }).catch((e: unknown) => e)) as grpc.ServiceError;
    assert.equal(missing.code, grpc.status.NOT_FOUND);
  });

  test("two request messages on a unary method are INVALID_ARGUMENT (MALFORMED_FRAME)", async () => {
    const serialize = (agent as unknown as { constructor: { service: Record<string, grpc.MethodDefinition<unknown, unknown>> } }).constructor.service["Send"]!;
    const call = agent.makeBidiStreamRequest(
      serialize.path,
      serialize.requestSerialize,
      serialize.responseDeserialize,
    );
    const request = { envelope: envelope("echo", {}) };
    call.write(request);
    call.write(request);
    call.end();
    const error = await new Promise<grpc.ServiceError>((resolve) => {
      call.on("error", resolve);
      call.on("data", () => undefined);
    });
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    const status = fromBinary(StatusSchema, new Uint8Array(error.metadata.get("grpc-status-details-bin")[0] as Buffer));
    const info = anyUnpack(status.details[0]!, registry);
    assert.ok(info && isMessage(info, ErrorInfoSchema));
    assert.equal(info.reason, "MALFORMED_FRAME");
  });
});
