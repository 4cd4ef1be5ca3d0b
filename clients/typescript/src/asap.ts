/**
 * AsapClient: the AgentService calls an agent developer makes, with envelopes completed (id,
 * timestamp, asap_version, sender), unary calls retried on UNAVAILABLE (safe: the server
 * deduplicates envelope ids), a default deadline for unary calls, and the token sent as call
 * metadata and, for the handshake, as an `asap.token.` subprotocol entry (never in the URL).
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { AgentService, type DeliveryResult, type SendResponse, type StreamResponse } from "./gen/asap/v1/agent_service_pb.js";
import { EnvelopeSchema, type Envelope } from "./gen/asap/v1/envelope_pb.js";
import type { Manifest } from "./gen/asap/v1/manifest_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { createClient, type CallOptions, type Client } from "./client.js";
import { AsapError, Code } from "./errors.js";
import { fillDefaults, type EnvelopeInit } from "./envelope.js";
import { BridgeTransport, type BridgeTransportOptions } from "./transport.js";

export interface RetryOptions {
  /** Attempts in all, the first included; 1 disables retries. Default 4. */
  maxAttempts?: number;
  /** Upper bound of the first delay (ms). Default 50. */
  initialBackoffMs?: number;
  /** Upper bound of any delay (ms). Default 2,000. */
  maxBackoffMs?: number;
}

export interface AsapClientOptions extends BridgeTransportOptions {
  /** The sender URN written into envelopes that have none. */
  sender?: string;
  /**
   * A bearer token, or a function returning the current one (called per call, so it may refresh).
   * Sent as each call's `authorization` metadata, and in the handshake (`handshakeToken`, unless
   * that is given) for servers that authenticate connections.
   */
  token?: string | (() => string | Promise<string>);
  /** Default deadline of unary calls (ms); streams have none by default. Default 30,000; null: none. */
  timeoutMs?: number | null;
  retry?: RetryOptions;
}

/** A duplex Stream call: send envelopes whenever you like, iterate what the agent pushes. */
export interface DuplexStream extends AsyncIterable<StreamResponse> {
  /** Queue an envelope (completed with defaults); resolves once it is handed to the call. */
  send(envelope: Envelope | EnvelopeInit): void;
  /** No more envelopes; the stream ends once the agent has answered everything. */
  close(): void;
}

export class AsapClient {
  readonly transport: BridgeTransport;
  /** The raw AgentService client (no defaults filled, no retries). */
  readonly service: Client<typeof AgentService>;
  /** The standard health service (grpc.health.v1.Health/Check; no token needed). */
  readonly health: Client<typeof Health>;
  readonly sender: string | undefined;
  readonly #timeoutMs: number | undefined;
  readonly #retry: Required<RetryOptions>;

  constructor(options: AsapClientOptions) {
    this.transport = new BridgeTransport({ ...options, handshakeToken: options.handshakeToken ?? options.token });
    this.sender = options.sender;
    this.#timeoutMs = options.timeoutMs === null ? undefined : (options.timeoutMs ?? 30_000);
    this.#retry = { maxAttempts: 4, initialBackoffMs: 50, maxBackoffMs: 2_000, ...options.retry };
    const token = options.token;
    const headers = token === undefined ? undefined : async () => ({ authorization: `Bearer ${typeof token === "string" ? token : await token()}` });
    this.service = createClient(AgentService, this.transport, { headers });
    this.health = createClient(Health, this.transport);
  }

  #envelope(init: Envelope | EnvelopeInit): Envelope {
    const envelope = create(EnvelopeSchema, init as MessageInitShape<typeof EnvelopeSchema>);
    return fillDefaults(envelope, this.sender);
  }

  #unaryOptions(options: CallOptions): CallOptions {
    return options.timeoutMs === undefined && this.#timeoutMs !== undefined ? { ...options, timeoutMs: this.#timeoutMs } : options;
  }

  async #retrying<T>(options: CallOptions, attempt: (options: CallOptions) => Promise<T>): Promise<T> {
    const merged = this.#unaryOptions(options);
    const deadline = merged.timeoutMs === undefined ? undefined : Date.now() + merged.timeoutMs;
    for (let n = 1; ; n++) {
      const remaining = deadline === undefined ? undefined : Math.max(0, deadline - Date.now());
      try {
        return await attempt({ ...merged, timeoutMs: remaining });
      } catch (error) {
        if (!(error instanceof AsapError) || !retryable(error) || n >= this.#retry.maxAttempts || merged.signal?.aborted || this.transport.closed) throw error;
        const bound = Math.min(this.#retry.maxBackoffMs, this.#retry.initialBackoffMs * 2 ** (n - 1));
        const delay = Math.random() * bound;
        if (deadline !== undefined && Date.now() + delay >= deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  /** Send one envelope; returns the answer (and the PROCESSED ack when requires_ack). */
  async send(envelope: Envelope | EnvelopeInit, options: CallOptions = {}): Promise<SendResponse> {
    const filled = this.#envelope(envelope);
    return this.#retrying(options, (opts) => this.service.send({ envelope: filled }, opts));
  }

  /** Send many envelopes in one call; one result per envelope, in order. */
  async sendBatch(envelopes: Iterable<Envelope | EnvelopeInit>, options: CallOptions = {}): Promise<DeliveryResult[]> {
    const filled = [...envelopes].map((e) => this.#envelope(e));
    const response = await this.#retrying(options, (opts) => this.service.sendBatch({ envelopes: filled }, opts));
    return response.results;
  }

  /** Deliver an envelope and stream everything the agent produces for it (updates, then the answer). */
  async *subscribe(envelope: Envelope | EnvelopeInit, options: CallOptions = {}): AsyncGenerator<Envelope> {
    const filled = this.#envelope(envelope);
    for await (const item of this.service.subscribe({ target: { case: "envelope", value: filled } }, options)) {
      if (item.envelope !== undefined) yield item.envelope;
    }
  }

  /** Stream envelopes to the agent (client streaming); one result per envelope, in order. */
  async publish(envelopes: Iterable<Envelope | EnvelopeInit> | AsyncIterable<Envelope | EnvelopeInit>, options: CallOptions = {}): Promise<DeliveryResult[]> {
    const self = this;
    async function* requests() {
      for await (const envelope of envelopes) yield { envelope: self.#envelope(envelope) };
    }
    const response = await this.service.publish(requests(), options);
    return response.results;
  }

  /** Open a duplex Stream: `send()` envelopes, iterate acks, updates, answers and EnvelopeErrors. */
  stream(options: CallOptions = {}): DuplexStream {
    const queue = new Pushable<{ envelope: Envelope }>();
    const responses = this.service.stream(queue, options);
    return {
      send: (envelope) => queue.push({ envelope: this.#envelope(envelope) }),
      close: () => queue.end(),
      [Symbol.asyncIterator]: () => responses[Symbol.asyncIterator](),
    };
  }

  /** The agent's manifest. */
  async manifest(options: CallOptions = {}): Promise<Manifest> {
    const response = await this.#retrying(options, (opts) => this.service.getManifest({}, opts));
    if (response.manifest === undefined) throw new AsapError(Code.INTERNAL, "the response carries no manifest");
    return response.manifest;
  }

  /** The standard health check of `service` ("" is the whole server). */
  async checkHealth(service = "", options: CallOptions = {}): Promise<HealthCheckResponse_ServingStatus> {
    const response = await this.health.check({ service }, this.#unaryOptions(options));
    return response.status;
  }

  /** Close the connection; calls in flight fail with UNAVAILABLE (CONNECTION_LOST). */
  close(): void {
    this.transport.close();
  }
}

function retryable(error: AsapError): boolean {
  return error.code === Code.UNAVAILABLE && error.reason !== "SHUTTING_DOWN";
}

/** An async iterable fed by push(); end() finishes it. */
export class Pushable<T> implements AsyncIterable<T> {
  readonly #items: T[] = [];
  #ended = false;
  #wake: (() => void) | undefined;

  push(item: T): void {
    if (this.#ended) throw new AsapError(Code.FAILED_PRECONDITION, "the stream was closed for sending");
    this.#items.push(item);
    this.#wake?.();
  }

  end(): void {
    this.#ended = true;
    this.#wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }
}

export { HealthCheckResponse_ServingStatus as ServingStatus };
