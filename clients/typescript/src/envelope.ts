/**
 * Envelopes as the server accepts them (docs/protocol.md, "Envelopes the server accepts"): a
 * non-empty id of at most 128 characters, sender and recipient agent URNs, a timestamp within the
 * server's window (300 s old, 30 s ahead by default), one payload.
 */
import { create, type JsonObject, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { EnvelopeSchema, type Envelope } from "./gen/asap/v1/envelope_pb.js";
import { TaskRequestSchema } from "./gen/asap/v1/payload_pb.js";

/** The asap_version this client writes (MAJOR.MINOR of the schema it was generated from). */
export const ASAP_VERSION = "1.1";
export const MAX_ID_LENGTH = 128;
export const MAX_URN_LENGTH = 256;
export const AGENT_URN_PATTERN = /^urn:asap:agent:[A-Za-z0-9][A-Za-z0-9._:-]*$/;

export type EnvelopeInit = MessageInitShape<typeof EnvelopeSchema>;

/** Whether `value` is an agent URN the server accepts. */
export function isAgentUrn(value: string): boolean {
  return value.length <= MAX_URN_LENGTH && AGENT_URN_PATTERN.test(value);
}

/** A fresh envelope id: 128 random bits as 32 lowercase hex digits. */
export function newEnvelopeId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Fill what a sender may leave to the library, in place: id, timestamp, asap_version, sender. */
export function fillDefaults(envelope: Envelope, sender?: string): Envelope {
  if (!envelope.id) envelope.id = newEnvelopeId();
  if (envelope.timestamp === undefined) envelope.timestamp = timestampNow();
  if (!envelope.asapVersion) envelope.asapVersion = ASAP_VERSION;
  if (!envelope.sender && sender) envelope.sender = sender;
  return envelope;
}

/** An envelope carrying a TaskRequest for `skill` (id, time and sender are filled when sent). */
export function taskEnvelope(recipient: string, skill: string, input?: JsonObject, init: EnvelopeInit = {}): Envelope {
  const request = create(TaskRequestSchema, { skillId: skill });
  if (input !== undefined) request.input = input;
  return create(EnvelopeSchema, { ...init, recipient, payload: { case: "taskRequest", value: request } });
}

