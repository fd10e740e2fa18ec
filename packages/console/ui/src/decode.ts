/**
 * Tiny structural decoders for JSON from the console server. The server is our own process, but
 * what it relays comes from Toteboxes and the aggregator: every field is checked for type, count
 * and length before the UI touches it, and a mismatch is a UI_ERR_BAD_RESPONSE naming the path.
 */
import { clip, UiError } from "./errors.ts";

export type Decoder<T> = (v: unknown, path: string) => T;

/** Default bound on any one string (names, reasons, cells). */
export const MAX_TEXT = 64 * 1024;

function bad(path: string, what: string): UiError {
  return new UiError("UI_ERR_BAD_RESPONSE", clip(`${path}: ${what}`, 200));
}

export function str(max = MAX_TEXT): Decoder<string> {
  return (v, path) => {
    if (typeof v !== "string") throw bad(path, "expected a string");
    if (v.length > max) throw bad(path, `string longer than ${max}`);
    return v;
  };
}

export const num: Decoder<number> = (v, path) => {
  if (typeof v !== "number" || !Number.isFinite(v)) throw bad(path, "expected a finite number");
  return v;
};

export const int: Decoder<number> = (v, path) => {
  if (typeof v !== "number" || !Number.isSafeInteger(v)) throw bad(path, "expected an integer");
  return v;
};

export const bool: Decoder<boolean> = (v, path) => {
  if (typeof v !== "boolean") throw bad(path, "expected a boolean");
  return v;
};

export function literal<const T extends string>(values: readonly T[]): Decoder<T> {
  return (v, path) => {
    if (typeof v !== "string" || !(values as readonly string[]).includes(v)) {
      throw bad(path, `expected one of ${values.join(", ")}`);
    }
    return v as T;
  };
}

export function nullable<T>(d: Decoder<T>): Decoder<T | null> {
  return (v, path) => (v === null ? null : d(v, path));
}

/** An optional field: absent (or null) → undefined. */
export function optional<T>(d: Decoder<T>): Decoder<T | undefined> {
  return (v, path) => (v === undefined || v === null ? undefined : d(v, path));
}

export function array<T>(d: Decoder<T>, max: number): Decoder<T[]> {
  return (v, path) => {
    if (!Array.isArray(v)) throw bad(path, "expected an array");
    if (v.length > max) throw bad(path, `more than ${max} items`);
    const out: T[] = new Array(v.length);
    for (let i = 0; i < v.length; i++) out[i] = d(v[i], `${path}[${i}]`);
    return out;
  };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A record of string keys (tags, params); keys are bounded like values. */
export function record<T>(d: Decoder<T>, maxKeys: number, maxKey = 256): Decoder<Record<string, T>> {
  return (v, path) => {
    if (!isPlainObject(v)) throw bad(path, "expected an object");
    const keys = Object.keys(v);
    if (keys.length > maxKeys) throw bad(path, `more than ${maxKeys} keys`);
    // A null-prototype object: a key named "__proto__" from the wire stays an ordinary key.
    const out = Object.create(null) as Record<string, T>;
    for (const k of keys) {
      if (k.length > maxKey) throw bad(path, "key too long");
      out[k] = d(v[k], `${path}.${k.slice(0, 40)}`);
    }
    return out;
  };
}

type Shape = Record<string, Decoder<unknown>>;
type Decoded<S extends Shape> = { [K in keyof S]: S[K] extends Decoder<infer T> ? T : never };

/** An object with exactly the listed fields decoded (extra fields are ignored, not copied). */
export function object<S extends Shape>(shape: S): Decoder<Decoded<S>> {
  return (v, path) => {
    if (!isPlainObject(v)) throw bad(path, "expected an object");
    const out: Record<string, unknown> = {};
    for (const [k, d] of Object.entries(shape)) out[k] = d(v[k], `${path}.${k}`);
    return out as Decoded<S>;
  };
}

/** A scalar table cell. */
export const cell: Decoder<string | number | boolean | null> = (v, path) => {
  if (v === null || typeof v === "boolean") return v;
  if (typeof v === "number") return num(v, path);
  return str()(v, path);
};

/** Parses JSON text and decodes it; a syntax error is a UI_ERR_BAD_RESPONSE too. */
export function parseJson<T>(text: string, d: Decoder<T>, what: string): T {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new UiError("UI_ERR_BAD_RESPONSE", `${what}: not JSON`);
  }
  return d(v, what);
}
