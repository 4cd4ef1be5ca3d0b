/**
 * One bridge connection: the WebSocket, the Settings exchange, per-stream credit (bridge.proto
 * "Flow control"), stream slots, and each call's inbox. The transport (transport.ts) decides
 * when to open connections; calls (client.ts) read and write through BridgeCall.
 *
 * Flow control, revision 2: a call message (MessageFrame, CallStart or CallStatus with a message)
 * costs the bytes of its whole WebSocket message. A call sends one only while its credit is above
 * zero (one may overdraw), and waits for WindowUpdate otherwise. Received messages sit in the
 * call's inbox until the application takes them; only then is credit granted back, in batches of
 * half a window, and never after the server's CallStatus. So a slow consumer stops its own
 * producer and nothing else. A server message beyond the window fails that call
 * (RESOURCE_EXHAUSTED / FLOW_CONTROL_VIOLATION) and the client sends Cancel.
 */
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  CallStartSchema,
  FrameSchema,
  type Frame,
  type MessageFrame,
} from "./gen/asap/v1/bridge_pb.js";
import { StatusSchema, type Status } from "./gen/asap/v1/status_pb.js";
import { AsapError, Code, localErrors } from "./errors.js";
import { CloseCode, FrameError, wireSize, type Codec } from "./codec.js";
import { Metadata } from "./metadata.js";

export const DEFAULT_WINDOW_BYTES = 65_536;
export const MAX_WINDOW_BYTES = 2 ** 31 - 1;
export const MAX_STREAM_ID = 2 ** 32 - 1;
const DEFAULT_MAX_STREAMS = 100;

/** The WebSocket API both browsers and the `ws` package provide (only what the client uses). */
export interface WebSocketLike {
  readonly protocol: string;
  readonly readyState: number;
  binaryType: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export interface ConnectionOptions {
  /** This side's receive window per stream (announced in Settings). */
  windowBytes: number;
  /** The largest message this side accepts (announced in Settings). */
  maxMessageBytes: number;
  /** The first stream id (tests use it to reach 2^32 - 1). */
  firstStreamId: number;
  /** Called for protocol problems worth a log line. */
  onWarning: (message: string) => void;
}

interface Inbound {
  body: MessageFrame;
  cost: number;
}

/** One call's stream on a connection. */
export class BridgeCall {
  /** Response headers, once received. */
  headers: Metadata | undefined;
  /** Trailers, once the call ended (also on errors). */
  trailers = new Metadata();
  /** The OK status or the error, once ended. */
  status: Status | undefined;
  error: AsapError | undefined;
  onHeader: ((headers: Metadata) => void) | undefined;
  onEnd: (() => void) | undefined;

  /** @internal */ sendCredit: number;
  /** @internal */ receiveWindow: number;
  /** @internal */ ungranted = 0;
  /** @internal */ responseStarted = false;
  /** @internal */ localHalfClosed = false;
  readonly #inbox: Inbound[] = [];
  #wakeReader: (() => void) | undefined;
  #wakeWriter: (() => void) | undefined;

  constructor(
    readonly conn: Connection,
    readonly id: number,
  ) {
    this.sendCredit = conn.peerWindow;
    this.receiveWindow = conn.options.windowBytes;
  }

  get over(): boolean {
    return this.status !== undefined || this.error !== undefined;
  }

  /** The next response body; null once the call ended OK; throws the call's AsapError. */
  async next(): Promise<MessageFrame | null> {
    for (;;) {
      const item = this.#inbox.shift();
      if (item !== undefined) {
        this.conn.consumed(this, item.cost);
        return item.body;
      }
      if (this.error !== undefined) throw this.error;
      if (this.status !== undefined) {
        if (this.status.code === Code.OK) return null;
        this.error = AsapError.fromStatus(this.status, this.trailers);
        throw this.error;
      }
      await new Promise<void>((resolve) => (this.#wakeReader = resolve));
      this.#wakeReader = undefined;
    }
  }

  /** Resolves once a call message may be sent (credit above zero), or the call is over. */
  async waitCredit(): Promise<void> {
    while (!this.over && this.conn.flowControlled && this.sendCredit <= 0) {
      await new Promise<void>((resolve) => (this.#wakeWriter = resolve));
      this.#wakeWriter = undefined;
    }
  }

  /** Send one request message (after waitCredit). Throws if the call is over or half-closed. */
  sendMessage(body: MessageFrame, size: number): void {
    if (this.over) throw this.error ?? localErrors.cancelled("the call has ended");
    if (this.localHalfClosed) throw new AsapError(Code.FAILED_PRECONDITION, "the request stream is closed");
    this.conn.checkOutgoingSize(size);
    this.conn.sendFlowControlled(this, create(FrameSchema, { streamId: this.id, kind: { case: "message", value: body } }));
  }

  /** No more request messages. */
  halfClose(): void {
    if (this.over || this.localHalfClosed) return;
    this.localHalfClosed = true;
    this.conn.send(create(FrameSchema, { streamId: this.id, kind: { case: "halfClose", value: {} } }));
  }

  /** End the call here with `error` and tell the server (Cancel); no-op once over. */
  abandon(error: AsapError): void {
    if (this.over) return;
    // deadlineExceeded tells the server the caller's deadline passed (its own copy may not have yet).
    const deadlineExceeded = error.code === Code.DEADLINE_EXCEEDED;
    this.conn.send(create(FrameSchema, { streamId: this.id, kind: { case: "cancel", value: { reason: error.message.slice(0, 200), deadlineExceeded } } }));
    this.fail(error);
  }

  /** @internal */
  push(body: MessageFrame, cost: number): void {
    this.responseStarted = true;
    this.#inbox.push({ body, cost });
    this.#wake();
  }

  /** @internal */
  end(status: Status, trailers: Metadata): void {
    if (this.over) return;
    this.trailers = trailers;
    this.status = status;
    this.#ended();
  }

  /** @internal */
  fail(error: AsapError): void {
    if (this.over) return;
    if (error.trailers.size === 0 && this.trailers.size) error.trailers = this.trailers;
    this.error = error;
    this.#inbox.length = 0;
    this.#ended();
  }

  /** @internal */
  creditAvailable(): void {
    const wake = this.#wakeWriter;
    this.#wakeWriter = undefined;
    wake?.();
  }

  #ended(): void {
    this.conn.callEnded(this);
    this.#wake();
    this.creditAvailable();
    this.onEnd?.();
  }

  #wake(): void {
    const wake = this.#wakeReader;
    this.#wakeReader = undefined;
    wake?.();
  }
}

/** One WebSocket to the bridge. */
export class Connection {
  readonly codec: Codec;
  readonly flowControlled: boolean;
  peerWindow = DEFAULT_WINDOW_BYTES;
  peerMaxStreams = DEFAULT_MAX_STREAMS;
  peerMaxMessageBytes = 0;
  goawayReason: string | undefined;
  closeCode: number | undefined;
  closed = false;
  /** Resolves once the server's Settings arrived (revision 2) or at once (revision 1). */
  readonly ready: Promise<void>;
  onGone: ((conn: Connection) => void) | undefined;

  readonly #streams = new Map<number, BridgeCall>();
  #nextId: number;
  #reserved = 0;
  readonly #slotWaiters: (() => void)[] = [];
  #readyResolve!: () => void;
  #readyReject!: (error: AsapError) => void;

  constructor(
    readonly ws: WebSocketLike,
    codec: Codec,
    readonly options: ConnectionOptions,
    early: unknown[] = [],
  ) {
    this.codec = codec;
    this.flowControlled = codec.flowControlled;
    this.#nextId = options.firstStreamId;
    this.ready = new Promise<void>((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    this.ready.catch(() => undefined);
    ws.onmessage = (event) => this.#receive(event.data);
    ws.onclose = (event) => this.#closed(event.code, event.reason);
    if (this.flowControlled) {
      this.send(
        create(FrameSchema, {
          kind: {
            case: "settings",
            value: { initialWindowBytes: options.windowBytes, maxMessageBytes: options.maxMessageBytes },
          },
        }),
      );
    } else {
      this.#readyResolve();
    }
    for (const data of early) this.#receive(data);
  }

  /** Whether new calls may start here (open, no GoAway, stream ids left). */
  get accepting(): boolean {
    return !this.closed && this.goawayReason === undefined && this.#nextId <= MAX_STREAM_ID;
  }

  get activeCalls(): number {
    return this.#streams.size;
  }

  /** Wait for a stream slot (Settings.max_concurrent_streams); false if the connection stopped accepting. */
  async acquireSlot(signal?: AbortSignal): Promise<boolean> {
    while (this.accepting && this.#streams.size + this.#reserved >= this.peerMaxStreams) {
      if (signal?.aborted) return false;
      await new Promise<void>((resolve) => {
        this.#slotWaiters.push(resolve);
        signal?.addEventListener("abort", () => resolve(), { once: true });
      });
    }
    if (!this.accepting) return false;
    this.#reserved++;
    return true;
  }

  /** Give back a slot acquired but not used. */
  releaseSlot(): void {
    this.#reserved--;
    this.#wakeSlots(1);
  }

  /** Open a call on an acquired slot: CallStart, carrying the first message and half_close when given. */
  startCall(
    path: string,
    metadata: Metadata,
    timeoutMs: number | undefined,
    first: { body: MessageFrame; size: number } | undefined,
    halfClose: boolean,
  ): BridgeCall {
    if (first !== undefined) this.checkOutgoingSize(first.size);
    this.#reserved--;
    const id = this.#nextId++;
    const call = new BridgeCall(this, id);
    this.#streams.set(id, call);
    const start = create(CallStartSchema, { method: path, metadata: metadata.toEntries(), halfClose });
    if (timeoutMs !== undefined) start.timeout = durationFromMs(Math.max(0, Math.ceil(timeoutMs)));
    if (first !== undefined) start.message = first.body;
    call.localHalfClosed = halfClose;
    const frame = create(FrameSchema, { streamId: id, kind: { case: "start", value: start } });
    if (first !== undefined) this.sendFlowControlled(call, frame);
    else this.send(frame);
    return call;
  }

  /** Throws MESSAGE_TOO_LARGE when the server announced a smaller maximum. */
  checkOutgoingSize(size: number): void {
    const limit = this.peerMaxMessageBytes;
    if (limit > 0 && size > limit) throw localErrors.tooLarge(`message larger than max (${size} vs. ${limit})`);
  }

  /** @internal */
  sendFlowControlled(call: BridgeCall, frame: Frame): void {
    const data = this.codec.encode(frame);
    if (this.flowControlled) call.sendCredit -= wireSize(data);
    this.#write(data);
  }

  /** @internal */
  send(frame: Frame): void {
    this.#write(this.codec.encode(frame));
  }

  #write(data: string | Uint8Array): void {
    if (this.closed || this.ws.readyState !== 1) return;
    this.ws.send(data);
  }

  /** @internal: the application took a message of `cost` bytes: grant credit back in batches. */
  consumed(call: BridgeCall, cost: number): void {
    if (!this.flowControlled || call.over || !cost) return;
    call.ungranted += cost;
    const window = this.options.windowBytes;
    if (call.ungranted < Math.max(1, Math.floor(window / 2)) && call.receiveWindow > 0) return;
    const increment = Math.min(call.ungranted, MAX_WINDOW_BYTES - Math.max(call.receiveWindow, 0));
    call.ungranted = 0;
    if (increment <= 0) return;
    call.receiveWindow += increment;
    this.send(create(FrameSchema, { streamId: call.id, kind: { case: "windowUpdate", value: { incrementBytes: increment } } }));
  }

  /** @internal */
  callEnded(call: BridgeCall): void {
    if (this.#streams.get(call.id) !== call) return;
    this.#streams.delete(call.id);
    this.#wakeSlots(1);
    if (this.goawayReason !== undefined && this.#streams.size === 0) this.close(CloseCode.NORMAL, "");
  }

  close(code: number = CloseCode.NORMAL, reason = ""): void {
    if (this.closed) return;
    try {
      this.ws.close(code, reason);
    } catch {
      this.ws.close();
    }
  }

  #wakeSlots(count?: number): void {
    let woken = 0;
    while (this.#slotWaiters.length && (count === undefined || woken < count)) {
      this.#slotWaiters.shift()!();
      woken++;
    }
  }

  #receive(raw: unknown): void {
    if (this.closed) return;
    const data = typeof raw === "string" ? raw : toBytes(raw);
    const cost = wireSize(data);
    let frame: Frame;
    try {
      frame = this.codec.decode(data);
    } catch (error) {
      const failure = error as FrameError;
      if (failure.streamId !== undefined && this.#streams.has(failure.streamId)) {
        this.#streamViolation(this.#streams.get(failure.streamId)!, localErrors.malformed(failure.message));
      } else if (failure.streamId !== undefined && failure.streamId < this.#nextId) {
        // A call that has already ended here: the server may not know yet; ignore the frame.
      } else {
        this.#violation(failure.closeCode ?? CloseCode.PROTOCOL_ERROR, failure.message);
      }
      return;
    }
    const kind = frame.kind;
    if (frame.streamId === 0) {
      this.#connectionFrame(frame);
      return;
    }
    if (kind.case === undefined) {
      // bridge.proto "Extensions": a frame of a kind from a later revision is ignored.
      if (this.flowControlled) return;
      this.#violation(CloseCode.PROTOCOL_ERROR, "frame without a kind");
      return;
    }
    const call = this.#streams.get(frame.streamId);
    if (call === undefined) {
      if (frame.streamId < this.#nextId) return; // a call that has ended here (cancelled, timed out)
      this.#violation(CloseCode.PROTOCOL_ERROR, "frame for a stream the client never opened");
      return;
    }
    switch (kind.case) {
      case "headers": {
        if (call.responseStarted || call.headers !== undefined) {
          this.#streamViolation(call, localErrors.malformed("headers frame not allowed now"));
          return;
        }
        let headers: Metadata;
        try {
          headers = Metadata.fromEntries(kind.value.metadata);
        } catch (error) {
          this.#streamViolation(call, localErrors.malformed((error as Error).message));
          return;
        }
        call.headers = headers;
        call.onHeader?.(headers);
        return;
      }
      case "message":
        this.#accept(call, kind.value, cost);
        return;
      case "status": {
        const status = kind.value;
        if (status.message !== undefined && !this.#accept(call, status.message, cost)) return;
        let trailers: Metadata;
        try {
          trailers = Metadata.fromEntries(status.trailers);
        } catch (error) {
          this.#streamViolation(call, localErrors.malformed((error as Error).message));
          return;
        }
        call.end(status.status ?? create(StatusSchema), trailers);
        return;
      }
      case "windowUpdate": {
        if (!this.flowControlled) {
          this.#streamViolation(call, localErrors.malformed("window_update on revision 1"));
          return;
        }
        const increment = kind.value.incrementBytes;
        if (increment <= 0 || call.sendCredit + increment > MAX_WINDOW_BYTES) {
          this.#streamViolation(call, localErrors.malformed("bad window_update increment"));
          return;
        }
        const blocked = call.sendCredit <= 0;
        call.sendCredit += increment;
        if (blocked && call.sendCredit > 0) call.creditAvailable();
        return;
      }
      default:
        this.#streamViolation(call, localErrors.malformed(`unexpected ${kind.case} frame`));
    }
  }

  #accept(call: BridgeCall, body: MessageFrame, cost: number): boolean {
    const size = body.body.case === "binary" ? body.body.value.length : body.body.case === "typed" ? body.body.value.value.length : -1;
    if (size < 0) {
      this.#streamViolation(call, localErrors.malformed("message frame without a body"));
      return false;
    }
    if (size > this.options.maxMessageBytes) {
      this.#streamViolation(call, localErrors.tooLarge(`received message larger than max (${size} vs. ${this.options.maxMessageBytes})`));
      return false;
    }
    if (this.flowControlled) {
      if (call.receiveWindow <= 0) {
        this.#streamViolation(
          call,
          new AsapError(Code.RESOURCE_EXHAUSTED, `a ${cost}-byte message arrived with no credit left on the stream`, {
            reason: "FLOW_CONTROL_VIOLATION",
          }),
        );
        return false;
      }
      call.receiveWindow -= cost;
    }
    call.push(body, this.flowControlled ? cost : 0);
    return true;
  }

  #connectionFrame(frame: Frame): void {
    const kind = frame.kind;
    switch (kind.case) {
      case "ping":
        this.send(create(FrameSchema, { kind: { case: "pong", value: { nonce: kind.value.nonce } } }));
        return;
      case "pong":
        return;
      case "goaway":
        this.goawayReason = kind.value.reason || "server shutting down";
        this.#wakeSlots();
        this.#readyReject(localErrors.shuttingDown(`the server is shutting down (${this.goawayReason})`));
        if (this.#streams.size === 0) this.close(CloseCode.NORMAL, "");
        return;
      case "settings": {
        if (!this.flowControlled) break;
        const settings = kind.value;
        if (settings.initialWindowBytes) {
          const window = Math.min(settings.initialWindowBytes, MAX_WINDOW_BYTES);
          const delta = window - this.peerWindow;
          this.peerWindow = window;
          for (const call of this.#streams.values()) {
            const blocked = call.sendCredit <= 0;
            call.sendCredit = Math.min(call.sendCredit + delta, MAX_WINDOW_BYTES);
            if (blocked && call.sendCredit > 0) call.creditAvailable();
          }
        }
        if (settings.maxConcurrentStreams) this.peerMaxStreams = settings.maxConcurrentStreams;
        if (settings.maxMessageBytes) this.peerMaxMessageBytes = settings.maxMessageBytes;
        this.#wakeSlots();
        this.#readyResolve();
        return;
      }
      case "windowUpdate":
        if (this.flowControlled) return; // reserved on stream 0
        break;
      case undefined:
        if (this.flowControlled) return; // a later revision's frame kind
        break;
      default:
        break;
    }
    this.#violation(CloseCode.PROTOCOL_ERROR, `unexpected ${kind.case ?? "empty"} frame on stream 0`);
  }

  #streamViolation(call: BridgeCall, error: AsapError): void {
    this.options.onWarning(`the server broke stream ${call.id}: ${error.message}`);
    call.abandon(error);
  }

  #violation(code: number, reason: string): void {
    this.options.onWarning(`closing the connection (${code}): ${reason}`);
    this.close(code, reason.slice(0, 120));
    this.#closed(code, reason);
  }

  #closed(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeCode = code;
    const lost = localErrors.connectionLost(`the connection closed${reason ? `: ${reason}` : ""}`, code);
    this.#readyReject(code === CloseCode.GOING_AWAY ? localErrors.shuttingDown("the server is shutting down (it closed the connection with 1001)") : lost);
    for (const call of [...this.#streams.values()]) call.fail(localErrors.connectionLost("the connection closed", code));
    this.#streams.clear();
    this.#wakeSlots();
    this.onGone?.(this);
  }
}

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) {
    // ws may deliver fragments as Buffer[]
    const parts = data as Uint8Array[];
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let offset = 0;
    for (const part of parts) {
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }
  throw new FrameError(CloseCode.PROTOCOL_ERROR, "unsupported WebSocket message data");
}
