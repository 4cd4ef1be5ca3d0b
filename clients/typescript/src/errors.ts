/**
 * One error class for every failed call: the gRPC status code, the ErrorInfo reason from ASAP's
 * ErrorReason registry (proto/asap/v1/error.proto), the ErrorInfo metadata, every detail decoded
 * when its type is known (google.rpc.*, asap.v1.MessageAck, asap.v1.OpaqueAny), and the trailers.
 */
import { anyUnpack, type Any } from "@bufbuild/protobuf/wkt";
import type { DescMessage, Message, MessageShape } from "@bufbuild/protobuf";
import { isMessage } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { ErrorReason } from "./gen/asap/v1/error_pb.js";
import type { Status } from "./gen/asap/v1/status_pb.js";
import { ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { Metadata } from "./metadata.js";
import { registry } from "./registry.js";

/** gRPC status codes (google.rpc.Code). */
export enum Code {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

/** The ErrorInfo domain of ASAP's reasons. */
export const ASAP_DOMAIN = "asap";

/** A detail as decoded: a known message, or the Any itself when its type is unknown here. */
export type Detail = Message | Any;

export interface AsapErrorInit {
  reason?: string;
  metadata?: Record<string, string>;
  details?: Any[];
  trailers?: Metadata;
  cause?: unknown;
}

/** Every failed call raises this: check `code` and `reason`, read `details` with `findDetail`. */
export class AsapError extends Error {
  override name = "AsapError";
  /** The gRPC status code. */
  readonly code: Code;
  /** The ErrorInfo reason ("RATE_LIMITED", …); the code's name when the status had no ErrorInfo. */
  readonly reason: string;
  /** The ErrorInfo domain ("asap" for ASAP's reasons). */
  readonly domain: string;
  /** ErrorInfo metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Status.details as received, in order. */
  readonly rawDetails: readonly Any[];
  /** Status.details decoded: known types as messages, unknown ones as the Any (never dropped). */
  readonly details: readonly Detail[];
  /** Trailing metadata of the call (empty for errors raised locally). */
  trailers: Metadata;

  constructor(code: Code, message: string, init: AsapErrorInit = {}) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.code = code;
    this.rawDetails = init.details ?? [];
    this.details = this.rawDetails.map(decodeDetail);
    const info = this.details.find((d) => isMessage(d, ErrorInfoSchema));
    this.reason = init.reason ?? (info && isMessage(info, ErrorInfoSchema) ? info.reason : "") ?? "";
    if (!this.reason) this.reason = Code[code] ?? "UNKNOWN";
    this.domain = info && isMessage(info, ErrorInfoSchema) ? info.domain : ASAP_DOMAIN;
    this.metadata = init.metadata ?? (info && isMessage(info, ErrorInfoSchema) ? { ...info.metadata } : {});
    this.trailers = init.trailers ?? new Metadata();
  }

  /** The reason as ASAP's registry enum; undefined for a reason this schema does not know. */
  get errorReason(): ErrorReason | undefined {
    const value = (ErrorReason as unknown as Record<string, number>)[this.reason];
    return typeof value === "number" ? (value as ErrorReason) : undefined;
  }

  /** The code's name, e.g. "NOT_FOUND". */
  get codeName(): string {
    return Code[this.code] ?? String(this.code);
  }

  /** The first detail of a type, decoded. */
  findDetail<Desc extends DescMessage>(schema: Desc): MessageShape<Desc> | undefined {
    return this.findDetails(schema)[0];
  }

  /** Every detail of a type, decoded. */
  findDetails<Desc extends DescMessage>(schema: Desc): MessageShape<Desc>[] {
    return this.details.filter((d): d is MessageShape<Desc> => isMessage(d, schema));
  }

  /** When to retry (google.rpc.RetryInfo), in milliseconds. */
  get retryAfterMs(): number | undefined {
    const info = this.findDetail(RetryInfoSchema);
    return info?.retryDelay ? durationMs(info.retryDelay) : undefined;
  }

  override toString(): string {
    return `AsapError: [${this.codeName}/${this.reason}] ${this.message}`;
  }

  /** The error a call's CallStatus carries. */
  static fromStatus(status: Status, trailers?: Metadata): AsapError {
    return new AsapError(status.code as Code, status.message, { details: status.details, trailers });
  }

  /** Wrap anything thrown by the caller's code or the platform. */
  static from(reason: unknown, code: Code = Code.UNKNOWN): AsapError {
    if (reason instanceof AsapError) return reason;
    if (isAbortError(reason)) return new AsapError(Code.CANCELLED, "the call was cancelled", { cause: reason });
    const message = reason instanceof Error ? reason.message : String(reason);
    return new AsapError(code, message, { cause: reason });
  }
}

function decodeDetail(any: Any): Detail {
  try {
    return anyUnpack(any, registry) ?? any;
  } catch {
    return any;
  }
}

/** Whether a value is an AbortSignal's reason of the default kind (DOMException AbortError). */
export function isAbortError(reason: unknown): boolean {
  return typeof reason === "object" && reason !== null && (reason as { name?: unknown }).name === "AbortError";
}

/** Errors the client raises itself, with the reasons ASAP's Python client uses. */
export const localErrors = {
  deadline: () => new AsapError(Code.DEADLINE_EXCEEDED, "the deadline passed before the call completed", { reason: "DEADLINE_EXCEEDED" }),
  cancelled: (why = "the call was cancelled", cause?: unknown) => new AsapError(Code.CANCELLED, why, { reason: "CANCELLED", cause }),
  connectionLost: (why: string, closeCode?: number) =>
    new AsapError(Code.UNAVAILABLE, closeCode === undefined ? why : `${why} (close code ${closeCode})`, {
      reason: "CONNECTION_LOST",
      metadata: closeCode === undefined ? {} : { close_code: String(closeCode) },
    }),
  malformed: (why: string) => new AsapError(Code.INVALID_ARGUMENT, why, { reason: "MALFORMED_FRAME" }),
  tooLarge: (why: string) => new AsapError(Code.RESOURCE_EXHAUSTED, why, { reason: "MESSAGE_TOO_LARGE" }),
  shuttingDown: (why: string) => new AsapError(Code.UNAVAILABLE, why, { reason: "SHUTTING_DOWN" }),
  closed: () => new AsapError(Code.FAILED_PRECONDITION, "the client is closed", { reason: "FAILED_PRECONDITION" }),
};
