/** A few assertions that run in Node and in browsers alike (no node:assert in the page). */
import { AsapError } from "../src/index.js";

export class AssertionError extends Error {
  override name = "AssertionError";
}

export function ok(value: unknown, message = "expected a truthy value"): asserts value {
  if (!value) throw new AssertionError(message);
}

/** JSON with sorted object keys (so key order never matters), bigints and bytes spelled out. */
function show(value: unknown): string {
  return JSON.stringify(value, (_, v) => {
    if (typeof v === "bigint") return `${v}n`;
    if (v instanceof Uint8Array) return `bytes:${Array.from(v).join(",")}`;
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, (v as Record<string, unknown>)[k]]));
    }
    return v;
  });
}

export function eq(actual: unknown, expected: unknown, message = ""): void {
  const a = show(actual);
  const e = show(expected);
  if (a !== e) throw new AssertionError(`${message ? message + ": " : ""}expected ${e}, got ${a}`);
}

/** Await `promise` (or call `fn`) and expect an AsapError with the given code and reason. */
export async function rejects(
  work: Promise<unknown> | (() => Promise<unknown>),
  expected: { code?: number; reason?: string; message?: RegExp },
): Promise<AsapError> {
  let error: unknown;
  try {
    await (typeof work === "function" ? work() : work);
  } catch (caught) {
    error = caught;
  }
  if (!(error instanceof AsapError)) throw new AssertionError(`expected an AsapError, got ${error === undefined ? "success" : String(error)}`);
  if (expected.code !== undefined && error.code !== expected.code) throw new AssertionError(`expected code ${expected.code}, got ${error.code} (${error})`);
  if (expected.reason !== undefined && error.reason !== expected.reason) throw new AssertionError(`expected reason ${expected.reason}, got ${error.reason} (${error})`);
  if (expected.message !== undefined && !expected.message.test(error.message)) throw new AssertionError(`message ${error.message} does not match ${expected.message}`);
  return error;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
