/**
 * asap-protocol: a client of the ASAP WebSocket bridge (proto/asap/v1/bridge.proto, revision 2,
 * both encodings, with flow control) for browsers and Node.
 *
 *   const client = new AsapClient({ url: "ws://127.0.0.1:8080/asap/v1/ws", sender: "urn:asap:agent:me" });
 *   for await (const envelope of client.subscribe(taskEnvelope("urn:asap:agent:example", "stream", { steps: 5 }))) { … }
 */
export { AsapClient, Pushable, ServingStatus, type AsapClientOptions, type DuplexStream, type RetryOptions } from "./asap.js";
export { createClient, methodPath, type CallOptions, type Client, type ClientMethod } from "./client.js";
export { AsapError, Code, isAbortError, ASAP_DOMAIN, type Detail } from "./errors.js";
export { Metadata, MetadataError, type MetadataInit, type MetadataValue } from "./metadata.js";
export {
  BridgeTransport,
  backoff,
  tokenEntry,
  TOKEN_ENTRY_PREFIX,
  type BridgeTransportOptions,
  type ReconnectOptions,
  type WebSocketFactory,
} from "./transport.js";
export type { WebSocketLike } from "./connection.js";
export {
  CloseCode,
  SUBPROTOCOL_JSON,
  SUBPROTOCOL_PROTO,
  LEGACY_SUBPROTOCOL_JSON,
  LEGACY_SUBPROTOCOL_PROTO,
} from "./codec.js";
export {
  ASAP_VERSION,
  AGENT_URN_PATTERN,
  fillDefaults,
  isAgentUrn,
  newEnvelopeId,
  taskEnvelope,
  type EnvelopeInit,
} from "./envelope.js";
export { registry } from "./registry.js";
export * from "./gen/asap/v1/agent_service_pb.js";
export * from "./gen/asap/v1/envelope_pb.js";
export * from "./gen/asap/v1/payload_pb.js";
export * from "./gen/asap/v1/task_pb.js";
export * from "./gen/asap/v1/manifest_pb.js";
export * from "./gen/asap/v1/error_pb.js";
export * from "./gen/asap/v1/opaque_pb.js";
export * from "./gen/asap/v1/part_pb.js";
