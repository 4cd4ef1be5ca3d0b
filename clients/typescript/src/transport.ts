/**
 * The bridge transport: connects lazily, keeps one usable connection, opens a new one after a
 * GoAway, a lost connection or when stream ids run out, with exponential backoff (and jitter)
 * after failed attempts, and queues calls beyond the server's max_concurrent_streams.
 */
import { codecFor, LEGACY_SUBPROTOCOL_JSON, LEGACY_SUBPROTOCOL_PROTO, SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO } from "./codec.js";
import { Connection, DEFAULT_WINDOW_BYTES, type WebSocketLike } from "./connection.js";
import { AsapError, Code, localErrors } from "./errors.js";

/** Creates a WebSocket; the default is the global WebSocket (browsers, Node 22+) or the `ws` package. */
export type WebSocketFactory = (
  url: string,
  protocols: string[],
  headers: Record<string, string>,
) => WebSocketLike | Promise<WebSocketLike>;

export interface ReconnectOptions {
  /** Wait before the second attempt in a row (ms). Default 100. */
  initialBackoffMs?: number;
  /** Longest wait between attempts (ms). Default 10,000. */
  maxBackoffMs?: number;
  /** Growth per failed attempt. Default 2. */
  multiplier?: number;
  /** Largest random fraction taken off each wait. Default 0.5. */
  jitter?: number;
}

export interface BridgeTransportOptions {
  /** The bridge URL, ws:// or wss:// (default path /asap/v1/ws). */
  url: string;
  /** "proto" (binary, default) or "json"; revision 2 is offered first, then revision 1. */
  encoding?: "proto" | "json";
  /** Exact subprotocols to offer instead (for example ["asap.v1.json"] to force revision 1). */
  subprotocols?: string[];
  /** Handshake headers (Node's `ws` only: browsers cannot set headers). */
  headers?: Record<string, string>;
  /**
   * A bearer token for the handshake, or a function returning the current one (asked at each
   * connection). Offered as a `Sec-WebSocket-Protocol` entry `asap.token.<base64url(token)>`
   * beside the real subprotocols (browsers cannot set an Authorization header, and a token in the
   * URL ends up in logs); the server reads it, never selects or echoes it. Not offered when
   * `headers` carries an Authorization header. `AsapClient` sets it from its `token`.
   */
  handshakeToken?: string | (() => string | Promise<string>);
  /** Receive window per stream, in bytes. Default 65,536. */
  windowBytes?: number;
  /** Largest message accepted, in bytes. Default 4 MiB. */
  maxMessageBytes?: number;
  /** Handshake timeout (ms). Default 10,000. */
  connectTimeoutMs?: number;
  reconnect?: ReconnectOptions;
  webSocket?: WebSocketFactory;
  /** Where protocol warnings go. Default: console.warn. */
  onWarning?: (message: string) => void;
  /** @internal First stream id of each connection (tests). */
  firstStreamId?: number;
}

const DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** What a refused handshake means (gRPC's HTTP-to-status mapping), when the platform says. */
const HTTP_STATUS_CODES: Record<number, Code> = {
  400: Code.INTERNAL,
  401: Code.UNAUTHENTICATED,
  403: Code.PERMISSION_DENIED,
  404: Code.UNIMPLEMENTED,
  429: Code.UNAVAILABLE,
  502: Code.UNAVAILABLE,
  503: Code.UNAVAILABLE,
  504: Code.UNAVAILABLE,
};

export class BridgeTransport {
  readonly url: string;
  readonly #options: BridgeTransportOptions;
  readonly #offered: string[];
  #current: Connection | undefined;
  #connecting: Promise<Connection> | undefined;
  #failures = 0;
  #closed = false;
  readonly #all = new Set<Connection>();

  constructor(options: BridgeTransportOptions) {
    const url = new URL(options.url);
    if (url.protocol !== "ws:" && url.protocol !== "wss:") {
      throw new TypeError(`a bridge URL starts with ws:// or wss://, got ${options.url}`);
    }
    this.url = options.url;
    this.#options = options;
    this.#offered =
      options.subprotocols ??
      (options.encoding === "json"
        ? [SUBPROTOCOL_JSON, LEGACY_SUBPROTOCOL_JSON]
        : [SUBPROTOCOL_PROTO, LEGACY_SUBPROTOCOL_PROTO]);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The subprotocol of the current connection, if connected. */
  get subprotocol(): string | undefined {
    return this.#current?.codec.subprotocol;
  }

  /** A connection that accepts calls, with a stream slot reserved on it. */
  async connectionWithSlot(signal?: AbortSignal): Promise<Connection> {
    let attempts = 0;
    for (;;) {
      if (this.#closed) throw localErrors.closed();
      const conn = await this.#connection();
      if (await conn.acquireSlot(signal)) return conn;
      if (signal?.aborted) throw localErrors.cancelled("the call was cancelled", signal.reason);
      if (conn.closed && conn.closeCode === 1001) {
        throw localErrors.shuttingDown("the server is shutting down (it closed the connection with 1001)");
      }
      if (++attempts > 3) throw localErrors.connectionLost("no connection accepted the call", conn.closeCode);
    }
  }

  async #connection(): Promise<Connection> {
    const current = this.#current;
    if (current !== undefined && current.accepting) return current;
    if (this.#connecting === undefined) {
      this.#connecting = this.#connect().finally(() => (this.#connecting = undefined));
    }
    return this.#connecting;
  }

  async #connect(): Promise<Connection> {
    const delay = backoff(this.#failures, this.#options.reconnect);
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    if (this.#closed) throw localErrors.closed();
    let ws: WebSocketLike;
    let early: unknown[];
    try {
      [ws, early] = await this.#open();
    } catch (error) {
      this.#failures++;
      throw error;
    }
    const onWarning = this.#options.onWarning ?? ((message: string) => console.warn(`asap: ${this.url}: ${message}`));
    const conn = new Connection(ws, codecFor(ws.protocol), {
      windowBytes: this.#options.windowBytes ?? DEFAULT_WINDOW_BYTES,
      maxMessageBytes: this.#options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      firstStreamId: this.#options.firstStreamId ?? 1,
      onWarning,
    }, early);
    conn.onGone = (gone) => {
      this.#all.delete(gone);
      if (this.#current === gone) this.#current = undefined;
    };
    this.#all.add(conn);
    try {
      await withTimeout(conn.ready, this.#options.connectTimeoutMs ?? 10_000, () => conn.close(1002, "no settings"));
    } catch (error) {
      this.#failures++;
      conn.close();
      throw error instanceof AsapError ? error : localErrors.connectionLost(String(error));
    }
    this.#failures = 0;
    if (this.#closed) {
      conn.close();
      throw localErrors.closed();
    }
    this.#current = conn;
    return conn;
  }

  /** Open a WebSocket; also returns the messages that arrived before the Connection took over. */
  async #open(): Promise<[WebSocketLike, unknown[]]> {
    const factory = this.#options.webSocket ?? defaultWebSocket;
    const headers = this.#options.headers ?? {};
    const token = this.#options.handshakeToken;
    const protocols =
      token === undefined || Object.keys(headers).some((name) => name.toLowerCase() === "authorization")
        ? this.#offered
        : [...this.#offered, tokenEntry(typeof token === "string" ? token : await token())];
    const ws = await factory(this.url, protocols, headers);
    ws.binaryType = "arraybuffer";
    const timeoutMs = this.#options.connectTimeoutMs ?? 10_000;
    const early: unknown[] = [];
    // `ws` may deliver the server's first frames in the same tick as the open event.
    ws.onmessage = (event) => early.push(event.data);
    return new Promise<[WebSocketLike, unknown[]]>((resolve, reject) => {
      let detail = "";
      const timer = setTimeout(() => {
        ws.onclose = null;
        ws.close();
        reject(new AsapError(Code.UNAVAILABLE, `cannot connect to ${this.url}: handshake timed out`, { reason: "UNAVAILABLE" }));
      }, timeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        ws.onerror = null;
        if (!this.#offered.includes(ws.protocol)) {
          ws.close(1002, "no subprotocol");
          reject(new AsapError(Code.UNAVAILABLE, `${this.url} chose no supported subprotocol`));
          return;
        }
        resolve([ws, early]);
      };
      ws.onerror = (event) => {
        const message = (event as { message?: unknown; error?: { message?: unknown } }).message ?? (event as { error?: { message?: unknown } }).error?.message;
        if (typeof message === "string") detail = message;
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        const status = /Unexpected server response: (\d+)/.exec(detail)?.[1];
        const code = status ? (HTTP_STATUS_CODES[Number(status)] ?? Code.UNKNOWN) : Code.UNAVAILABLE;
        const why = status ? `HTTP ${status}` : detail || `closed with ${event.code}`;
        reject(new AsapError(code, `cannot connect to ${this.url}: ${why}`, { reason: Code[code] }));
      };
    });
  }

  /** Close every connection (1000); calls in flight fail with CONNECTION_LOST; later calls fail. */
  close(): void {
    this.#closed = true;
    for (const conn of [...this.#all]) conn.close(1000, "");
    this.#current = undefined;
  }
}

/** What starts a token entry in `Sec-WebSocket-Protocol`. */
export const TOKEN_ENTRY_PREFIX = "asap.token.";
/** The longest token a handshake entry may carry (the server refuses longer ones). */
export const MAX_TOKEN_BYTES = 4096;

/**
 * The `Sec-WebSocket-Protocol` entry that carries `token`: `asap.token.` and the unpadded
 * base64url of its bytes. A token is 1 to 4,096 visible ASCII characters (INVALID_ARGUMENT otherwise).
 */
export function tokenEntry(token: string): string {
  if (token.length === 0 || token.length > MAX_TOKEN_BYTES || !/^[\x21-\x7e]+$/.test(token)) {
    throw new AsapError(Code.INVALID_ARGUMENT, "a handshake token must be 1 to 4096 visible ASCII characters", {
      reason: "INVALID_ARGUMENT",
    });
  }
  const base64 = btoa(token); // visible ASCII: one byte per character
  return TOKEN_ENTRY_PREFIX + base64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The wait before an attempt after `failures` failed ones in a row (ms). */
export function backoff(failures: number, options: ReconnectOptions = {}): number {
  if (failures <= 0) return 0;
  const initial = options.initialBackoffMs ?? 100;
  const max = options.maxBackoffMs ?? 10_000;
  const multiplier = options.multiplier ?? 2;
  const jitter = options.jitter ?? 0.5;
  const bound = Math.min(max, initial * multiplier ** (failures - 1));
  return bound * (1 - jitter * Math.random());
}

async function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => void): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new AsapError(Code.UNAVAILABLE, "the server sent no Settings in time"));
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const defaultWebSocket: WebSocketFactory = async (url, protocols, headers) => {
  const global = (globalThis as { WebSocket?: new (url: string, protocols: string[]) => WebSocketLike }).WebSocket;
  if (Object.keys(headers).length === 0 && global !== undefined) return new global(url, protocols);
  // Node without a global WebSocket (before 22), or headers wanted: the `ws` package.
  const name = "ws";
  const mod = (await import(/* @vite-ignore */ name)) as { default: new (url: string, protocols: string[], options: object) => WebSocketLike };
  return new mod.default(url, protocols, { headers });
};
