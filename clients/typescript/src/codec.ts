/**
 * The bridge's subprotocols: each WebSocket message is one asap.v1.Frame, serialized
 * (`asap.v1.1.proto`, binary messages) or as canonical proto3 JSON (`asap.v1.1.json`, text).
 * Revision 1 names (`asap.v1.proto`, `asap.v1.json`) use the same encodings without flow control.
 *
 * The JSON reader follows docs/versioning.md: unknown members are ignored, an Any whose type this
 * schema lacks becomes an asap.v1.OpaqueAny in place (so an error with a newer detail type still
 * arrives whole), MessageFrame.binary (base64) is accepted beside `typed`; enums are written as
 * numbers.
 */
import {
  create,
  fromBinary,
  fromJson,
  toBinary,
  toJson,
  type DescMessage,
  type JsonObject,
  type JsonValue,
  type MessageShape,
} from "@bufbuild/protobuf";
import { anyPack, anyUnpack } from "@bufbuild/protobuf/wkt";
import { FrameSchema, MessageFrameSchema, type Frame, type MessageFrame } from "./gen/asap/v1/bridge_pb.js";
import { OpaqueAnySchema } from "./gen/asap/v1/opaque_pb.js";
import { localErrors } from "./errors.js";
import { registry } from "./registry.js";

export const SUBPROTOCOL_PROTO = "asap.v1.1.proto";
export const SUBPROTOCOL_JSON = "asap.v1.1.json";
export const LEGACY_SUBPROTOCOL_PROTO = "asap.v1.proto";
export const LEGACY_SUBPROTOCOL_JSON = "asap.v1.json";
export const FLOW_CONTROLLED = new Set([SUBPROTOCOL_PROTO, SUBPROTOCOL_JSON]);

/** WebSocket close codes the bridge uses (bridge.proto "Close codes"). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
} as const;

/** A received WebSocket message that is not a Frame; `streamId` set when it can still be blamed on one. */
export class FrameError extends Error {
  override name = "FrameError";
  constructor(
    readonly closeCode: number,
    message: string,
    readonly streamId?: number,
  ) {
    super(message);
  }
}

export interface Codec {
  readonly subprotocol: string;
  readonly flowControlled: boolean;
  readonly text: boolean;
  encode(frame: Frame): string | Uint8Array;
  decode(data: string | Uint8Array): Frame;
  /** A call message as a MessageFrame body, and its serialized size. */
  pack<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): { body: MessageFrame; size: number };
  /** The call message in a received body; throws AsapError (MALFORMED_FRAME). */
  unpack<Desc extends DescMessage>(schema: Desc, body: MessageFrame): MessageShape<Desc>;
}

const encoder = new TextEncoder();

/** The flow-control cost of one WebSocket message: its bytes (UTF-8 for text). */
export function wireSize(data: string | Uint8Array | ArrayBuffer): number {
  if (typeof data !== "string") return data.byteLength;
  // eslint-disable-next-line no-control-regex
  return /^[\x00-\x7f]*$/.test(data) ? data.length : encoder.encode(data).length;
}

function unpackBinary<Desc extends DescMessage>(schema: Desc, bytes: Uint8Array): MessageShape<Desc> {
  try {
    return fromBinary(schema, bytes);
  } catch {
    throw localErrors.malformed(`message does not parse as ${schema.typeName}`);
  }
}

class ProtoCodec implements Codec {
  readonly text = false;
  readonly flowControlled: boolean;
  constructor(readonly subprotocol: string) {
    this.flowControlled = FLOW_CONTROLLED.has(subprotocol);
  }
  encode(frame: Frame): Uint8Array {
    return toBinary(FrameSchema, frame);
  }
  decode(data: string | Uint8Array): Frame {
    if (typeof data === "string") throw new FrameError(CloseCode.PROTOCOL_ERROR, `text message on ${this.subprotocol}`);
    try {
      return fromBinary(FrameSchema, data);
    } catch {
      throw new FrameError(CloseCode.PROTOCOL_ERROR, "frame does not parse", leadingStreamId(data));
    }
  }
  pack<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): { body: MessageFrame; size: number } {
    const bytes = toBinary(schema, message);
    return { body: create(MessageFrameSchema, { body: { case: "binary", value: bytes } }), size: bytes.length };
  }
  unpack<Desc extends DescMessage>(schema: Desc, body: MessageFrame): MessageShape<Desc> {
    if (body.body.case !== "binary") throw localErrors.malformed(`${this.subprotocol} message frames carry the message in 'binary'`);
    return unpackBinary(schema, body.body.value);
  }
}

const OPAQUE_TYPE_URL = `type.googleapis.com/${OpaqueAnySchema.typeName}`;

class JsonCodec implements Codec {
  readonly text = true;
  readonly flowControlled: boolean;
  constructor(readonly subprotocol: string) {
    this.flowControlled = FLOW_CONTROLLED.has(subprotocol);
  }
  encode(frame: Frame): string {
    return JSON.stringify(toJson(FrameSchema, frame, { registry, enumAsInteger: true }));
  }
  decode(data: string | Uint8Array): Frame {
    if (typeof data !== "string") throw new FrameError(CloseCode.PROTOCOL_ERROR, `binary message on ${this.subprotocol}`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(data);
    } catch {
      throw new FrameError(CloseCode.INVALID_PAYLOAD, "text is not valid JSON");
    }
    if (!isObject(parsed)) throw new FrameError(CloseCode.PROTOCOL_ERROR, "frame is not a JSON object");
    try {
      return fromJson(FrameSchema, lenient(FrameSchema, parsed) as JsonValue, { registry, ignoreUnknownFields: true });
    } catch {
      throw new FrameError(CloseCode.PROTOCOL_ERROR, "JSON is not a Frame", jsonStreamId(parsed));
    }
  }
  pack<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): { body: MessageFrame; size: number } {
    const any = anyPack(schema, message);
    return { body: create(MessageFrameSchema, { body: { case: "typed", value: any } }), size: any.value.length };
  }
  unpack<Desc extends DescMessage>(schema: Desc, body: MessageFrame): MessageShape<Desc> {
    if (body.body.case === "binary") return unpackBinary(schema, body.body.value);
    if (body.body.case !== "typed") throw localErrors.malformed(`${this.subprotocol} message frames carry the message in 'typed' or 'binary'`);
    const message = anyUnpack(body.body.value, schema);
    if (message === undefined) {
      throw localErrors.malformed(`expected a ${schema.typeName}, got ${body.body.value.typeUrl || "no type"}`);
    }
    return message;
  }
}

/** The codec of a negotiated subprotocol. */
export function codecFor(subprotocol: string): Codec {
  if (subprotocol === SUBPROTOCOL_PROTO || subprotocol === LEGACY_SUBPROTOCOL_PROTO) return new ProtoCodec(subprotocol);
  if (subprotocol === SUBPROTOCOL_JSON || subprotocol === LEGACY_SUBPROTOCOL_JSON) return new JsonCodec(subprotocol);
  throw new TypeError(`unsupported subprotocol ${JSON.stringify(subprotocol)}`);
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Walk a JSON message by its schema and replace every Any whose type the registry lacks by an
 * asap.v1.OpaqueAny holding the original type URL and members (docs/versioning.md), so that
 * protobuf-es's strict Any reader does not fail the whole frame. Mutates `value`.
 */
function lenient(desc: DescMessage, value: unknown): unknown {
  if (desc.typeName === "google.protobuf.Any") return lenientAny(value);
  if (!isObject(value) || desc.typeName.startsWith("google.protobuf.")) return value;
  for (const field of desc.fields) {
    const key = field.jsonName in value ? field.jsonName : field.name in value ? field.name : undefined;
    if (key === undefined) continue;
    const item = value[key];
    if (field.fieldKind === "message") value[key] = lenient(field.message, item) as JsonValue;
    else if (field.fieldKind === "list" && field.listKind === "message" && Array.isArray(item)) {
      value[key] = item.map((entry) => lenient(field.message, entry) as JsonValue);
    } else if (field.fieldKind === "map" && field.mapKind === "message" && isObject(item)) {
      for (const k of Object.keys(item)) item[k] = lenient(field.message, item[k]) as JsonValue;
    }
  }
  return value;
}

function lenientAny(value: unknown): unknown {
  if (!isObject(value)) return value;
  const url = value["@type"];
  if (typeof url !== "string") return value;
  const name = url.slice(url.lastIndexOf("/") + 1);
  const desc = registry.getMessage(name);
  const members: JsonObject = {};
  for (const [k, v] of Object.entries(value)) if (k !== "@type") members[k] = v;
  if (desc === undefined) return { "@type": OPAQUE_TYPE_URL, typeUrl: url, json: members };
  if (name.startsWith("google.protobuf.")) return value;
  return { "@type": url, ...(lenient(desc, members) as JsonObject) };
}

/** Frame.stream_id from the front of bytes that do not parse as a whole (tag 0x08, a varint). */
function leadingStreamId(data: Uint8Array): number | undefined {
  if (data.length < 2 || data[0] !== 0x08) return undefined;
  let value = 0;
  for (let i = 1, shift = 0; i < Math.min(data.length, 6); i++, shift += 7) {
    const byte = data[i]!;
    value += (byte & 0x7f) * 2 ** shift;
    if (!(byte & 0x80)) return value > 0 && value <= 0xffffffff ? value : undefined;
  }
  return undefined;
}

function jsonStreamId(parsed: JsonObject): number | undefined {
  const raw = parsed["streamId"] ?? parsed["stream_id"];
  const value = typeof raw === "string" && /^\d+$/.test(raw) ? Number(raw) : raw;
  return typeof value === "number" && Number.isInteger(value) && value > 0 && value <= 0xffffffff ? value : undefined;
}
