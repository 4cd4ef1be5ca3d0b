/**
 * Call metadata (request headers, response headers, trailers) under gRPC's rules, as the bridge
 * carries it (bridge.proto `MetadataEntry`): lowercase keys that may repeat; keys ending in `-bin`
 * carry binary values (Uint8Array), all others printable-ASCII text.
 */
import { create } from "@bufbuild/protobuf";
import { MetadataEntrySchema, type MetadataEntry } from "./gen/asap/v1/bridge_pb.js";

/** One metadata value: text, or bytes for `-bin` keys. */
export type MetadataValue = string | Uint8Array;

/** What call options accept as metadata: a record (arrays repeat a key), pairs, or a Metadata. */
export type MetadataInit =
  | Metadata
  | Iterable<readonly [string, MetadataValue]>
  | Record<string, MetadataValue | readonly MetadataValue[]>;

const KEY = /^[0-9a-z_.-]+$/;
const TEXT = /^[\x20-\x7e]*$/;
/** Keys gRPC reserves for itself; refused in request metadata, as the Python client does. */
const RESERVED = /^grpc-/;

/** Thrown for metadata that breaks the rules, before anything is sent (a programming error). */
export class MetadataError extends TypeError {
  override name = "MetadataError";
}

/** Ordered, repeatable metadata; read-only once received. */
export class Metadata implements Iterable<[string, MetadataValue]> {
  readonly #entries: [string, MetadataValue][];

  constructor(init?: MetadataInit) {
    this.#entries = [];
    if (init === undefined) return;
    if (init instanceof Metadata) {
      this.#entries.push(...init.#entries);
    } else if (Symbol.iterator in (init as object)) {
      for (const [key, value] of init as Iterable<readonly [string, MetadataValue]>) this.append(key, value);
    } else {
      for (const [key, value] of Object.entries(init as Record<string, MetadataValue | readonly MetadataValue[]>)) {
        if (Array.isArray(value)) for (const item of value as MetadataValue[]) this.append(key, item);
        else this.append(key, value as MetadataValue);
      }
    }
  }

  /** Add a value; throws MetadataError when key or value break gRPC's rules. */
  append(key: string, value: MetadataValue): void {
    checkEntry(key, value);
    this.#entries.push([key, value]);
  }

  /** The first value of `key`, if any. */
  get(key: string): MetadataValue | undefined {
    return this.#entries.find(([k]) => k === key)?.[1];
  }

  /** Every value of `key`, in order. */
  getAll(key: string): MetadataValue[] {
    return this.#entries.filter(([k]) => k === key).map(([, v]) => v);
  }

  has(key: string): boolean {
    return this.#entries.some(([k]) => k === key);
  }

  get size(): number {
    return this.#entries.length;
  }

  [Symbol.iterator](): Iterator<[string, MetadataValue]> {
    return this.#entries.map(([k, v]) => [k, v] as [string, MetadataValue])[Symbol.iterator]();
  }

  /** Text entries as a record (last value wins), for logs and tests. */
  toJSON(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [k, v] of this.#entries) out[k] = typeof v === "string" ? v : `<${v.length} bytes>`;
    return out;
  }

  /** @internal */
  static fromEntries(entries: readonly MetadataEntry[]): Metadata {
    const metadata = new Metadata();
    for (const entry of entries) {
      const { key, value } = entry;
      if (!KEY.test(key)) throw new MetadataError("metadata keys must be lowercase [0-9a-z_.-]");
      if (key.endsWith("-bin")) {
        if (value.case === "text") throw new MetadataError(`metadata key ${key} needs a binary value`);
        metadata.#entries.push([key, value.case === "binary" ? value.value : new Uint8Array()]);
      } else {
        if (value.case === "binary") throw new MetadataError(`metadata key ${key} needs a text value`);
        const text = value.case === "text" ? value.value : "";
        if (!TEXT.test(text)) throw new MetadataError(`metadata key ${key} needs a printable ASCII text value`);
        metadata.#entries.push([key, text]);
      }
    }
    return metadata;
  }

  /** @internal */
  toEntries(): MetadataEntry[] {
    return this.#entries.map(([key, value]) =>
      create(MetadataEntrySchema, {
        key,
        value: typeof value === "string" ? { case: "text", value } : { case: "binary", value },
      }),
    );
  }
}

function checkEntry(key: string, value: MetadataValue): void {
  if (typeof key !== "string" || !KEY.test(key)) {
    throw new MetadataError(`metadata key ${JSON.stringify(key)}: keys are lowercase [0-9a-z_.-]`);
  }
  if (RESERVED.test(key)) throw new MetadataError(`metadata key ${key} is reserved for the transport`);
  const binaryKey = key.endsWith("-bin");
  if (binaryKey !== value instanceof Uint8Array) {
    throw new MetadataError(`metadata key ${key}: '-bin' keys take Uint8Array values and all others strings`);
  }
  if (typeof value === "string" && !TEXT.test(value)) {
    throw new MetadataError(`metadata key ${key}: text values are printable ASCII`);
  }
}
