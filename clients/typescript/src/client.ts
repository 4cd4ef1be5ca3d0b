/**
 * Typed clients for any service in the schema, Connect-ES style: `createClient(AgentService,
 * transport)` gives one method per RPC. Unary and client-streaming methods return a Promise;
 * server-streaming and bidi methods return an AsyncIterable (the call starts when iteration
 * starts; leaving the loop early cancels it). Requests of client-streaming and bidi methods are
 * any (async) iterable, pulled only as the server's flow-control credit allows.
 *
 * Every method takes CallOptions: `timeoutMs` (sent as CallStart.timeout and enforced here too),
 * `signal` (an AbortSignal: aborting cancels the call on the server), `headers` (request
 * metadata), `onHeader` and `onTrailer`.
 */
import { create, isMessage, type DescMessage, type DescMethod, type DescService, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import type { BridgeCall, Connection } from "./connection.js";
import { AsapError, localErrors } from "./errors.js";
import { Metadata, type MetadataInit } from "./metadata.js";
import type { BridgeTransport } from "./transport.js";

export interface CallOptions {
  /** Cancel the call: the server cancels its handler; the call fails with CANCELLED. */
  signal?: AbortSignal;
  /** The deadline, from now; past it the call fails with DEADLINE_EXCEEDED (both sides enforce it). */
  timeoutMs?: number;
  /** Request metadata. */
  headers?: MetadataInit;
  /** Called with the response headers, if the server sends any. */
  onHeader?(headers: Metadata): void;
  /** Called with the trailers when the call ends (also when it fails). */
  onTrailer?(trailers: Metadata): void;
}

type Input<M> = M extends { input: infer I extends DescMessage } ? I : never;
type Output<M> = M extends { output: infer O extends DescMessage } ? O : never;
type Requests<I extends DescMessage> = AsyncIterable<MessageInitShape<I>> | Iterable<MessageInitShape<I>>;

/** One method of a client, by method kind. */
export type ClientMethod<M> = M extends { methodKind: "unary" }
  ? (request: MessageInitShape<Input<M>>, options?: CallOptions) => Promise<MessageShape<Output<M>>>
  : M extends { methodKind: "server_streaming" }
    ? (request: MessageInitShape<Input<M>>, options?: CallOptions) => AsyncIterable<MessageShape<Output<M>>>
    : M extends { methodKind: "client_streaming" }
      ? (requests: Requests<Input<M>>, options?: CallOptions) => Promise<MessageShape<Output<M>>>
      : M extends { methodKind: "bidi_streaming" }
        ? (requests: Requests<Input<M>>, options?: CallOptions) => AsyncIterable<MessageShape<Output<M>>>
        : never;

/** A typed client of a generated service (its methods in lowerCamelCase, as protobuf-es names them). */
export type Client<S> = S extends GenService<infer Methods extends GenServiceMethods>
  ? { [K in keyof Methods]: ClientMethod<Methods[K]> }
  : never;

/** Per-client defaults merged into every call's options. */
export interface ClientDefaults {
  /** Metadata added to every call (after the call's own; a call's `authorization` wins). */
  headers?: () => MetadataInit | undefined | Promise<MetadataInit | undefined>;
}

/** Build a typed client of `service` over the bridge. */
export function createClient<S extends DescService>(service: S, transport: BridgeTransport, defaults: ClientDefaults = {}): Client<S> {
  const client: Record<string, unknown> = {};
  for (const method of service.methods) {
    client[method.localName] = methodFunction(method, transport, defaults);
  }
  return client as Client<S>;
}

function methodFunction(method: DescMethod, transport: BridgeTransport, defaults: ClientDefaults): unknown {
  switch (method.methodKind) {
    case "unary":
      return (request: unknown, options: CallOptions = {}) => unary(transport, method, request, options, defaults);
    case "server_streaming":
      return (request: unknown, options: CallOptions = {}) => responses(transport, method, { single: request }, options, defaults);
    case "client_streaming":
      return async (requests: Requests<DescMessage>, options: CallOptions = {}) =>
        only(responses(transport, method, { stream: requests }, options, defaults));
    case "bidi_streaming":
      return (requests: Requests<DescMessage>, options: CallOptions = {}) =>
        responses(transport, method, { stream: requests }, options, defaults);
  }
}

/** The path of a method on the wire, e.g. /asap.v1.AgentService/Send. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

async function unary(transport: BridgeTransport, method: DescMethod, request: unknown, options: CallOptions, defaults: ClientDefaults): Promise<unknown> {
  return only(responses(transport, method, { single: request }, options, defaults));
}

async function only<T>(iterable: AsyncIterable<T>): Promise<T> {
  let first: { value: T } | undefined;
  for await (const value of iterable) {
    if (first !== undefined) throw localErrors.malformed("more than one response to a unary-response call");
    first = { value };
  }
  if (first === undefined) throw new AsapError(13, "the server ended the call without a response", { reason: "INTERNAL" });
  return first.value;
}

/** A call's deadline and cancellation, merged into one abort with the AsapError that ended it. */
class CallScope {
  error: AsapError | undefined;
  readonly #listeners: ((error: AsapError) => void)[] = [];
  readonly #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #deadline: number | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = () => this.abort(localErrors.cancelled("the call was cancelled", this.#signal?.reason));
  readonly controller = new AbortController();

  constructor(options: CallOptions) {
    this.#signal = options.signal;
    if (options.timeoutMs !== undefined) {
      if (!(options.timeoutMs >= 0) || !Number.isFinite(options.timeoutMs)) throw new RangeError("timeoutMs must be 0 or more and finite");
      this.#deadline = Date.now() + options.timeoutMs;
      this.#timer = setTimeout(() => this.abort(localErrors.deadline()), options.timeoutMs);
    }
    if (this.#signal?.aborted) this.#onAbort();
    else this.#signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  remainingMs(): number | undefined {
    return this.#deadline === undefined ? undefined : Math.max(0, this.#deadline - Date.now());
  }

  onAbort(listener: (error: AsapError) => void): void {
    if (this.error !== undefined) listener(this.error);
    else this.#listeners.push(listener);
  }

  abort(error: AsapError): void {
    if (this.error !== undefined) return;
    this.error = error;
    this.controller.abort(error);
    for (const listener of this.#listeners.splice(0)) listener(error);
  }

  /** `promise`, or the scope's error once it aborts. */
  race<T>(promise: Promise<T>): Promise<T> {
    if (this.error !== undefined) return Promise.reject(this.error);
    return new Promise<T>((resolve, reject) => {
      this.onAbort(reject);
      promise.then(resolve, reject);
    });
  }

  dispose(): void {
    clearTimeout(this.#timer);
    this.#signal?.removeEventListener("abort", this.#onAbort);
  }
}

async function* responses(
  transport: BridgeTransport,
  method: DescMethod,
  requests: { single: unknown } | { stream: Requests<DescMessage> },
  options: CallOptions,
  defaults: ClientDefaults,
): AsyncGenerator<unknown> {
  const scope = new CallScope(options);
  let call: BridgeCall | undefined;
  try {
    const metadata = new Metadata(options.headers);
    const extra = await scope.race(Promise.resolve(defaults.headers?.()));
    if (extra !== undefined) {
      for (const [key, value] of new Metadata(extra)) {
        if (!(key === "authorization" && metadata.has(key))) metadata.append(key, value);
      }
    }
    const conn: Connection = await scope.race(transport.connectionWithSlot(scope.controller.signal));
    let first: ReturnType<Connection["codec"]["pack"]> | undefined;
    try {
      if ("single" in requests) first = conn.codec.pack(method.input, toMessage(method.input, requests.single));
      call = conn.startCall(methodPath(method), metadata, scope.remainingMs(), first, "single" in requests);
    } catch (error) {
      conn.releaseSlot();
      throw error;
    }
    const started = call;
    started.onHeader = options.onHeader;
    scope.onAbort((error) => started.abandon(error));
    if ("stream" in requests) void pump(started, conn, method.input, requests.stream);
    for (;;) {
      const body = await started.next();
      if (body === null) break;
      yield conn.codec.unpack(method.output, body);
    }
    options.onTrailer?.(started.trailers);
  } catch (error) {
    // Programming errors (bad metadata, a bad timeout) are thrown as they are.
    if (call === undefined && (error instanceof TypeError || error instanceof RangeError)) throw error;
    const failure = scope.error ?? AsapError.from(error);
    if (call !== undefined && failure.trailers.size === 0) failure.trailers = call.trailers;
    if (call !== undefined) options.onTrailer?.(failure.trailers);
    call?.abandon(failure);
    throw failure;
  } finally {
    // Left early (break, return, an exception in the loop body): the server stops too.
    call?.abandon(localErrors.cancelled("the caller stopped reading the responses"));
    scope.dispose();
  }
}

function toMessage(schema: DescMessage, init: unknown): MessageShape<DescMessage> {
  return isMessage(init, schema) ? init : create(schema, init as MessageInitShape<DescMessage>);
}

/** Write the caller's requests as credit allows, then HalfClose; a failing iterator cancels the call. */
async function pump(call: BridgeCall, conn: Connection, schema: DescMessage, requests: Requests<DescMessage>): Promise<void> {
  const iterator = Symbol.asyncIterator in requests
    ? (requests as AsyncIterable<unknown>)[Symbol.asyncIterator]()
    : (requests as Iterable<unknown>)[Symbol.iterator]();
  call.onEnd = () => void Promise.resolve(iterator.return?.()).catch(() => undefined);
  try {
    for (;;) {
      await call.waitCredit();
      if (call.over) return;
      const item = await iterator.next();
      if (item.done) break;
      if (call.over) return;
      const { body, size } = conn.codec.pack(schema, toMessage(schema, item.value));
      call.sendMessage(body, size);
    }
    call.halfClose();
  } catch (error) {
    call.abandon(error instanceof AsapError ? error : localErrors.cancelled("the request iterator failed", error));
  }
}
