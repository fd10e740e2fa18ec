/**
 * The fleet registry: `fleet.yaml`, the aggregator's only durable input besides its identity key.
 *
 * It is configuration, not data: the Toteboxes (address, pinned certificate fingerprint, tags,
 * lifecycle state, which tenants may see them), the tenants, the operators (raw Ed25519 public keys,
 * tenant, role) and the viewport definitions (validated elsewhere, passed through with positions).
 *
 * The file is hostile input like anything read from disk:
 * - its size is bounded before a byte is parsed (ORCH_ERR_CONFIG_TOO_LARGE);
 * - nesting and the number of values are bounded token by token as yaml's parser takes them, before
 *   the composer builds the document, because the composer recurses and a few MiB of `[[[[` cost
 *   it tens of seconds;
 * - YAML errors, warnings (unknown tags), duplicate keys, recursive aliases and alias bombs are
 *   ORCH_ERR_CONFIG_SYNTAX; everything that parses but is not a valid fleet is ORCH_ERR_CONFIG_INVALID;
 * - every refusal names the line and column (1-based) and a path such as `toteboxes[3].fingerprint`;
 * - unknown keys are refused: a typo must never silently drop a setting.
 *
 * Scalars are read from their source text, not from YAML's implicit typing, so `id: 001`, a
 * fingerprint made only of digits and a tag `year: 2024` keep the exact characters the operator
 * wrote (selectors compare strings). Numbers (ports, version, limits) must be plain decimal integers.
 */
import { createHash, type KeyObject } from "node:crypto";
import { type FSWatcher, constants as fsConstants, watch } from "node:fs";
import { open } from "node:fs/promises";
import { basename, dirname, resolve as resolvePath } from "node:path";
import { getHeapStatistics } from "node:v8";
import { Worker } from "node:worker_threads";
import {
  isValidHost,
  keyIdOfRaw,
  normalizeFingerprint,
  parseEndpoint,
  publicKeyFromRaw,
} from "@os-orchestration/psp";
import {
  type Alias,
  Composer,
  CST,
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  Lexer,
  LineCounter,
  Parser,
  type Scalar,
  type YAMLError,
  type YAMLMap,
  YAMLParseError,
  type YAMLSeq,
  type Node as YamlNode,
} from "yaml";
import { OrchError, type OrchErrorCode, type OrchErrorDetail } from "./errors.ts";
import { type OrchLimits, resolveOrchLimits } from "./limits.ts";

// ---------------------------------------------------------------------------------------------
// Public types

export type ToteboxState = "active" | "suspended" | "archived";
export type OperatorRole = "viewer" | "manager";

export interface ToteboxEntry {
  readonly id: string;
  /** Display name; the id when the file gives none. */
  readonly name: string;
  /** Host name, IPv4 address, or IPv6 address without brackets (ready for `tls.connect`). */
  readonly host: string;
  readonly port: number;
  /** Lowercase hex SHA-256 of the Totebox's TLS certificate (normalized, no colons). */
  readonly fingerprint: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly state: ToteboxState;
  /** Tenants that may see this Totebox, each declared under `tenants`. */
  readonly tenants: readonly string[];
  /** 1-based line of the entry in the file (for messages that point back at it). */
  readonly line: number;
}

export interface TenantEntry {
  readonly id: string;
  /** Display name; the id when the file gives none. */
  readonly name: string;
  /** Per-tenant fan-out concurrency override; undefined means the aggregator's default limit. */
  readonly maxConcurrentFanouts: number | undefined;
}

export interface OperatorEntry {
  readonly id: string;
  /** Lowercase hex SHA-256 of the raw public key (the PSP key id). */
  readonly keyId: string;
  /** Built once here: verifying with a cached KeyObject is an order of magnitude cheaper. */
  readonly publicKey: KeyObject;
  readonly publicKeyRaw: Uint8Array;
  readonly tenant: string;
  readonly role: OperatorRole;
}

export interface ViewportSource {
  readonly name: string;
  /** The plain JS value of the definition (validated by viewports.ts, not here). */
  readonly definition: unknown;
  /** 1-based position of the viewport's name in the file. */
  readonly line: number;
  readonly column: number;
}

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export interface Registry {
  readonly version: 1;
  /** File path, or "<inline>" for text given to parseRegistry. */
  readonly source: string;
  /** Lowercase hex SHA-256 of the file bytes (UTF-8 of the text for parseRegistry). */
  readonly digest: string;
  readonly aggregator: { readonly listen?: ListenAddress; readonly http?: ListenAddress };
  readonly tenants: ReadonlyMap<string, TenantEntry>;
  /** In file order. */
  readonly toteboxes: readonly ToteboxEntry[];
  readonly toteboxById: ReadonlyMap<string, ToteboxEntry>;
  readonly operators: readonly OperatorEntry[];
  readonly operatorByKeyId: ReadonlyMap<string, OperatorEntry>;
  readonly operatorById: ReadonlyMap<string, OperatorEntry>;
  readonly viewports: readonly ViewportSource[];
}

export interface RegistryOptions {
  readonly source?: string;
  readonly limits?: Partial<OrchLimits>;
}

// ---------------------------------------------------------------------------------------------
// Rules

/**
 * Totebox ids. The Totebox itself (packages/totebox schema.ts) accepts any entity id of 1..128
 * characters; the registry is stricter on purpose: ids appear in logs, metrics labels, URLs and
 * selectors, so they are lowercase ASCII tokens. Every id accepted here is accepted by a Totebox.
 */
const TOTEBOX_ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;
/** Tenant ids: a subset of what a Totebox policy accepts (policy.ts TENANT_ID). */
const TENANT_ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const OPERATOR_ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;
/** Tag keys and values never contain `,` or `=`: the selector grammar `k=v,k2=v2` splits on them. */
const TAG_KEY = /^[a-z][a-z0-9_-]{0,31}$/;
const TAG_VALUE = /^[A-Za-z0-9_.:/-]{1,64}$/;
const VIEWPORT_NAME = /^[a-z][a-z0-9-]{0,63}$/;
const MAX_TAGS = 32;
/** Display names: the Totebox schema allows 1..200 characters; control characters would reach logs. */
const MAX_NAME_CHARS = 200;
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
const DECIMAL = /^(?:0|[1-9][0-9]{0,9})$/;

/** Deepest flow nesting (`[`/`{`) and most compact block indicators (`- - -`, `? ?`) on one line. */
const MAX_NESTING = 64;
/**
 * Most values (scalars and collections) in one file: one per BYTES_PER_NODE bytes of
 * maxConfigBytes (1 Mi values at the default 4 MiB). A registry entry averages ~10 bytes per value.
 */
const BYTES_PER_NODE = 4;
/** yaml's own alias-expansion guard for the viewport definitions we turn into JS values. */
const MAX_ALIAS_COUNT = 100;
/** Longest selector and most pairs in one (a selector arrives from the network). */
const MAX_SELECTOR_CHARS = 4096;
const MAX_SELECTOR_PAIRS = 64;
/** Longest piece of file text echoed into an error message. */
const MAX_ECHO_CHARS = 64;

const INLINE_SOURCE = "<inline>";
const EMPTY_TAGS: Readonly<Record<string, string>> = Object.freeze(Object.create(null));

const TOP_KEYS = ["version", "aggregator", "tenants", "toteboxes", "operators", "viewports"] as const;
const AGGREGATOR_KEYS = ["listen", "http"] as const;
const LISTEN_KEYS = ["host", "port"] as const;
const TENANT_KEYS = ["name", "max_concurrent_fanouts"] as const;
const TOTEBOX_KEYS = ["id", "name", "address", "fingerprint", "tags", "state", "tenants"] as const;
const OPERATOR_KEYS = ["id", "public_key", "tenant", "role"] as const;
const TOTEBOX_STATES: readonly ToteboxState[] = ["active", "suspended", "archived"];
const OPERATOR_ROLES: readonly OperatorRole[] = ["viewer", "manager"];

// ---------------------------------------------------------------------------------------------
// Entry points

/** Parses and validates registry text. Throws OrchError (the four ORCH_ERR_CONFIG_* codes). */
export function parseRegistry(text: string, options?: RegistryOptions): Registry {
  const limits = resolveOrchLimits(options?.limits);
  const source = options?.source ?? INLINE_SOURCE;
  // Buffer.byteLength counts without encoding, so the size check comes before any real work.
  const size = Buffer.byteLength(text, "utf8");
  if (size > limits.maxConfigBytes) throw tooLarge(source, size, limits.maxConfigBytes);
  return parseText(text, source, sha256Hex(Buffer.from(text, "utf8")), limits);
}

/** Reads (bounded) and parses a registry file. Throws OrchError (the four ORCH_ERR_CONFIG_* codes). */
export async function loadRegistry(
  path: string,
  options?: { limits?: Partial<OrchLimits> },
): Promise<Registry> {
  const limits = resolveOrchLimits(options?.limits);
  const bytes = await readConfigBytes(path, limits.maxConfigBytes);
  return parseBytes(bytes, path, sha256Hex(bytes), limits);
}

// ---------------------------------------------------------------------------------------------
// Diff and watch

export interface RegistryDiff {
  /** Present after, absent before (after's entry). */
  added: ToteboxEntry[];
  /** Present before, absent after (before's entry). */
  removed: ToteboxEntry[];
  /** Address or fingerprint changed: the link must be replaced (after's entry, which also carries
   *  any change of tags, name, state or tenants). */
  relinked: ToteboxEntry[];
  /** Only tags, name, state or tenants changed: keep the link (after's entry). */
  changed: ToteboxEntry[];
}

/**
 * Classifies Totebox changes by id. A Totebox whose entry differs only by its line number is
 * unchanged. Tenant and operator changes are not part of the diff: compare `tenants`/`operators`.
 */
export function diffRegistry(before: Registry, after: Registry): RegistryDiff {
  const diff: RegistryDiff = { added: [], removed: [], relinked: [], changed: [] };
  for (const next of after.toteboxes) {
    const prev = before.toteboxById.get(next.id);
    if (prev === undefined) diff.added.push(next);
    else if (prev.host !== next.host || prev.port !== next.port || prev.fingerprint !== next.fingerprint) {
      diff.relinked.push(next);
    } else if (
      prev.name !== next.name ||
      prev.state !== next.state ||
      !sameTags(prev.tags, next.tags) ||
      !sameSet(prev.tenants, next.tenants)
    ) {
      diff.changed.push(next);
    }
  }
  for (const prev of before.toteboxes) if (!after.toteboxById.has(prev.id)) diff.removed.push(prev);
  return diff;
}

export interface RegistryWatcher {
  close(): void;
  /** The last valid registry: the initial one until a valid change arrives. */
  readonly current: Registry;
}

export interface WatchRegistryOptions {
  readonly path: string;
  readonly initial: Registry;
  readonly limits?: Partial<OrchLimits>;
  /** Called once per valid new content (new digest), after `current` has been replaced. */
  readonly onChange: (next: Registry, diff: RegistryDiff, info: RegistryParseInfo) => void;
  /** Called once per distinct bad state (invalid content, unreadable or too large file); `current`
   *  stays. A throwing onChange is reported here as ORCH_ERR_INTERNAL. */
  readonly onError: (error: OrchError) => void;
  /** Poll interval in ms (default 1000, clamped to 10..3 600 000). */
  readonly pollMs?: number;
  /**
   * A changed file of at least this many bytes is parsed on a worker thread, so that the event
   * loop keeps serving every operator meanwhile: yaml parses ~1-1.9 MB/s here, so a 10,000-Totebox
   * file (2 MB) held the loop for 1.1-2.0 s. Smaller files parse in place, which costs less than
   * starting a thread (~0.5-1 s of the thread's own CPU, mostly compiling our modules there).
   * Default DEFAULT_OFF_THREAD_BYTES; 0 parses every change off the thread.
   */
  readonly offThreadBytes?: number;
  /**
   * Longest a parse on a worker thread may take, in ms, before the thread is stopped (default
   * 60 000). A change whose thread failed (could not start, crashed, ran out of its heap or of
   * time) is reported as ORCH_ERR_INTERNAL each time and tried again after pollMs, then twice as
   * long each time (at most 15 minutes): the content may be fine and the failure the host's.
   */
  readonly offThreadTimeoutMs?: number;
}

/** How a change was parsed (for logs): on a worker thread or in place, and how long it took. */
export interface RegistryParseInfo {
  readonly offThread: boolean;
  /** Wall time from the bytes read to the registry ready, in ms (a worker's start included). */
  readonly ms: number;
}

/**
 * 64 KiB: ~300 Toteboxes of the bench's shape, ~50-70 ms of parsing in place (about the
 * aggregator's worst turn of a fan-out at 1,000). Above it the thread wins: `npm run bench --
 * registry` read a 1,000-Totebox reload (0.2 MB) at 212-224 ms of event-loop delay in place and
 * 16-22 ms on the thread (two runs on 2026-11-28). Below it the thread's start (~1.5 s to the new
 * registry) buys little.
 */
export const DEFAULT_OFF_THREAD_BYTES = 64 * 1024;
const DEFAULT_OFF_THREAD_TIMEOUT_MS = 60_000;
/** Longest wait before a change whose parse thread failed is tried again. */
const MAX_OFF_THREAD_RETRY_MS = 15 * 60_000;
/**
 * The worker's heap: as large as this thread's, so that a file the aggregator parses at start is
 * never refused on reload. yaml's document costs over 1 KB per value: a valid 3 MB file of 1,000,000
 * empty mappings (in a viewport's list) ran a 1 GiB heap out and parsed in 13 s with 4 GiB
 * (01:30 on 2026-11-28); the largest real registry allowed (4 MiB, ~19,500 Toteboxes) fits in a
 * few hundred MB. A worker that needs more still is stopped by V8 (ERR_WORKER_OUT_OF_MEMORY), not
 * the process.
 */
const OFF_THREAD_HEAP_MB = Math.ceil(getHeapStatistics().heap_size_limit / (1024 * 1024));

/**
 * Hot reload. Two triggers feed one serialized check: `fs.watch` on the file's directory (editors
 * save by writing a temporary file and renaming it over the original, which a watch on the file
 * itself would miss) debounced so a burst of events costs one parse, and a poll every `pollMs`
 * comparing content digests (fs.watch is unreliable on network and container file systems).
 * A large change is parsed on a worker thread (`offThreadBytes`); the watcher's state and callbacks
 * stay on the calling thread.
 */
export function watchRegistry(options: WatchRegistryOptions): RegistryWatcher {
  const path = resolvePath(options.path);
  const dir = dirname(path);
  const base = basename(path);
  const limits = resolveOrchLimits(options.limits);
  const requested = options.pollMs ?? 1000;
  const pollMs = Number.isFinite(requested) ? Math.min(3_600_000, Math.max(10, Math.floor(requested))) : 1000;
  // Trailing debounce: an editor's save is several events within a few milliseconds.
  const debounceMs = Math.min(50, pollMs);
  const offThreadBytes = wholeOption(
    options.offThreadBytes,
    DEFAULT_OFF_THREAD_BYTES,
    0,
    Number.POSITIVE_INFINITY,
  );
  // setTimeout takes at most 2^31 - 1 ms (it fires at once beyond).
  const offThreadTimeoutMs = wholeOption(
    options.offThreadTimeoutMs,
    DEFAULT_OFF_THREAD_TIMEOUT_MS,
    1,
    2 ** 31 - 1,
  );
  // The parse thread in flight, stopped by close().
  let parsing: OffThreadParse | undefined;
  // The content whose parse thread failed last, and when to try it again.
  let retry: { digest: string; attempt: number; at: number } | undefined;

  let current = options.initial;
  // What the last check saw (a digest, or an error state): the same state is reported only once.
  let lastSeen: string = options.initial.digest;
  let closed = false;
  let running = false;
  let again = false;
  let debounce: NodeJS.Timeout | undefined;
  let fsWatcher: FSWatcher | undefined;

  const report = (error: OrchError): void => {
    if (closed) return;
    try {
      options.onError(error);
    } catch {
      // A throwing error handler has nowhere left to report to; the watcher keeps running.
    }
  };

  const checkOnce = async (): Promise<void> => {
    let bytes: Buffer;
    try {
      bytes = await readConfigBytes(path, limits.maxConfigBytes);
    } catch (e) {
      const error = asConfigError(e, path);
      const state = `error:${error.code}:${String(error.detail?.errno ?? "")}`;
      if (closed || state === lastSeen) return;
      lastSeen = state;
      report(error);
      return;
    }
    const digest = sha256Hex(bytes);
    if (closed || digest === lastSeen) return;
    if (retry !== undefined && retry.digest === digest && performance.now() < retry.at) return;
    lastSeen = digest;
    // Back to the content already in force (after an invalid edit was reverted): nothing changed.
    if (digest === current.digest) return;
    const offThread = bytes.length >= offThreadBytes;
    const started = performance.now();
    let next: Registry;
    try {
      if (offThread) {
        parsing = parseOffThread({ bytes, source: path, digest, limits, timeoutMs: offThreadTimeoutMs });
        try {
          next = await parsing.result;
        } finally {
          parsing = undefined;
        }
        if (closed) return;
      } else {
        next = parseBytes(bytes, path, digest, limits);
      }
    } catch (e) {
      const error = asConfigError(e, path);
      if (offThread && error.code === "ORCH_ERR_INTERNAL") {
        // The thread failed, not the content: not "seen", so a later check tries it again.
        const attempt = retry?.digest === digest ? retry.attempt + 1 : 1;
        const retryInMs = Math.min(MAX_OFF_THREAD_RETRY_MS, pollMs * 2 ** (attempt - 1));
        retry = { digest, attempt, at: performance.now() + retryInMs };
        lastSeen = `thread-failed:${digest}`;
        report(new OrchError(error.code, error.message, { ...error.detail, attempt, retryInMs }));
        return;
      }
      report(error);
      return;
    }
    retry = undefined;
    const info: RegistryParseInfo = { offThread, ms: performance.now() - started };
    const previous = current;
    current = next;
    try {
      options.onChange(next, diffRegistry(previous, next), info);
    } catch (e) {
      report(
        new OrchError("ORCH_ERR_INTERNAL", "registry onChange handler threw", { source: path }, { cause: e }),
      );
    }
  };

  // Checks never overlap: a trigger during a check asks for one more pass after it.
  const check = async (): Promise<void> => {
    if (closed) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        await checkOnce();
      } while (again && !closed);
    } catch (e) {
      report(new OrchError("ORCH_ERR_INTERNAL", "registry check failed", { source: path }, { cause: e }));
    } finally {
      running = false;
    }
  };

  const schedule = (): void => {
    if (closed) return;
    if (debounce !== undefined) clearTimeout(debounce);
    debounce = setTimeout(() => {
      debounce = undefined;
      void check();
    }, debounceMs);
    debounce.unref();
  };

  try {
    fsWatcher = watch(dir, { persistent: false }, (_event, filename) => {
      // Some platforms give no file name: treat every event in the directory as relevant.
      if (filename === null || filename === base) schedule();
    });
    fsWatcher.on("error", () => {
      // The directory went away or the watch broke: the poll keeps working on its own.
      fsWatcher?.close();
      fsWatcher = undefined;
    });
  } catch {
    fsWatcher = undefined;
  }
  const poll = setInterval(() => void check(), pollMs);
  poll.unref();

  return {
    close(): void {
      if (closed) return;
      closed = true;
      clearInterval(poll);
      if (debounce !== undefined) clearTimeout(debounce);
      debounce = undefined;
      fsWatcher?.close();
      fsWatcher = undefined;
      parsing?.stop();
    },
    get current(): Registry {
      return current;
    },
  };
}

/**
 * Grammar check of a Totebox selector: `k=v` pairs joined by `,`, each with a non-empty key and
 * value (the first `=` separates them), exactly what psp `selectorMatches` parses. Additionally
 * bounded in length and pair count because selectors arrive from the network.
 */
export function selectorsValid(selector: string): boolean {
  if (typeof selector !== "string" || selector.length === 0 || selector.length > MAX_SELECTOR_CHARS)
    return false;
  const parts = selector.split(",");
  if (parts.length > MAX_SELECTOR_PAIRS) return false;
  for (const part of parts) {
    const eq = part.indexOf("=");
    if (eq <= 0 || eq === part.length - 1) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Reading

function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

const READ_CHUNK = 64 * 1024;

/**
 * Reads at most `maxBytes` (+1 to detect overflow) from a regular file. O_NONBLOCK so that a FIFO
 * planted at the path cannot block the open; the file may grow between stat and read, so the
 * bound is enforced on the bytes actually read, not on the size stat reported.
 */
async function readConfigBytes(path: string, maxBytes: number): Promise<Buffer> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, fsConstants.O_RDONLY | (fsConstants.O_NONBLOCK ?? 0));
  } catch (e) {
    throw readError(path, e);
  }
  try {
    let stat: Awaited<ReturnType<typeof handle.stat>>;
    try {
      stat = await handle.stat();
    } catch (e) {
      throw readError(path, e);
    }
    if (!stat.isFile()) {
      throw new OrchError("ORCH_ERR_CONFIG_READ", `${path}: not a regular file`, { source: path });
    }
    if (stat.size > maxBytes) throw tooLarge(path, stat.size, maxBytes);
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const want = Math.min(READ_CHUNK, maxBytes + 1 - total);
      const chunk = Buffer.allocUnsafe(want);
      let n: number;
      try {
        ({ bytesRead: n } = await handle.read(chunk, 0, want, null));
      } catch (e) {
        throw readError(path, e);
      }
      if (n === 0) break;
      chunks.push(n === want ? chunk : chunk.subarray(0, n));
      total += n;
      if (total > maxBytes) throw tooLarge(path, total, maxBytes);
    }
    return Buffer.concat(chunks, total);
  } finally {
    await handle.close().catch(() => undefined);
  }
}

function readError(path: string, e: unknown): OrchError {
  const errno =
    typeof e === "object" && e !== null && "code" in e ? String((e as { code: unknown }).code) : "EIO";
  return new OrchError("ORCH_ERR_CONFIG_READ", `${path}: cannot read the registry (${errno})`, {
    source: path,
    errno,
  });
}

function tooLarge(source: string, bytes: number, limit: number): OrchError {
  return new OrchError(
    "ORCH_ERR_CONFIG_TOO_LARGE",
    `${source}: registry is ${bytes} bytes, more than the limit of ${limit}`,
    { source, bytes, limit },
  );
}

function asConfigError(e: unknown, source: string): OrchError {
  if (e instanceof OrchError) return e;
  return new OrchError(
    "ORCH_ERR_CONFIG_READ",
    `${source}: cannot load the registry`,
    { source },
    { cause: e },
  );
}

function parseBytes(
  bytes: Uint8Array,
  source: string,
  digest: string,
  limits: Readonly<OrchLimits>,
): Registry {
  if (bytes.length > limits.maxConfigBytes) throw tooLarge(source, bytes.length, limits.maxConfigBytes);
  let text: string;
  try {
    // fatal: a stray byte is refused instead of becoming U+FFFD inside an id or key.
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new OrchError("ORCH_ERR_CONFIG_SYNTAX", `${source}: the registry is not valid UTF-8`, {
      source,
      line: 1,
      column: 1,
    });
  }
  return parseText(text, source, digest, limits);
}

/** `value` as a whole number in lo..hi (±Infinity to the nearer end), or `fallback` for undefined or NaN. */
function wholeOption(value: number | undefined, fallback: number, lo: number, hi: number): number {
  if (value === undefined || Number.isNaN(value)) return fallback;
  return Math.min(hi, Math.max(lo, Math.floor(value)));
}

// ---------------------------------------------------------------------------------------------
// Parsing on a worker thread
//
// yaml is plain JavaScript with no way to yield, so a large file held the aggregator's event loop
// for the whole parse. The worker (registry-worker.mjs) runs parseBytes on a copy of the bytes and
// posts back either the Registry (structured clone: Maps, arrays, typed arrays and KeyObjects
// cross; prototypes and frozenness do not, so reviveRegistry rebuilds them) or the OrchError's
// code, message and detail. The worker is same-process code of ours, not a trust boundary, but
// its reply is still checked for shape before use.

/** What the worker receives (workerData). */
export interface OffThreadRequest {
  readonly bytes: Uint8Array;
  readonly source: string;
  readonly digest: string;
  readonly limits: Readonly<OrchLimits>;
}

/** What the worker posts back. */
export type OffThreadReply =
  | { readonly ok: true; readonly registry: Registry }
  | { readonly ok: false; readonly code: string; readonly message: string; readonly detail: OrchErrorDetail };

/** The worker's side: parse, and turn a config error into plain data (an Error clones without
 *  its code and detail). Anything else is a bug and is rethrown, failing the worker. */
export function parseForWorker(request: OffThreadRequest): OffThreadReply {
  try {
    return { ok: true, registry: parseBytes(request.bytes, request.source, request.digest, request.limits) };
  } catch (e) {
    if (!(e instanceof OrchError)) throw e;
    return { ok: false, code: e.code, message: e.message, detail: e.detail ?? {} };
  }
}

interface OffThreadParse {
  readonly result: Promise<Registry>;
  /** Stops the thread; `result` then rejects (nobody awaits it after close()). */
  stop(): void;
}

const WORKER_URL = new URL("./registry-worker.mjs", import.meta.url);

function parseOffThread(o: OffThreadRequest & { readonly timeoutMs: number }): OffThreadParse {
  const request: OffThreadRequest = {
    // An exact copy: a small file's bytes may be a view into Node's shared buffer pool, and a
    // clone of the view would carry the whole pool, other data of this thread's with it.
    bytes: Uint8Array.prototype.slice.call(o.bytes),
    source: o.source,
    digest: o.digest,
    limits: o.limits,
  };
  // `reason` is what the log shows of a failure: a Node error code such as
  // ERR_WORKER_OUT_OF_MEMORY, never a message (which could echo the file).
  const failed = (why: string, reason: string, cause?: unknown): OrchError =>
    new OrchError(
      "ORCH_ERR_INTERNAL",
      `${o.source}: the registry's parse thread ${why}`,
      { source: o.source, reason },
      cause === undefined ? undefined : { cause },
    );
  const reasonOf = (e: unknown): string =>
    typeof e === "object" && e !== null && "code" in e && typeof e.code === "string"
      ? e.code
      : e instanceof Error
        ? e.name
        : "unknown";
  let worker: Worker | undefined;
  let timer: NodeJS.Timeout | undefined;
  const result = new Promise<Registry>((resolve, reject) => {
    let settled = false;
    const settle = (value: Registry | OrchError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      void worker?.terminate();
      if (value instanceof OrchError) reject(value);
      else resolve(value);
    };
    try {
      worker = new Worker(WORKER_URL, {
        workerData: request,
        // Invariant 1, the aggregator writes no file: tsx's compile cache stays off in the thread
        // whatever this process's environment says (tsx reads the variable when first loaded).
        env: { ...process.env, TSX_DISABLE_CACHE: "1" },
        resourceLimits: { maxOldGenerationSizeMb: OFF_THREAD_HEAP_MB },
      });
    } catch (e) {
      settle(failed("could not start", reasonOf(e), e));
      return;
    }
    timer = setTimeout(() => settle(failed(`took longer than ${o.timeoutMs} ms`, "timeout")), o.timeoutMs);
    timer.unref();
    worker.once("message", (reply: unknown) => {
      try {
        settle(fromReply(reply, request));
      } catch (e) {
        settle(failed("replied out of shape", "reply", e));
      }
    });
    worker.once("messageerror", (e) => settle(failed("sent a reply that could not be read", "reply", e)));
    worker.once("error", (e) => settle(failed("failed", reasonOf(e), e)));
    worker.once("exit", (exitCode) => settle(failed(`exited (${exitCode}) without a reply`, "exit")));
  });
  return {
    result,
    stop: () => {
      clearTimeout(timer);
      void worker?.terminate();
    },
  };
}

function fromReply(reply: unknown, request: OffThreadRequest): Registry | OrchError {
  if (typeof reply !== "object" || reply === null || !("ok" in reply)) throw new TypeError("not a reply");
  if (reply.ok === true && "registry" in reply) {
    const registry = reviveRegistry(reply.registry);
    // The reply is for these bytes (a thread parses one file once, but a mix-up must not apply).
    if (registry.digest !== request.digest || registry.source !== request.source) {
      throw new TypeError("a reply for other bytes");
    }
    return registry;
  }
  if (
    reply.ok === false &&
    "code" in reply &&
    typeof reply.code === "string" &&
    reply.code.startsWith("ORCH_ERR_CONFIG_") &&
    "message" in reply &&
    typeof reply.message === "string" &&
    "detail" in reply &&
    typeof reply.detail === "object" &&
    reply.detail !== null
  ) {
    return new OrchError(reply.code as OrchErrorCode, reply.message, reply.detail as OrchErrorDetail);
  }
  throw new TypeError(`not a reply from the parse of ${request.source}`);
}

/**
 * The Registry as parseBytes made it, from its structured clone: the same values, frozen where
 * RegistryReader froze them, tags prototype-free again (callers index them with any key), and
 * what RegistryReader shared (a tags object or tenant list reached through a YAML alias) still
 * shared, since a structured clone keeps identity within one message. The clone comes from our
 * own parser on our own thread, so its fields are not re-validated one by one: only that it is a
 * registry at all (and, in fromReply, of the bytes asked about).
 */
function reviveRegistry(raw: unknown): Registry {
  const r = raw as Registry;
  if (
    typeof r !== "object" ||
    r === null ||
    r.version !== 1 ||
    typeof r.digest !== "string" ||
    !(r.tenants instanceof Map) ||
    !Array.isArray(r.toteboxes) ||
    !Array.isArray(r.operators) ||
    !Array.isArray(r.viewports)
  ) {
    throw new TypeError("not a registry");
  }
  // One copy per object of the clone, so that what the clone shares stays shared.
  const oncePer = <T extends object>(copy: (x: T) => T): ((x: T) => T) => {
    const made = new Map<T, T>();
    return (x) => {
      let out = made.get(x);
      if (out === undefined) {
        out = copy(x);
        made.set(x, out);
      }
      return out;
    };
  };
  const tagsOf = oncePer((t: Readonly<Record<string, string>>) => {
    const copy: Record<string, string> = Object.create(null);
    for (const k of Object.keys(t)) copy[k] = t[k]!;
    return Object.freeze(copy);
  });
  const tenantListOf = oncePer((l: readonly string[]) => Object.freeze([...l]));
  const address = (a: ListenAddress | undefined): ListenAddress | undefined =>
    a === undefined ? undefined : Object.freeze({ host: a.host, port: a.port });

  const aggregator: { listen?: ListenAddress; http?: ListenAddress } = {};
  for (const name of AGGREGATOR_KEYS) {
    const a = address(r.aggregator[name]);
    if (a !== undefined) aggregator[name] = a;
  }
  const tenants = new Map<string, TenantEntry>();
  for (const [id, t] of r.tenants) {
    tenants.set(id, Object.freeze({ id: t.id, name: t.name, maxConcurrentFanouts: t.maxConcurrentFanouts }));
  }
  const toteboxes = r.toteboxes.map((t) =>
    Object.freeze({
      id: t.id,
      name: t.name,
      host: t.host,
      port: t.port,
      fingerprint: t.fingerprint,
      tags: tagsOf(t.tags),
      state: t.state,
      tenants: tenantListOf(t.tenants),
      line: t.line,
    }),
  );
  const operators = r.operators.map((op) =>
    Object.freeze({
      id: op.id,
      keyId: op.keyId,
      publicKey: op.publicKey,
      publicKeyRaw: op.publicKeyRaw,
      tenant: op.tenant,
      role: op.role,
    }),
  );
  const viewports = r.viewports.map((v) =>
    Object.freeze({ name: v.name, definition: v.definition, line: v.line, column: v.column }),
  );
  return assembleRegistry({
    source: r.source,
    digest: r.digest,
    aggregator: Object.freeze(aggregator),
    tenants,
    toteboxes,
    operators,
    viewports,
  });
}

/** The frozen Registry of its parts, with its indexes by id and key id. */
function assembleRegistry(
  parts: Pick<Registry, "source" | "digest" | "aggregator" | "tenants"> & {
    toteboxes: ToteboxEntry[];
    operators: OperatorEntry[];
    viewports: ViewportSource[];
  },
): Registry {
  const toteboxById = new Map<string, ToteboxEntry>();
  for (const t of parts.toteboxes) toteboxById.set(t.id, t);
  const operatorById = new Map<string, OperatorEntry>();
  const operatorByKeyId = new Map<string, OperatorEntry>();
  for (const op of parts.operators) {
    operatorById.set(op.id, op);
    operatorByKeyId.set(op.keyId, op);
  }
  return Object.freeze({
    version: 1 as const,
    source: parts.source,
    digest: parts.digest,
    aggregator: parts.aggregator,
    tenants: parts.tenants,
    toteboxes: Object.freeze(parts.toteboxes),
    toteboxById,
    operators: Object.freeze(parts.operators),
    operatorByKeyId,
    operatorById,
    viewports: Object.freeze(parts.viewports),
  });
}

// ---------------------------------------------------------------------------------------------
// YAML to a checked document

function parseText(text: string, source: string, digest: string, limits: Readonly<OrchLimits>): Registry {
  const lineCounter = new LineCounter();
  const doc = parseBounded(
    text,
    source,
    lineCounter,
    Math.max(1024, Math.floor(limits.maxConfigBytes / BYTES_PER_NODE)),
  );
  const problem: YAMLError | undefined = doc.errors[0] ?? doc.warnings[0];
  if (problem !== undefined) {
    throw syntaxAt(source, lineCounter, problem.pos[0], sanitize(problem.message, 200), {
      yamlCode: problem.code,
    });
  }
  const aliases = checkStructure(doc, source, lineCounter);
  return new RegistryReader(doc, lineCounter, source, aliases, limits).read(digest);
}

/** yaml's options for the registry's one document. */
const DOCUMENT_OPTIONS = {
  version: "1.2",
  schema: "core",
  merge: false, // `<<` is an ordinary (and therefore unknown) key
  uniqueKeys: false, // quadratic in yaml; checkStructure refuses duplicates in linear time
  strict: true,
  // Pretty errors echo file excerpts into messages (we give line and column); parseBounded never
  // calls yaml's prettifier, and this says so to any other reader of the options.
  prettyErrors: false,
  // Below "warn", yaml's only log (a key's JSON through process.emitWarning) is off: it would echo
  // file text. Not "silent", which parseDocument reads as "no MULTIPLE_DOCS error".
  logLevel: "error",
} as const;

/**
 * yaml's `parseDocument`, fed token by token from one lexer pass that bounds the text's shape as
 * it goes (ShapeBound), so that the parser never sees a token past a bound and the composer, which
 * composes a document only once its last token is in, never sees a document that breaks one.
 * Lexing once instead of twice (a bounding pass, then parseDocument's own) saves ~15-20% of a
 * large registry's parse: lexing alone was 0.36-0.48 s of ~2 s at 10,000 Toteboxes here.
 */
function parseBounded(
  text: string,
  source: string,
  lineCounter: LineCounter,
  maxNodes: number,
): Document.Parsed {
  const bound = new ShapeBound(text, source, maxNodes);
  const parser = new Parser(lineCounter.addNewLine);
  // While the lexer runs, the offset it lexes at (-1 while the parser or composer runs): a failure
  // there has a place in the text; one in the parser or composer is reported at the start.
  let lexingAt = -1;
  function* tokens(): Generator<CST.Token> {
    // As Parser.parse does before its first token; the parser reports every later line itself.
    lineCounter.addNewLine(0);
    const lexemes = new Lexer().lex(text);
    for (;;) {
      lexingAt = bound.offset;
      const next = lexemes.next();
      lexingAt = -1;
      if (next.done === true) break;
      bound.check(next.value);
      yield* parser.next(next.value);
    }
    yield* parser.end();
  }
  let doc: Document.Parsed | undefined;
  try {
    // As parseDocument: the first document, and an error if there is another. As there, the tokens
    // are read no further than the composer needs to hand over the second document (a bound broken
    // only after it goes unseen; the file is refused for MULTIPLE_DOCS all the same).
    for (const next of new Composer(DOCUMENT_OPTIONS).compose(tokens(), true, text.length)) {
      if (doc === undefined) {
        doc = next as Document.Parsed;
      } else {
        const message = "Source contains multiple documents; please use YAML.parseAllDocuments()";
        doc.errors.push(new YAMLParseError([next.range[0], next.range[1]], "MULTIPLE_DOCS", message));
        break;
      }
    }
  } catch (e) {
    if (e instanceof OrchError) throw e;
    if (lexingAt >= 0)
      throw syntaxAt(source, lineCounterFor(text), lexingAt, "the YAML lexer failed", { cause: e });
    throw syntaxAt(source, lineCounter, 0, "the YAML parser failed", { cause: e });
  }
  // compose(…, true, …) ends with a document even for empty text.
  if (doc === undefined) throw syntaxAt(source, lineCounter, 0, "the YAML parser gave no document");
  return doc;
}

/**
 * Bounds the shape of the text token by token, with yaml's own lexer (so quoting and comments are
 * understood), stopping at the first offending token:
 * - flow nesting (`[[[[`) and indicators that open a level each on one line (`- - -`, `? ? ?`,
 *   `a: a: a:` in block or within one flow entry): the parser and composer recurse per level, and a
 *   few MiB of them cost tens of seconds before failing;
 * - the number of nodes (scalars and collections): yaml costs a roughly constant time per node, so
 *   a file made only of tiny nodes (`[a,a,a,...]`) is the slowest file of a given size. The budget
 *   is far above what a registry of `maxConfigBytes` holds (~25 nodes per Totebox entry).
 */
class ShapeBound {
  /** Offset of the next token in the text. */
  offset = 0;
  #flow = 0;
  #lineIndicators = 0;
  #entryIndicators = 0;
  #nodes = 0;

  constructor(
    private readonly text: string,
    private readonly source: string,
    private readonly maxNodes: number,
  ) {}

  /** Throws ORCH_ERR_CONFIG_SYNTAX at the first token past a bound. */
  check(token: string): void {
    const type = CST.tokenType(token);
    if (type === "scalar") {
      // Zero-width marker before each scalar.
      if (++this.#nodes > this.maxNodes) throw this.#refuse(`more than ${this.maxNodes} values`);
      return;
    }
    if (type === "doc-mode" || type === "flow-error-end") return; // zero-width markers
    if (type === "flow-map-start" || type === "flow-seq-start") {
      this.#entryIndicators = 0;
      if (++this.#nodes > this.maxNodes) throw this.#refuse(`more than ${this.maxNodes} values`);
      if (++this.#flow > MAX_NESTING) throw this.#refuse(`nesting deeper than ${MAX_NESTING} levels`);
    } else if (type === "flow-map-end" || type === "flow-seq-end") {
      this.#entryIndicators = 0;
      if (this.#flow > 0) this.#flow--;
    } else if (type === "comma") {
      this.#entryIndicators = 0;
    } else if (type === "map-value-ind" && this.#flow > 0) {
      if (++this.#entryIndicators > MAX_NESTING)
        throw this.#refuse(`nesting deeper than ${MAX_NESTING} levels`);
    } else if (type === "seq-item-ind" || type === "explicit-key-ind" || type === "map-value-ind") {
      if (++this.#lineIndicators > MAX_NESTING)
        throw this.#refuse(`nesting deeper than ${MAX_NESTING} levels`);
    } else if (type === "newline") {
      this.#lineIndicators = 0;
    }
    this.offset += token.length;
  }

  #refuse(message: string): OrchError {
    // The parser's line counter has seen only the lines before this token: count lines directly.
    return syntaxAt(this.source, lineCounterFor(this.text), this.offset, message);
  }
}

function lineCounterFor(text: string): LineCounter {
  const lc = new LineCounter();
  lc.addNewLine(0);
  for (let i = text.indexOf("\n"); i !== -1; i = text.indexOf("\n", i + 1)) lc.addNewLine(i + 1);
  return lc;
}

/**
 * One linear pass over the composed document that
 * - maps every alias to its anchor (yaml's Alias.resolve walks the whole document per call,
 *   quadratic over a large fleet);
 * - refuses aliases that point at one of their own ancestors: such a node has no finite value and
 *   would make any recursive reader loop;
 * - refuses duplicate keys in every mapping. yaml's own `uniqueKeys` check compares each key with
 *   every earlier one (a 25 000-key mapping took 36 s here), so it is off and done here with a set.
 *   Two keys are the same if they are written the same or if they become the same JS property
 *   (`1` and `"1"`, `1` and `01`): the viewport definitions are turned into plain objects.
 */
function checkStructure(
  doc: Document.Parsed,
  source: string,
  lineCounter: LineCounter,
): Map<Alias, YamlNode> {
  const latest = new Map<string, YamlNode>();
  const targets = new Map<Alias, YamlNode>();
  const ancestors = new Set<YamlNode>();
  // Path segments of the node being walked (numbers are list indexes), joined only when reporting.
  const segments: Array<string | number> = [];
  const pathNow = (): string =>
    segments.reduce<string>(
      (acc, seg) => (typeof seg === "number" ? `${acc}[${seg}]` : keyPath(acc, seg)),
      "",
    );
  const walk = (node: unknown): void => {
    if (isAlias(node)) {
      const target = latest.get(node.source);
      if (target === undefined) {
        throw syntaxAt(source, lineCounter, node.range?.[0] ?? 0, "alias to an unknown anchor", {
          path: pathNow(),
        });
      }
      if (ancestors.has(target)) {
        throw syntaxAt(source, lineCounter, node.range?.[0] ?? 0, "alias refers to a node that contains it", {
          path: pathNow(),
        });
      }
      targets.set(node, target);
      return;
    }
    if (isScalar(node)) {
      if (node.anchor !== undefined) latest.set(node.anchor, node);
      return;
    }
    if (isMap(node)) {
      if (node.anchor !== undefined) latest.set(node.anchor, node);
      ancestors.add(node);
      const written = new Set<string>();
      const asProperties = new Set<string>();
      for (const pair of node.items) {
        const key = pair.key;
        let label = "?";
        if (isScalar(key)) {
          label = scalarText(key);
          const asProperty = key.value === null ? "" : String(key.value);
          if (written.has(label) || asProperties.has(asProperty)) {
            segments.push(label);
            throw syntaxAt(source, lineCounter, key.range?.[0] ?? 0, "duplicate key", {
              yamlCode: "DUPLICATE_KEY",
              path: pathNow(),
            });
          }
          written.add(label);
          asProperties.add(asProperty);
        }
        walk(key);
        segments.push(label);
        walk(pair.value);
        segments.pop();
      }
      ancestors.delete(node);
      return;
    }
    if (isSeq(node)) {
      if (node.anchor !== undefined) latest.set(node.anchor, node);
      ancestors.add(node);
      node.items.forEach((item, index) => {
        segments.push(index);
        walk(item);
        segments.pop();
      });
      ancestors.delete(node);
    }
  };
  try {
    walk(doc.contents);
  } catch (e) {
    if (e instanceof OrchError) throw e;
    throw syntaxAt(source, lineCounter, 0, "the document is nested too deeply", { cause: e });
  }
  return targets;
}

function syntaxAt(
  source: string,
  lineCounter: LineCounter,
  offset: number,
  message: string,
  extra?: { yamlCode?: string; path?: string; cause?: unknown },
): OrchError {
  const { line, col } = lineCounter.linePos(Math.max(0, offset));
  const detail: Record<string, string | number> = { source, line, column: col };
  if (extra?.path !== undefined) detail.path = extra.path;
  if (extra?.yamlCode !== undefined) detail.yamlCode = extra.yamlCode;
  const where = extra?.path ? `${extra.path}: ` : "";
  return new OrchError(
    "ORCH_ERR_CONFIG_SYNTAX",
    `${source}:${line}:${col}: ${where}${message}`,
    detail,
    extra?.cause === undefined ? undefined : { cause: extra.cause },
  );
}

/** File text in a message: control characters replaced, length bounded. */
function sanitize(text: string, max: number = MAX_ECHO_CHARS): string {
  const clean = text.replace(new RegExp(CONTROL_CHARS.source, "g"), " ");
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

function quote(text: string): string {
  return JSON.stringify(sanitize(text));
}

function keyPath(base: string, key: string): string {
  const seg = /^[A-Za-z0-9_-]{1,64}$/.test(key) ? key : `[${quote(key)}]`;
  if (base === "") return seg;
  return seg.startsWith("[") ? `${base}${seg}` : `${base}.${seg}`;
}

// ---------------------------------------------------------------------------------------------
// Document to registry

type Value = YamlNode | null;

interface Field {
  readonly keyNode: Scalar;
  readonly value: Value;
}

class RegistryReader {
  readonly #doc: Document.Parsed;
  readonly #lines: LineCounter;
  readonly #source: string;
  readonly #aliases: Map<Alias, YamlNode>;
  readonly #limits: Readonly<OrchLimits>;
  // Aliased tag maps and tenant lists are validated once per node, not once per use: keeps the
  // cost linear when thousands of Toteboxes share `tags: *west`.
  readonly #tagsMemo = new WeakMap<YamlNode, Readonly<Record<string, string>>>();
  readonly #tenantListMemo = new WeakMap<YamlNode, readonly string[]>();

  constructor(
    doc: Document.Parsed,
    lines: LineCounter,
    source: string,
    aliases: Map<Alias, YamlNode>,
    limits: Readonly<OrchLimits>,
  ) {
    this.#doc = doc;
    this.#lines = lines;
    this.#source = source;
    this.#aliases = aliases;
    this.#limits = limits;
  }

  read(digest: string): Registry {
    const root = this.#deref(this.#doc.contents);
    if (root === null) throw this.#invalidAt(0, "", "the registry is empty: `version: 1` is required");
    const top = this.#fields(root, "", TOP_KEYS);

    const versionField = top.get("version");
    if (versionField === undefined) throw this.#invalid(root, "", "`version` is required");
    const versionNode = this.#deref(versionField.value);
    if (
      versionNode === null ||
      !isScalar(versionNode) ||
      versionNode.type !== "PLAIN" ||
      scalarText(versionNode) !== "1"
    ) {
      throw this.#invalid(
        versionField.value ?? versionField.keyNode,
        "version",
        "must be 1 (the only format version)",
      );
    }

    const aggregator = this.#aggregator(top.get("aggregator"));
    const tenants = this.#tenants(top.get("tenants"));
    const toteboxes = this.#toteboxes(top.get("toteboxes"), tenants);
    const operators = this.#operators(top.get("operators"), tenants);
    const viewports = this.#viewports(top.get("viewports"));

    return assembleRegistry({
      source: this.#source,
      digest,
      aggregator,
      tenants,
      toteboxes,
      operators,
      viewports,
    });
  }

  // --- sections ---

  #aggregator(field: Field | undefined): Registry["aggregator"] {
    if (field === undefined || field.value === null) return Object.freeze({});
    const fields = this.#fields(field.value, "aggregator", AGGREGATOR_KEYS, field.keyNode);
    const out: { listen?: ListenAddress; http?: ListenAddress } = {};
    for (const name of AGGREGATOR_KEYS) {
      const f = fields.get(name);
      if (f === undefined || f.value === null) continue;
      out[name] = this.#listen(f, `aggregator.${name}`);
    }
    return Object.freeze(out);
  }

  #listen(field: Field, path: string): ListenAddress {
    const fields = this.#fields(field.value, path, LISTEN_KEYS, field.keyNode);
    const hostField = this.#required(fields, "host", field.value ?? field.keyNode, path);
    const portField = this.#required(fields, "port", field.value ?? field.keyNode, path);
    const hostText = this.#string(hostField.value, `${path}.host`, hostField.keyNode);
    const bare = hostText.startsWith("[") && hostText.endsWith("]") ? hostText.slice(1, -1) : hostText;
    if (!isValidHost(bare)) {
      throw this.#invalid(hostField.value, `${path}.host`, "must be a host name, an IPv4 or an IPv6 address");
    }
    // Port 0 is allowed for listeners (the system picks one); Toteboxes need a real port.
    const port = this.#int(portField.value, `${path}.port`, 0, 65535, portField.keyNode);
    return Object.freeze({ host: bare, port });
  }

  #tenants(field: Field | undefined): Map<string, TenantEntry> {
    const tenants = new Map<string, TenantEntry>();
    if (field === undefined || field.value === null) return tenants;
    const entries = this.#fields(field.value, "tenants", null, field.keyNode);
    for (const [id, f] of entries) {
      const path = keyPath("tenants", id);
      if (!TENANT_ID.test(id)) {
        throw this.#invalid(
          f.keyNode,
          path,
          "tenant ids are 1-64 of a-z 0-9 . _ - starting with a letter or digit",
        );
      }
      let name = id;
      let maxConcurrentFanouts: number | undefined;
      if (f.value !== null) {
        const props = this.#fields(f.value, path, TENANT_KEYS, f.keyNode);
        const nameField = props.get("name");
        if (nameField !== undefined && nameField.value !== null) {
          name = this.#displayName(nameField, `${path}.name`);
        }
        const maxField = props.get("max_concurrent_fanouts");
        if (maxField !== undefined && maxField.value !== null) {
          maxConcurrentFanouts = this.#int(
            maxField.value,
            `${path}.max_concurrent_fanouts`,
            1,
            1000,
            maxField.keyNode,
          );
        }
      }
      tenants.set(id, Object.freeze({ id, name, maxConcurrentFanouts }));
    }
    return tenants;
  }

  #toteboxes(field: Field | undefined, tenants: ReadonlyMap<string, TenantEntry>): ToteboxEntry[] {
    if (field === undefined || field.value === null) return [];
    const seq = this.#seq(field.value, "toteboxes", field.keyNode);
    if (seq.items.length > this.#limits.maxToteboxes) {
      throw this.#invalid(
        field.keyNode,
        "toteboxes",
        `${seq.items.length} Toteboxes, more than the limit of ${this.#limits.maxToteboxes}`,
        { limit: this.#limits.maxToteboxes, count: seq.items.length },
      );
    }
    const out: ToteboxEntry[] = [];
    const idLine = new Map<string, number>();
    const fingerprintOwner = new Map<string, string>();
    seq.items.forEach((item, index) => {
      const path = `toteboxes[${index}]`;
      const node = this.#deref(item);
      if (node === null)
        throw this.#invalid(item ?? seq, path, "empty entry: a Totebox needs id, address and fingerprint");
      const fields = this.#fields(node, path, TOTEBOX_KEYS);
      const line = this.#pos(node).line;

      const idField = this.#required(fields, "id", node, path);
      const id = this.#string(idField.value, `${path}.id`, idField.keyNode);
      if (!TOTEBOX_ID.test(id)) {
        throw this.#invalid(
          idField.value,
          `${path}.id`,
          "Totebox ids are 1-64 of a-z 0-9 . _ - starting with a letter or digit",
        );
      }
      const firstLine = idLine.get(id);
      if (firstLine !== undefined) {
        throw this.#invalid(
          idField.value,
          `${path}.id`,
          `duplicate Totebox id "${id}" (first on line ${firstLine})`,
          {
            firstLine,
          },
        );
      }
      idLine.set(id, line);

      const nameField = fields.get("name");
      const name =
        nameField === undefined || nameField.value === null
          ? id
          : this.#displayName(nameField, `${path}.name`);

      const addressField = this.#required(fields, "address", node, path);
      const { host, port } = this.#address(addressField, `${path}.address`);

      const fpField = this.#required(fields, "fingerprint", node, path);
      const fpText = this.#string(fpField.value, `${path}.fingerprint`, fpField.keyNode);
      let fingerprint: string;
      try {
        fingerprint = normalizeFingerprint(fpText);
      } catch {
        throw this.#invalid(
          fpField.value,
          `${path}.fingerprint`,
          "must be the SHA-256 of the Totebox's TLS certificate: 64 hex digits (colons allowed)",
        );
      }
      const owner = fingerprintOwner.get(fingerprint);
      if (owner !== undefined) {
        throw this.#invalid(fpField.value, `${path}.fingerprint`, `same fingerprint as Totebox "${owner}"`, {
          other: owner,
        });
      }
      fingerprintOwner.set(fingerprint, id);

      const tagsField = fields.get("tags");
      const tags =
        tagsField === undefined || tagsField.value === null
          ? EMPTY_TAGS
          : this.#tags(tagsField, `${path}.tags`);

      const stateField = fields.get("state");
      let state: ToteboxState = "active";
      if (stateField !== undefined && stateField.value !== null) {
        const s = this.#string(stateField.value, `${path}.state`, stateField.keyNode);
        if (!(TOTEBOX_STATES as readonly string[]).includes(s)) {
          throw this.#invalid(
            stateField.value,
            `${path}.state`,
            "must be one of active, suspended, archived",
          );
        }
        state = s as ToteboxState;
      }

      const tenantsField = fields.get("tenants");
      const toteboxTenants =
        tenantsField === undefined || tenantsField.value === null
          ? Object.freeze([] as string[])
          : this.#tenantList(tenantsField, `${path}.tenants`, tenants);

      out.push(
        Object.freeze({ id, name, host, port, fingerprint, tags, state, tenants: toteboxTenants, line }),
      );
    });
    return out;
  }

  #operators(field: Field | undefined, tenants: ReadonlyMap<string, TenantEntry>): OperatorEntry[] {
    if (field === undefined || field.value === null) return [];
    const seq = this.#seq(field.value, "operators", field.keyNode);
    const out: OperatorEntry[] = [];
    const idLine = new Map<string, number>();
    const keyOwner = new Map<string, string>();
    seq.items.forEach((item, index) => {
      const path = `operators[${index}]`;
      const node = this.#deref(item);
      if (node === null)
        throw this.#invalid(
          item ?? seq,
          path,
          "empty entry: an operator needs id, public_key, tenant and role",
        );
      const fields = this.#fields(node, path, OPERATOR_KEYS);
      const line = this.#pos(node).line;

      const idField = this.#required(fields, "id", node, path);
      const id = this.#string(idField.value, `${path}.id`, idField.keyNode);
      if (!OPERATOR_ID.test(id)) {
        throw this.#invalid(
          idField.value,
          `${path}.id`,
          "operator ids are 1-64 of a-z 0-9 . _ - starting with a letter or digit",
        );
      }
      const firstLine = idLine.get(id);
      if (firstLine !== undefined) {
        throw this.#invalid(
          idField.value,
          `${path}.id`,
          `duplicate operator id "${id}" (first on line ${firstLine})`,
          {
            firstLine,
          },
        );
      }
      idLine.set(id, line);

      const keyField = this.#required(fields, "public_key", node, path);
      const keyText = this.#string(keyField.value, `${path}.public_key`, keyField.keyNode);
      const decoded = decodePublicKey(keyText);
      if (decoded.raw === undefined) {
        const got = decoded.length === undefined ? "" : ` (this one decodes to ${decoded.length} bytes)`;
        throw this.#invalid(
          keyField.value,
          `${path}.public_key`,
          `must be a raw Ed25519 public key: 32 bytes as 64 hex digits, base64 or base64url${got}`,
          decoded.length === undefined ? undefined : { bytes: decoded.length },
        );
      }
      let publicKey: KeyObject;
      try {
        publicKey = publicKeyFromRaw(decoded.raw);
      } catch {
        throw this.#invalid(keyField.value, `${path}.public_key`, "is not a usable Ed25519 public key");
      }
      const keyId = keyIdOfRaw(decoded.raw);
      const owner = keyOwner.get(keyId);
      if (owner !== undefined) {
        // One key, one operator: the key id is how a console link is mapped to its operator.
        throw this.#invalid(keyField.value, `${path}.public_key`, `same public key as operator "${owner}"`, {
          other: owner,
        });
      }
      keyOwner.set(keyId, id);

      const tenantField = this.#required(fields, "tenant", node, path);
      const tenant = this.#string(tenantField.value, `${path}.tenant`, tenantField.keyNode);
      if (!tenants.has(tenant)) {
        throw this.#invalid(
          tenantField.value,
          `${path}.tenant`,
          `tenant ${quote(tenant)} is not declared under tenants`,
        );
      }

      const roleField = this.#required(fields, "role", node, path);
      const role = this.#string(roleField.value, `${path}.role`, roleField.keyNode);
      if (!(OPERATOR_ROLES as readonly string[]).includes(role)) {
        throw this.#invalid(
          roleField.value,
          `${path}.role`,
          "must be viewer (reads only) or manager (reads and commands)",
        );
      }

      out.push(
        Object.freeze({
          id,
          keyId,
          publicKey,
          publicKeyRaw: decoded.raw,
          tenant,
          role: role as OperatorRole,
        }),
      );
    });
    return out;
  }

  #viewports(field: Field | undefined): ViewportSource[] {
    if (field === undefined || field.value === null) return [];
    const node = this.#deref(field.value);
    const entries = this.#fields(field.value, "viewports", null, field.keyNode);
    const out: ViewportSource[] = [];
    for (const [name, f] of entries) {
      const path = keyPath("viewports", name);
      if (!VIEWPORT_NAME.test(name)) {
        throw this.#invalid(f.keyNode, path, "viewport names are 1-64 of a-z 0-9 - starting with a letter");
      }
      const value = this.#deref(f.value);
      if (value === null || !isMap(value))
        throw this.#invalid(f.value ?? f.keyNode, path, "a viewport is a mapping");
    }
    // One toJS over the whole section so yaml's alias budget (maxAliasCount) covers every viewport
    // together: a billion-laughs document is refused instead of expanded.
    let plain: unknown;
    try {
      plain = (node as YAMLMap).toJS(this.#doc, { maxAliasCount: MAX_ALIAS_COUNT, mapAsMap: false });
    } catch (e) {
      throw syntaxAt(
        this.#source,
        this.#lines,
        field.keyNode.range?.[0] ?? 0,
        "viewports: aliases expand too much (resource exhaustion)",
        { cause: e },
      );
    }
    const record = plain as Record<string, unknown>;
    for (const [name, f] of entries) {
      const { line, column } = this.#pos(f.keyNode);
      out.push(
        Object.freeze({
          name,
          definition: Object.hasOwn(record, name) ? record[name] : undefined,
          line,
          column,
        }),
      );
    }
    return out;
  }

  // --- fields ---

  #address(field: Field, path: string): { host: string; port: number } {
    const text = this.#string(field.value, path, field.keyNode);
    const parsed = parseEndpoint(text);
    if (!parsed.ok) throw this.#invalid(field.value, path, parsed.reason);
    return { host: parsed.host, port: parsed.port };
  }

  #tags(field: Field, path: string): Readonly<Record<string, string>> {
    const node = this.#deref(field.value);
    if (node !== null) {
      const cached = this.#tagsMemo.get(node);
      if (cached !== undefined) return cached;
    }
    const fields = this.#fields(field.value, path, null, field.keyNode);
    if (fields.size > MAX_TAGS) {
      throw this.#invalid(field.value, path, `${fields.size} tags, more than the limit of ${MAX_TAGS}`, {
        limit: MAX_TAGS,
      });
    }
    const tags: Record<string, string> = Object.create(null);
    for (const [key, f] of fields) {
      const p = keyPath(path, key);
      if (!TAG_KEY.test(key)) {
        throw this.#invalid(f.keyNode, p, "tag keys are 1-32 of a-z 0-9 _ - starting with a letter");
      }
      const value = this.#string(f.value, p, f.keyNode);
      if (!TAG_VALUE.test(value)) {
        throw this.#invalid(f.value, p, "tag values are 1-64 of A-Z a-z 0-9 _ . : / - (no `,` or `=`)");
      }
      tags[key] = value;
    }
    // A plain prototype-free object: callers may index it with any key without reaching Object.prototype.
    const frozen = Object.freeze(tags);
    if (node !== null) this.#tagsMemo.set(node, frozen);
    return frozen;
  }

  #tenantList(field: Field, path: string, tenants: ReadonlyMap<string, TenantEntry>): readonly string[] {
    const node = this.#deref(field.value);
    if (node !== null) {
      const cached = this.#tenantListMemo.get(node);
      if (cached !== undefined) return cached;
    }
    const seq = this.#seq(field.value, path, field.keyNode);
    const seen = new Set<string>();
    seq.items.forEach((item, index) => {
      const p = `${path}[${index}]`;
      const id = this.#string(item, p, item ?? seq);
      if (!tenants.has(id)) throw this.#invalid(item, p, `tenant ${quote(id)} is not declared under tenants`);
      if (seen.has(id)) throw this.#invalid(item, p, `tenant "${id}" is listed twice`);
      seen.add(id);
    });
    const list = Object.freeze([...seen]);
    if (node !== null) this.#tenantListMemo.set(node, list);
    return list;
  }

  #displayName(field: Field, path: string): string {
    const name = this.#string(field.value, path, field.keyNode);
    if (name.length === 0 || name.length > MAX_NAME_CHARS || CONTROL_CHARS.test(name)) {
      throw this.#invalid(
        field.value,
        path,
        `names are 1-${MAX_NAME_CHARS} characters without control characters`,
      );
    }
    return name;
  }

  // --- node helpers ---

  #deref(node: unknown): YamlNode | null {
    if (node === null || node === undefined) return null;
    if (isAlias(node)) return this.#aliases.get(node) ?? null;
    if (isScalar(node) && node.value === null) return null; // `key:` / `key: ~` mean "not given"
    return node as YamlNode;
  }

  /**
   * The pairs of a mapping by key text. `allowed` lists the permitted keys (null: any key, for
   * maps whose keys are names). Keys must be plain scalars (duplicates were refused by
   * checkStructure).
   */
  #fields(
    raw: unknown,
    path: string,
    allowed: readonly string[] | null,
    where?: unknown,
  ): Map<string, Field> {
    const node = this.#deref(raw);
    if (node === null || !isMap(node)) {
      throw this.#invalid(raw ?? where ?? null, path === "" ? "(root)" : path, "must be a mapping");
    }
    const out = new Map<string, Field>();
    for (const pair of (node as YAMLMap<unknown, unknown>).items) {
      const key = pair.key;
      if (!isScalar(key) || key.value === null || typeof key.value === "object") {
        throw this.#invalid(key ?? node, path === "" ? "(root)" : path, "keys must be plain strings");
      }
      const text = scalarText(key);
      const p = keyPath(path, text);
      if (allowed !== null && !allowed.includes(text)) {
        throw this.#invalid(key, p, `unknown key ${quote(text)} (expected one of: ${allowed.join(", ")})`);
      }
      const value =
        isScalar(pair.value) && pair.value.value === null ? null : (pair.value as YamlNode | null);
      out.set(text, { keyNode: key as Scalar, value });
    }
    return out;
  }

  #seq(raw: unknown, path: string, where: unknown): YAMLSeq<unknown> {
    const node = this.#deref(raw);
    if (node === null || !isSeq(node)) throw this.#invalid(raw ?? where, path, "must be a list");
    return node as YAMLSeq<unknown>;
  }

  #required(fields: Map<string, Field>, name: string, owner: unknown, path: string): Field {
    const f = fields.get(name);
    if (f === undefined || f.value === null) {
      throw this.#invalid(f?.keyNode ?? owner, `${path === "" ? "" : `${path}.`}${name}`, "is required");
    }
    return f;
  }

  #string(raw: unknown, path: string, where: unknown): string {
    const node = this.#deref(raw);
    if (node === null) throw this.#invalid(raw ?? where, path, "is required");
    if (!isScalar(node)) throw this.#invalid(raw, path, "must be a single value, not a list or mapping");
    return scalarText(node);
  }

  /** Plain decimal integers only: no quotes, hex, octal, exponent or fraction. */
  #int(raw: unknown, path: string, min: number, max: number, where: unknown): number {
    const node = this.#deref(raw);
    if (node === null) throw this.#invalid(raw ?? where, path, "is required");
    const text = isScalar(node) && node.type === "PLAIN" ? scalarText(node) : "";
    const n = Number(text);
    if (!DECIMAL.test(text) || n < min || n > max) {
      throw this.#invalid(raw, path, `must be a whole number from ${min} to ${max}`, { min, max });
    }
    return n;
  }

  #pos(node: unknown): { line: number; column: number } {
    const offset = hasRange(node) ? node.range[0] : 0;
    const { line, col } = this.#lines.linePos(offset);
    return { line, column: col };
  }

  #invalid(node: unknown, path: string, message: string, extra?: OrchErrorDetail): OrchError {
    return this.#invalidAt(hasRange(node) ? node.range[0] : 0, path, message, extra);
  }

  #invalidAt(offset: number, path: string, message: string, extra?: OrchErrorDetail): OrchError {
    const { line, col } = this.#lines.linePos(offset);
    const where = path === "" ? "" : `${path}: `;
    return configError("ORCH_ERR_CONFIG_INVALID", `${this.#source}:${line}:${col}: ${where}${message}`, {
      ...extra,
      source: this.#source,
      line,
      column: col,
      path,
    });
  }
}

function configError(code: OrchErrorCode, message: string, detail: OrchErrorDetail): OrchError {
  return new OrchError(code, message, detail);
}

function hasRange(node: unknown): node is { range: [number, number, number] } {
  return (
    typeof node === "object" &&
    node !== null &&
    "range" in node &&
    Array.isArray((node as { range: unknown }).range) &&
    typeof (node as { range: unknown[] }).range[0] === "number"
  );
}

/**
 * The characters the operator wrote (after unquoting), never YAML's implicit type: `001` stays
 * "001", `2024` stays "2024", `true` stays "true".
 */
function scalarText(node: Scalar): string {
  if (typeof node.source === "string") return node.source;
  return typeof node.value === "string" ? node.value : String(node.value);
}

/** 32 raw bytes from hex (64 digits) or canonical base64/base64url (43 characters, optional `=`). */
function decodePublicKey(text: string): { raw?: Uint8Array; length?: number } {
  const s = text.trim();
  if (/^[0-9a-fA-F]*$/.test(s) && s.length % 2 === 0 && s.length > 0 && s.length <= 256) {
    if (s.length === 64) return { raw: new Uint8Array(Buffer.from(s, "hex")) };
    return { length: s.length / 2 };
  }
  const m = /^([A-Za-z0-9+/_-]{1,344})(={0,2})$/.exec(s);
  if (m === null) return {};
  const body = m[1]!;
  if (/[+/]/.test(body) && /[-_]/.test(body)) return {}; // mixed alphabets
  const bytes = Buffer.from(body, "base64url");
  if (bytes.length !== 32) return { length: bytes.length };
  // Canonical only: the unused low bits of the last character must be zero, so one key has one text.
  if (bytes.toString("base64url") !== body.replace(/\+/g, "-").replace(/\//g, "_")) return {};
  return { raw: new Uint8Array(bytes) };
}

function sameTags(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((x) => set.has(x));
}
