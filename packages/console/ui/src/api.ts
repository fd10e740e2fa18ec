/**
 * The dashboard's view of the `os-console ui` JSON API (same origin; the HttpOnly session cookie
 * goes with every fetch by default). Every body is size-bounded while it is read and decoded
 * structurally before use.
 */
import {
  array,
  bool,
  cell,
  type Decoder,
  int,
  literal,
  nullable,
  num,
  object,
  optional,
  parseJson,
  record,
  str,
} from "./decode.ts";
import { clip, UiError } from "./errors.ts";
import { SseParser } from "./sse.ts";

export type { Cell } from "./format.ts";

/** Bounds on what the server may send (a 10,000-Totebox fan-out is a few MB). */
export const API_LIMITS = Object.freeze({
  maxBodyBytes: 64 * 1024 * 1024,
  maxOutcomes: 100_000,
  maxSections: 64,
  maxColumns: 256,
  maxRows: 1_000_000,
  maxEventsPerPage: 100_000,
  maxFleet: 100_000,
  maxViewports: 256,
  maxTags: 1_000,
});

export const TOTEBOX_STATUSES = ["ok", "timeout", "offline", "denied", "suppressed", "error"] as const;
export type ToteboxStatus = (typeof TOTEBOX_STATUSES)[number];
export const COLUMN_TYPES = ["string", "integer", "number", "date", "boolean"] as const;
export type ColumnType = (typeof COLUMN_TYPES)[number];
export const CHART_TYPES = ["bar", "line", "pie", "table", "tiles"] as const;
export type ChartType = (typeof CHART_TYPES)[number];

export interface Problem {
  readonly code: string;
  readonly message: string;
}
export interface Column {
  readonly name: string;
  readonly type: ColumnType;
}
export interface ChartHint {
  readonly type: ChartType;
  readonly x?: string | undefined;
  readonly y?: readonly string[] | undefined;
}
export interface Section {
  readonly name: string;
  readonly title: string;
  readonly columns: readonly Column[];
  readonly rows: readonly (readonly (string | number | boolean | null)[])[];
  readonly chart: ChartHint | null;
}
export interface Answer {
  readonly view: string;
  readonly rowCount: number;
  readonly suppressedGroups: number;
  readonly watermark: string;
}
export interface Outcome {
  readonly totebox: string;
  readonly name: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly status: ToteboxStatus;
  readonly code: string | null;
  readonly reason: string;
  readonly elapsedMs: number;
  readonly answers: readonly Answer[];
  readonly verified: boolean;
  readonly verifyCode: string | null;
}
export interface Verification {
  readonly receipts: "all" | "some" | "none";
  readonly recomputed: boolean | null;
  readonly verified: boolean;
}
export type Scalar = string | number | boolean | null;
export interface UiResult {
  readonly id: string;
  readonly kind: string;
  readonly name: string;
  readonly params: Readonly<Record<string, Scalar>>;
  readonly mode: string;
  readonly targeted: number;
  readonly answered: number;
  readonly partial: boolean;
  readonly startedAt: number;
  readonly finishedAt: number;
  readonly error: Problem | null;
  readonly outcomes: readonly Outcome[];
  readonly sections: readonly Section[];
  readonly verification: Verification;
}
export interface ProgressEvent {
  readonly seq: number;
  readonly totebox: string;
  readonly status: ToteboxStatus;
  readonly code: string | null;
  readonly reason: string;
  readonly elapsedMs: number;
  readonly answered: number;
  readonly targeted: number;
}
export interface FanOutPage {
  readonly events: readonly ProgressEvent[];
  readonly cursor: number;
  readonly done: boolean;
  readonly answered: number;
  readonly targeted: number;
}
export interface ViewportInfo {
  readonly name: string;
  readonly description: string;
  readonly params: readonly { name: string; type: string; default: Scalar | undefined }[];
  readonly views: readonly string[];
  readonly sections: readonly {
    name: string;
    title: string;
    columns: readonly Column[];
    chart: ChartHint | null;
  }[];
}
export interface Session {
  readonly operator: { readonly id: string; readonly tenant: string; readonly role: string };
  readonly aggregator: { readonly fingerprint: string; readonly address: string };
  readonly viewports: readonly ViewportInfo[];
  readonly tags: readonly string[];
}
export interface FleetEntry {
  readonly id: string;
  readonly name: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly state: string;
  readonly health: string;
  readonly online: boolean;
  readonly inGrant: boolean;
  readonly lastContact: number | null;
  readonly lastError: Problem | null;
  readonly fingerprint: string;
  readonly views: readonly string[];
}
export interface FanOutRequest {
  readonly kind: "viewport" | "read";
  readonly name: string;
  readonly params?: Readonly<Record<string, string | number | boolean>>;
  readonly targets?: readonly string[];
  readonly mode?: "warn" | "abort";
  readonly timeoutMs?: number;
}

// ---------------------------------------------------------------------------------------------
// Decoders

const id = str(1024);
const name = str(1024);
const text = str();
const scalar: Decoder<Scalar> = cell;
const problem: Decoder<Problem> = object({ code: str(256), message: text });
const tags = record(str(1024), 256);
const column: Decoder<Column> = object({ name, type: literal(COLUMN_TYPES) });
const chartHint: Decoder<ChartHint> = object({
  type: literal(CHART_TYPES),
  x: optional(name),
  y: optional(array(name, API_LIMITS.maxColumns)),
});
/** Absent (the aggregator's `undefined` vanishes in JSON) or null both mean "no chart". */
const chart: Decoder<ChartHint | null> = (v, path) =>
  v === undefined || v === null ? null : chartHint(v, path);

/**
 * A fan-out's parameters: the UI only reads scalars (as_of, group_by). A non-scalar value (the
 * protocol allows lists and bytes) is left out rather than failing the whole result.
 */
const params: Decoder<Record<string, Scalar>> = (v, path) => {
  const all = record((x) => x, 128)(v, path);
  const out = Object.create(null) as Record<string, Scalar>;
  for (const [k, x] of Object.entries(all)) {
    if (x === null || typeof x === "boolean" || (typeof x === "number" && Number.isFinite(x))) out[k] = x;
    else if (typeof x === "string" && x.length <= 4096) out[k] = x;
  }
  return out;
};

const section: Decoder<Section> = (v, path) => {
  const s = object({
    name,
    title: text,
    columns: array(column, API_LIMITS.maxColumns),
    rows: array(array(cell, API_LIMITS.maxColumns), API_LIMITS.maxRows),
    chart,
  })(v, path);
  // A row that does not match its columns would shift every figure after it: refuse it.
  s.rows.forEach((r, i) => {
    if (r.length !== s.columns.length) {
      throw new UiError(
        "UI_ERR_BAD_RESPONSE",
        `${path}.rows[${i}]: ${r.length} cells for ${s.columns.length} columns`,
      );
    }
  });
  return s;
};

const outcome: Decoder<Outcome> = object({
  totebox: id,
  name,
  tags,
  status: literal(TOTEBOX_STATUSES),
  code: nullable(str(256)),
  reason: text,
  elapsedMs: num,
  answers: array(
    object({ view: name, rowCount: int, suppressedGroups: int, watermark: text }),
    API_LIMITS.maxSections,
  ),
  verified: bool,
  verifyCode: nullable(str(256)),
});

export const decodeUiResult: Decoder<UiResult> = object({
  id,
  kind: name,
  name,
  params,
  mode: name,
  targeted: int,
  answered: int,
  partial: bool,
  startedAt: num,
  finishedAt: num,
  error: nullable(problem),
  outcomes: array(outcome, API_LIMITS.maxOutcomes),
  sections: array(section, API_LIMITS.maxSections),
  verification: object({
    receipts: literal(["all", "some", "none"] as const),
    recomputed: nullable(bool),
    verified: bool,
  }),
});

const progressEvent: Decoder<ProgressEvent> = object({
  seq: int,
  totebox: id,
  status: literal(TOTEBOX_STATUSES),
  code: nullable(str(256)),
  reason: text,
  elapsedMs: num,
  answered: int,
  targeted: int,
});

export const decodeFanOutPage: Decoder<FanOutPage> = object({
  events: array(progressEvent, API_LIMITS.maxEventsPerPage),
  cursor: int,
  done: bool,
  answered: int,
  targeted: int,
});

const viewportInfo: Decoder<ViewportInfo> = object({
  name,
  description: text,
  params: array(object({ name, type: name, default: optional(scalar) }), 64),
  views: array(name, 64),
  sections: array(
    object({ name, title: text, columns: array(column, API_LIMITS.maxColumns), chart }),
    API_LIMITS.maxSections,
  ),
});

export const decodeSession: Decoder<Session> = object({
  operator: object({ id, tenant: name, role: name }),
  aggregator: object({ fingerprint: str(256), address: str(1024) }),
  viewports: array(viewportInfo, API_LIMITS.maxViewports),
  tags: array(name, API_LIMITS.maxTags),
});

const fleetEntry: Decoder<FleetEntry> = object({
  id,
  name,
  tags,
  state: name,
  health: name,
  online: bool,
  inGrant: bool,
  lastContact: nullable(num),
  lastError: nullable(problem),
  fingerprint: str(256),
  views: array(name, 1024),
});
export const decodeFleet: Decoder<FleetEntry[]> = array(fleetEntry, API_LIMITS.maxFleet);

// ---------------------------------------------------------------------------------------------
// HTTP

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface Api {
  session(): Promise<Session>;
  fleet(): Promise<FleetEntry[]>;
  start(req: FanOutRequest): Promise<{ id: string }>;
  /**
   * Follows a fan-out's progress stream, calling `onPage` per progress page, and resolves with its
   * result. If the stream breaks or ends without a result, falls back to GET /api/fanouts/:id.
   */
  follow(id: string, onPage: (p: FanOutPage) => void, signal?: AbortSignal): Promise<UiResult>;
  result(id: string, signal?: AbortSignal): Promise<UiResult>;
  cancel(id: string): Promise<{ cancelled: boolean }>;
}

/** Reads a body with a running byte count, so an endless body is cut at the bound, not after. */
export async function readBounded(res: Response, maxBytes: number): Promise<string> {
  const declared = Number(res.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw new UiError("UI_ERR_TOO_LARGE", `response larger than ${maxBytes} bytes`);
  if (!res.body) return "";
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let total = 0;
  let out = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      throw new UiError("UI_ERR_TOO_LARGE", `response larger than ${maxBytes} bytes`);
    }
    out += decoder.decode(value, { stream: true });
  }
  return out + decoder.decode();
}

const errorBody: Decoder<Problem | undefined> = (v) => {
  // The server's error shape is {code, message} or {error: {code, message}}; anything else is ignored.
  const candidates = [v, typeof v === "object" && v !== null ? (v as { error?: unknown }).error : undefined];
  for (const c of candidates) {
    try {
      return problem(c, "error");
    } catch {}
  }
  return undefined;
};

async function httpError(res: Response): Promise<UiError> {
  let p: Problem | undefined;
  try {
    p = errorBody(JSON.parse(await readBounded(res, 64 * 1024)), "error");
  } catch {}
  if (res.status === 401 || res.status === 403) {
    return new UiError(
      "UI_ERR_UNAUTHORIZED",
      "No console session: open the address that `os-console ui` printed (it carries a one-time link).",
    );
  }
  return p
    ? new UiError(p.code, clip(p.message))
    : new UiError("UI_ERR_HTTP", `the console server answered HTTP ${res.status}`);
}

export function createApi(base = "", fetchImpl: FetchLike = (i, init) => fetch(i, init)): Api {
  async function call(path: string, init: RequestInit = {}): Promise<Response> {
    let res: Response;
    try {
      res = await fetchImpl(base + path, { credentials: "same-origin", ...init });
    } catch (e) {
      if (e instanceof Error && e.name === "AbortError") throw e;
      throw new UiError("UI_ERR_NETWORK", "the console server did not answer (is `os-console ui` running?)");
    }
    if (!res.ok) throw await httpError(res);
    return res;
  }

  async function json<T>(path: string, d: Decoder<T>, what: string, init?: RequestInit): Promise<T> {
    const res = await call(path, init);
    return parseJson(await readBounded(res, API_LIMITS.maxBodyBytes), d, what);
  }

  const result = (fid: string, signal?: AbortSignal) =>
    json(`/api/fanouts/${encodeURIComponent(fid)}`, decodeUiResult, "result", signal ? { signal } : {});

  return {
    session: () => json("/api/session", decodeSession, "session"),
    fleet: () => json("/api/fleet", decodeFleet, "fleet"),
    start: (req) =>
      json("/api/fanouts", object({ id }), "start", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(req),
      }),
    result,
    cancel: (fid) =>
      json(`/api/fanouts/${encodeURIComponent(fid)}/cancel`, object({ cancelled: bool }), "cancel", {
        method: "POST",
      }),
    async follow(fid, onPage, signal) {
      try {
        const res = await call(`/api/fanouts/${encodeURIComponent(fid)}/events`, {
          headers: { accept: "text/event-stream" },
          ...(signal ? { signal } : {}),
        });
        const got = await readEvents(res, onPage);
        if (got) return got;
      } catch (e) {
        // A decode or size failure is the server's fault and final; a broken stream is retried below.
        if (signal?.aborted) throw e;
        if (e instanceof UiError && e.code !== "UI_ERR_NETWORK" && e.code !== "UI_ERR_STREAM") throw e;
      }
      return result(fid, signal);
    },
  };
}

/** Reads an SSE body: progress pages to `onPage`, returns the result (or null if it never came). */
async function readEvents(res: Response, onPage: (p: FanOutPage) => void): Promise<UiResult | null> {
  if (!res.body) return null;
  const parser = new SseParser(API_LIMITS.maxBodyBytes);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch {
        throw new UiError("UI_ERR_STREAM", "the progress stream broke");
      }
      // An event not closed by a blank line before the end is incomplete and dropped (as EventSource does).
      const textChunk = chunk.done ? decoder.decode() : decoder.decode(chunk.value, { stream: true });
      for (const ev of parser.feed(textChunk)) {
        if (ev.event === "progress") onPage(parseJson(ev.data, decodeFanOutPage, "progress"));
        else if (ev.event === "result") return parseJson(ev.data, decodeUiResult, "result");
        else if (ev.event === "failure") {
          // The server could not produce a result (its own code); final, no fallback.
          const p = parseJson(ev.data, problem, "failure");
          throw new UiError(p.code, clip(p.message));
        }
      }
      if (chunk.done) return null;
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}
