/**
 * Viewports: declarative questions over the fleet.
 *
 * A viewport names the views to read from each targeted Totebox (with parameters, literal or
 * `$param` references to the viewport's own parameters) and a combine step: one or more SQL
 * sections run in a per-request, in-memory DuckDB over the union of the answers (combine.ts).
 *
 * Definitions come from configuration (builtin-viewports.yaml, the operator's fleet.yaml): trusted
 * to be well-meant, not to be well-formed. `compileViewports` checks every field (unknown keys,
 * types, names, sizes) and then prepares and runs every section's SQL against empty tables of the
 * declared shapes in the same sandboxed DuckDB the requests use, so a viewport with a typo, an
 * unknown table or column, or columns that differ from what its SQL returns is refused at load
 * (ORCH_ERR_VIEWPORT_INVALID, naming the viewport and where it was defined), never at 3 a.m.
 *
 * Names that end up in SQL (`as` table names, column names, parameter names) are restricted to
 * lower-case identifiers starting with a letter, so they never need escaping and never collide
 * with `__proto__`-style keys when used as record keys.
 */
import { readFileSync } from "node:fs";
import { COLUMN_TYPES, type ColumnSpec, type ColumnType } from "@os-orchestration/psp";
import { isMap, isScalar, LineCounter, parseDocument } from "yaml";
import { compileSection, planViewportLoads, type SqlSandbox, withSandbox } from "./combine.ts";
import { OrchError } from "./errors.ts";

export type ParamType = "tag" | "string" | "date" | "integer" | "boolean";
export const PARAM_TYPES: readonly ParamType[] = ["tag", "string", "date", "integer", "boolean"];

export interface ViewportParamSpec {
  readonly name: string;
  readonly type: ParamType;
  /** A value of `type`; for dates also "today" (resolved per request with the injected clock). */
  readonly default: string | number | boolean | undefined;
  readonly required: boolean;
}

export interface ViewportRead {
  readonly view: string;
  /** The DuckDB table the combine SQL reads this view's answers from. */
  readonly as: string;
  /** Literals, or "$param" references to the viewport's parameters. */
  readonly params: Readonly<Record<string, string | number | boolean>>;
  readonly columns: readonly ColumnSpec[];
}

export interface ChartHint {
  readonly type: "bar" | "line" | "pie" | "table" | "tiles";
  readonly x?: string;
  readonly y?: readonly string[];
}

export interface ViewportSection {
  readonly name: string;
  /** May contain "$param" references, substituted per request (combine.ts). */
  readonly title: string;
  readonly sql: string;
  readonly columns: readonly ColumnSpec[];
  readonly chart: ChartHint | undefined;
}

export interface Viewport {
  readonly name: string;
  readonly description: string;
  readonly params: readonly ViewportParamSpec[];
  /** Default target selectors when a request names none; [] means every Totebox the grant reaches. */
  readonly targets: readonly string[];
  readonly reads: readonly ViewportRead[];
  readonly sections: readonly ViewportSection[];
  readonly builtin: boolean;
}

/** Bounds on definitions: configuration is parsed before anyone looks at it. */
export const VIEWPORT_LIMITS = Object.freeze({
  maxViewports: 256,
  maxParams: 32,
  maxReads: 16,
  maxReadParams: 32,
  maxSections: 16,
  maxColumns: 128,
  maxTargets: 1_000,
  maxTargetChars: 256,
  maxSqlChars: 64 * 1024,
  maxTextChars: 1_000,
  maxStringParamChars: 1_024,
  maxGivenParams: 64,
});

/**
 * The columns of the default policy's views (packages/totebox/src/default-policy.yaml): a read of
 * one of these views may omit `columns:`. viewports.test.ts keeps this map equal to the policy.
 */
export const DEFAULT_VIEW_COLUMNS: Readonly<Record<string, readonly ColumnSpec[]>> = deepFreeze({
  position: cols({
    as_of: "date",
    currency: "string",
    cash: "integer",
    assets: "integer",
    liabilities: "integer",
    equity: "integer",
    debt: "integer",
    net_value: "integer",
  }),
  "income-summary": cols({
    period: "string",
    start_date: "date",
    end_date: "date",
    income: "integer",
    expenses: "integer",
    net: "integer",
  }),
  occupancy: cols({
    as_of: "date",
    units: "integer",
    occupied_units: "integer",
    occupancy_ratio: "number",
    area_sqm: "number",
    occupied_area_sqm: "number",
    monthly_rent_roll: "integer",
    average_rent: "integer",
  }),
  "rent-roll-summary": cols({
    property_id: "string",
    property_name: "string",
    property_type: "string",
    unit_type: "string",
    units: "integer",
    leased_units: "integer",
    area_sqm: "number",
    monthly_rent: "integer",
    average_rent: "integer",
    rent_per_sqm: "number",
  }),
  intercompany: cols({
    counterparty_entity: "string",
    counterparty_name: "string",
    balance: "integer",
    lines: "integer",
  }),
  "archive-health": cols({
    entries: "integer",
    lines: "integer",
    first_entry_date: "date",
    last_entry_date: "date",
    last_recorded_at: "string",
    last_seq: "integer",
    head_hash: "string",
    pending_staged_entries: "integer",
  }),
});

function cols(m: Record<string, ColumnType>): ColumnSpec[] {
  return Object.entries(m).map(([name, type]) => ({ name, type }));
}

// ---------------------------------------------------------------------------------------------
// Names

const VIEWPORT_NAME = /^[a-z][a-z0-9_-]{0,63}$/;
/** Same rule as the Totebox policy's view names. */
const VIEW_NAME = /^[a-z][a-z0-9_-]{0,63}$/;
const SECTION_NAME = /^[a-z][a-z0-9_-]{0,63}$/;
/** Names used inside SQL (tables, columns, `$params`) and as record keys. */
const SQL_NAME = /^[a-z][a-z0-9_]{0,62}$/;
/** Parameter names of a Totebox view (its policy's rule). */
const VIEW_PARAM_NAME = /^[a-z][a-z0-9_]{0,63}$/;
const PARAM_REF = /^\$([a-z][a-z0-9_]{0,62})$/;
const DATE_RE = /^(\d{4})-(\d{2})-(\d{2})$/;
/** Text forms a console's command line may send (same canonical forms the Totebox accepts). */
const INTEGER_TEXT = /^-?(0|[1-9][0-9]{0,15})$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: replacing control characters is the point
const CONTROLS = /[\u0000-\u001f\u007f]/g;
/** Tables every combine sees besides the reads. */
const RESERVED_TABLES = new Set(["coverage"]);
/** Columns every read table has before the view's own. */
const RESERVED_COLUMNS = new Set(["totebox", "tags"]);
const CHART_TYPES = ["bar", "line", "pie", "table", "tiles"] as const;

export function isCalendarDate(s: string): boolean {
  const m = DATE_RE.exec(s);
  if (!m) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const t = new Date(Date.UTC(y, mo - 1, d));
  return t.getUTCFullYear() === y && t.getUTCMonth() === mo - 1 && t.getUTCDate() === d;
}

/** A tag key: what `group_by` names. Bound as a SQL parameter, so only shape and size matter. */
function isTagKey(s: string): boolean {
  return s.length > 0 && s.length <= 128 && !CONTROL.test(s) && !s.includes("=") && !s.includes(",");
}

// ---------------------------------------------------------------------------------------------
// Structure

interface Where {
  readonly viewport: string;
  readonly line: number;
  readonly column: number;
}

function invalid(at: Where, problem: string, extra?: Record<string, string | number>): OrchError {
  return new OrchError("ORCH_ERR_VIEWPORT_INVALID", `viewport "${at.viewport}": ${problem}`, {
    name: at.viewport,
    line: at.line,
    column: at.column,
    problem,
    ...extra,
  });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function objectOf(at: Where, v: unknown, what: string): Record<string, unknown> {
  if (!isPlainObject(v)) throw invalid(at, `${what} must be a mapping`);
  return v;
}

function onlyKeys(at: Where, o: Record<string, unknown>, allowed: readonly string[], what: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw invalid(at, `${what} has an unknown key "${clip(k)}"`);
  }
}

function textOf(at: Where, v: unknown, what: string, max: number = VIEWPORT_LIMITS.maxTextChars): string {
  if (typeof v !== "string") throw invalid(at, `${what} must be a string`);
  if (v.length > max) throw invalid(at, `${what} is longer than ${max} characters`);
  return v;
}

function nameOf(at: Where, v: unknown, re: RegExp, what: string): string {
  if (typeof v !== "string" || !re.test(v)) {
    throw invalid(at, `${what} must match ${re.source}`);
  }
  return v;
}

/** Keys of configuration echoed in messages are clipped: a hostile file cannot flood the log. */
function clip(s: string): string {
  const t = s.replace(CONTROLS, "?");
  return t.length > 64 ? `${t.slice(0, 64)}…` : t;
}

function columnsOf(at: Where, v: unknown, what: string): ColumnSpec[] {
  const o = objectOf(at, v, what);
  const entries = Object.entries(o);
  if (entries.length === 0) throw invalid(at, `${what} must declare at least one column`);
  if (entries.length > VIEWPORT_LIMITS.maxColumns) {
    throw invalid(at, `${what} declares more than ${VIEWPORT_LIMITS.maxColumns} columns`);
  }
  return entries.map(([name, type]) => {
    nameOf(at, name, SQL_NAME, `${what}: column "${clip(name)}"`);
    if (typeof type !== "string" || !(COLUMN_TYPES as readonly string[]).includes(type)) {
      throw invalid(at, `${what}: column "${name}" has type other than ${COLUMN_TYPES.join(" | ")}`);
    }
    return { name, type: type as ColumnType };
  });
}

function paramDefault(at: Where, name: string, type: ParamType, v: unknown): string | number | boolean {
  const bad = () => invalid(at, `param "${name}": default is not a valid ${type}`);
  switch (type) {
    case "tag":
      if (typeof v !== "string" || !isTagKey(v)) throw bad();
      return v;
    case "string":
      if (typeof v !== "string" || v.length > VIEWPORT_LIMITS.maxStringParamChars) throw bad();
      return v;
    case "date":
      if (typeof v !== "string" || !(v === "today" || isCalendarDate(v))) throw bad();
      return v;
    case "integer":
      if (typeof v !== "number" || !Number.isSafeInteger(v)) throw bad();
      return v;
    case "boolean":
      if (typeof v !== "boolean") throw bad();
      return v;
  }
}

function paramsOf(at: Where, v: unknown): ViewportParamSpec[] {
  if (v === undefined || v === null) return [];
  const o = objectOf(at, v, "params");
  const entries = Object.entries(o);
  if (entries.length > VIEWPORT_LIMITS.maxParams) {
    throw invalid(at, `more than ${VIEWPORT_LIMITS.maxParams} params`);
  }
  return entries.map(([name, raw]) => {
    nameOf(at, name, SQL_NAME, `param "${clip(name)}": name`);
    const spec = objectOf(at, raw, `param "${name}"`);
    onlyKeys(at, spec, ["type", "default", "required"], `param "${name}"`);
    const type = spec.type;
    if (typeof type !== "string" || !(PARAM_TYPES as readonly string[]).includes(type)) {
      throw invalid(at, `param "${name}": type must be one of ${PARAM_TYPES.join(" | ")}`);
    }
    const t = type as ParamType;
    if (spec.required !== undefined && typeof spec.required !== "boolean") {
      throw invalid(at, `param "${name}": required must be true or false`);
    }
    const required = spec.required === true;
    const def = spec.default === undefined ? undefined : paramDefault(at, name, t, spec.default);
    // A default on a required param could never be used: the definition is confused, say so.
    if (required && def !== undefined) throw invalid(at, `param "${name}": required params take no default`);
    return { name, type: t, default: def, required };
  });
}

function targetsOf(at: Where, v: unknown): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw invalid(at, "targets must be a list of selectors or Totebox ids");
  if (v.length > VIEWPORT_LIMITS.maxTargets) {
    throw invalid(at, `more than ${VIEWPORT_LIMITS.maxTargets} targets`);
  }
  return v.map((t, i) => {
    if (
      typeof t !== "string" ||
      t.length === 0 ||
      t.length > VIEWPORT_LIMITS.maxTargetChars ||
      CONTROL.test(t)
    ) {
      throw invalid(at, `targets[${i}] must be a selector ("key=value,...") or a Totebox id`);
    }
    return t;
  });
}

function readsOf(at: Where, v: unknown, params: readonly ViewportParamSpec[]): ViewportRead[] {
  if (!Array.isArray(v) || v.length === 0) throw invalid(at, "reads must be a non-empty list");
  if (v.length > VIEWPORT_LIMITS.maxReads) throw invalid(at, `more than ${VIEWPORT_LIMITS.maxReads} reads`);
  const declared = new Set(params.map((p) => p.name));
  const seen = new Set<string>();
  return v.map((raw, i) => {
    const what = `reads[${i}]`;
    const o = objectOf(at, raw, what);
    onlyKeys(at, o, ["view", "as", "params", "columns"], what);
    const view = nameOf(at, o.view, VIEW_NAME, `${what}: view`);
    // `as` defaults to the view's name made an identifier (income-summary → income_summary).
    const as = nameOf(at, o.as ?? view.replaceAll("-", "_"), SQL_NAME, `${what}: as`);
    if (RESERVED_TABLES.has(as)) throw invalid(at, `${what}: "as: ${as}" is reserved`);
    if (seen.has(as)) throw invalid(at, `${what}: duplicate "as: ${as}"`);
    seen.add(as);

    const readParams: Record<string, string | number | boolean> = {};
    if (o.params !== undefined && o.params !== null) {
      const p = objectOf(at, o.params, `${what}: params`);
      const entries = Object.entries(p);
      if (entries.length > VIEWPORT_LIMITS.maxReadParams) {
        throw invalid(at, `${what}: more than ${VIEWPORT_LIMITS.maxReadParams} params`);
      }
      for (const [k, val] of entries) {
        nameOf(at, k, VIEW_PARAM_NAME, `${what}: param "${clip(k)}"`);
        if (typeof val === "string" && val.startsWith("$")) {
          const m = PARAM_REF.exec(val);
          if (!m || !declared.has(m[1]!)) {
            throw invalid(at, `${what}: param "${k}" refers to undeclared viewport param "${clip(val)}"`);
          }
        } else if (typeof val === "string") {
          if (val.length > VIEWPORT_LIMITS.maxStringParamChars) {
            throw invalid(at, `${what}: param "${k}" is too long`);
          }
        } else if (!(typeof val === "boolean" || (typeof val === "number" && Number.isFinite(val)))) {
          throw invalid(at, `${what}: param "${k}" must be a string, number, boolean or "$param"`);
        }
        readParams[k] = val as string | number | boolean;
      }
    }

    let columns: ColumnSpec[];
    if (o.columns === undefined || o.columns === null) {
      const known = Object.hasOwn(DEFAULT_VIEW_COLUMNS, view) ? DEFAULT_VIEW_COLUMNS[view] : undefined;
      if (!known) {
        throw invalid(at, `${what}: view "${view}" is not a default view, so its columns must be declared`);
      }
      columns = known.map((c) => ({ ...c }));
    } else {
      columns = columnsOf(at, o.columns, `${what}: columns`);
    }
    for (const c of columns) {
      if (RESERVED_COLUMNS.has(c.name)) throw invalid(at, `${what}: column "${c.name}" is reserved`);
    }
    return { view, as, params: readParams, columns };
  });
}

function chartOf(at: Where, v: unknown, columns: readonly ColumnSpec[], what: string): ChartHint | undefined {
  if (v === undefined || v === null) return undefined;
  const o = objectOf(at, v, `${what}: chart`);
  onlyKeys(at, o, ["type", "x", "y"], `${what}: chart`);
  if (typeof o.type !== "string" || !(CHART_TYPES as readonly string[]).includes(o.type)) {
    throw invalid(at, `${what}: chart type must be one of ${CHART_TYPES.join(" | ")}`);
  }
  const names = new Set(columns.map((c) => c.name));
  const col = (c: unknown, w: string): string => {
    if (typeof c !== "string" || !names.has(c))
      throw invalid(at, `${what}: chart ${w} is not a declared column`);
    return c;
  };
  const chart: { type: ChartHint["type"]; x?: string; y?: string[] } = { type: o.type as ChartHint["type"] };
  if (o.x !== undefined) chart.x = col(o.x, "x");
  if (o.y !== undefined) {
    const ys = typeof o.y === "string" ? [o.y] : o.y;
    if (!Array.isArray(ys) || ys.length === 0) throw invalid(at, `${what}: chart y must list columns`);
    chart.y = ys.map((y) => col(y, "y"));
  }
  return chart;
}

function sectionsOf(at: Where, v: unknown): ViewportSection[] {
  if (!Array.isArray(v) || v.length === 0) throw invalid(at, "sections must be a non-empty list");
  if (v.length > VIEWPORT_LIMITS.maxSections) {
    throw invalid(at, `more than ${VIEWPORT_LIMITS.maxSections} sections`);
  }
  const seen = new Set<string>();
  return v.map((raw, i) => {
    let what = `sections[${i}]`;
    const o = objectOf(at, raw, what);
    onlyKeys(at, o, ["name", "title", "sql", "columns", "chart"], what);
    const name = nameOf(at, o.name, SECTION_NAME, `${what}: name`);
    what = `section "${name}"`;
    if (seen.has(name)) throw invalid(at, `duplicate section "${name}"`);
    seen.add(name);
    const title = o.title === undefined ? name : textOf(at, o.title, `${what}: title`);
    const sql = textOf(at, o.sql, `${what}: sql`, VIEWPORT_LIMITS.maxSqlChars);
    if (sql.trim() === "") throw invalid(at, `${what}: sql is empty`);
    if (o.columns === undefined) throw invalid(at, `${what}: columns must be declared`);
    const columns = columnsOf(at, o.columns, `${what}: columns`);
    const dup = columns.find((c, j) => columns.findIndex((d) => d.name === c.name) !== j);
    if (dup) throw invalid(at, `${what}: column "${dup.name}" is declared twice`);
    const chart = chartOf(at, o.chart, columns, what);
    return { name, title, sql, columns, chart };
  });
}

function structureOf(source: SourceDef, builtin: boolean): Viewport {
  const at: Where = {
    viewport: typeof source.name === "string" ? clip(source.name) : "?",
    line: source.line,
    column: source.column,
  };
  nameOf(at, source.name, VIEWPORT_NAME, "viewport name");
  const o = objectOf(at, source.definition, "the definition");
  onlyKeys(at, o, ["description", "params", "targets", "reads", "sections"], "the definition");
  const description = o.description === undefined ? "" : textOf(at, o.description, "description");
  const params = paramsOf(at, o.params);
  const targets = targetsOf(at, o.targets);
  const reads = readsOf(at, o.reads, params);
  const sections = sectionsOf(at, o.sections);
  return { name: source.name, description, params, targets, reads, sections, builtin };
}

interface SourceDef {
  name: string;
  definition: unknown;
  line: number;
  column: number;
}

// ---------------------------------------------------------------------------------------------
// Compile

/**
 * Compiles definitions (validates structure AND prepares every section's SQL in DuckDB against
 * empty tables of the declared shapes, so a bad viewport is refused at load). Errors:
 * ORCH_ERR_VIEWPORT_INVALID with name (the viewport's), line, column, problem (and section, for a
 * SQL problem) in `detail`; line and column are the caller's: where the definition starts.
 */
export async function compileViewports(
  sources: readonly { name: string; definition: unknown; line: number; column: number }[],
  options: { builtin?: boolean } = {},
): Promise<Map<string, Viewport>> {
  if (sources.length > VIEWPORT_LIMITS.maxViewports) {
    throw new OrchError("ORCH_ERR_VIEWPORT_INVALID", `more than ${VIEWPORT_LIMITS.maxViewports} viewports`, {
      limit: VIEWPORT_LIMITS.maxViewports,
    });
  }
  const builtin = options.builtin === true;
  const out = new Map<string, Viewport>();
  const where = new Map<string, Where>();
  for (const s of sources) {
    const v = structureOf(s, builtin);
    const at = { viewport: v.name, line: s.line, column: s.column };
    if (out.has(v.name)) throw invalid(at, "is defined twice");
    out.set(v.name, v);
    where.set(v.name, at);
  }
  if (out.size === 0) return out;
  await withSandbox(async (box: SqlSandbox) => {
    for (const v of out.values()) {
      const at = where.get(v.name)!;
      await box.inScratch(v, async () => {
        for (const section of v.sections) {
          const problem = await compileSection(box, v, section);
          if (problem !== undefined) {
            throw invalid(at, `section "${section.name}": ${problem}`, { section: section.name });
          }
        }
      });
      // Which input columns its sections can observe: the combine loads only those.
      await planViewportLoads(box, v);
    }
  });
  for (const v of out.values()) deepFreeze(v);
  return out;
}

let builtins: Promise<Map<string, Viewport>> | undefined;

/**
 * The built-in viewports (builtin-viewports.yaml), compiled once per process. The map returned is
 * a fresh copy each call; the viewports in it are frozen and shared.
 */
export async function builtinViewports(): Promise<Map<string, Viewport>> {
  builtins ??= loadBuiltins().catch((e: unknown) => {
    builtins = undefined;
    throw e;
  });
  return new Map(await builtins);
}

async function loadBuiltins(): Promise<Map<string, Viewport>> {
  const text = readFileSync(new URL("./builtin-viewports.yaml", import.meta.url), "utf8");
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  if (doc.errors.length > 0 || !isMap(doc.contents)) {
    throw new OrchError("ORCH_ERR_INTERNAL", "builtin-viewports.yaml does not parse as a mapping");
  }
  const sources = doc.contents.items.map((pair) => {
    const key = isScalar(pair.key) ? pair.key : undefined;
    const pos = lineCounter.linePos(key?.range?.[0] ?? 0);
    return {
      name: String(key?.value ?? ""),
      definition: pair.value === null ? null : (pair.value as { toJS(d: unknown): unknown }).toJS(doc),
      line: pos.line,
      column: pos.col,
    };
  });
  return compileViewports(sources, { builtin: true });
}

// ---------------------------------------------------------------------------------------------
// Parameters

function paramError(v: Viewport, param: string, problem: string): OrchError {
  return new OrchError("ORCH_ERR_VIEWPORT_PARAM", `viewport "${v.name}": param "${param}" ${problem}`, {
    viewport: v.name,
    param,
  });
}

/**
 * Resolves request params against the spec: defaults, "today" (the caller's UTC date from its
 * injected clock), type checks. Hostile input (a console's request): unknown names, wrong types and
 * oversize values are ORCH_ERR_VIEWPORT_PARAM; messages name the parameter, never echo the value.
 */
export function resolveViewportParams(
  v: Viewport,
  given: unknown,
  today: string,
): Readonly<Record<string, string | number | boolean>> {
  if (!isCalendarDate(today)) throw new OrchError("ORCH_ERR_INTERNAL", "today is not a date YYYY-MM-DD");
  let g: Record<string, unknown> = {};
  if (given !== undefined && given !== null) {
    if (!isPlainObject(given)) {
      throw new OrchError("ORCH_ERR_VIEWPORT_PARAM", `viewport "${v.name}": params must be a mapping`, {
        viewport: v.name,
      });
    }
    g = given;
  }
  const keys = Object.keys(g);
  if (keys.length > VIEWPORT_LIMITS.maxGivenParams) {
    throw new OrchError("ORCH_ERR_VIEWPORT_PARAM", `viewport "${v.name}": too many params`, {
      viewport: v.name,
      limit: VIEWPORT_LIMITS.maxGivenParams,
    });
  }
  for (const k of keys) {
    if (!v.params.some((p) => p.name === k))
      throw paramError(v, clip(k), "is not a parameter of this viewport");
  }
  const out: Record<string, string | number | boolean> = {};
  for (const spec of v.params) {
    const raw = Object.hasOwn(g, spec.name) ? g[spec.name] : undefined;
    if (raw === undefined || raw === null) {
      if (spec.required) throw paramError(v, spec.name, "is required");
      if (spec.default === undefined) continue;
      out[spec.name] = spec.type === "date" && spec.default === "today" ? today : spec.default;
      continue;
    }
    out[spec.name] = checkParam(v, spec, raw, today);
  }
  return Object.freeze(out);
}

function checkParam(
  v: Viewport,
  spec: ViewportParamSpec,
  raw: unknown,
  today: string,
): string | number | boolean {
  const bad = () => paramError(v, spec.name, `must be ${spec.type === "integer" ? "an" : "a"} ${spec.type}`);
  switch (spec.type) {
    case "tag":
      if (typeof raw !== "string" || !isTagKey(raw)) throw bad();
      return raw;
    case "string":
      if (typeof raw !== "string" || raw.length > VIEWPORT_LIMITS.maxStringParamChars) throw bad();
      return raw;
    case "date":
      if (raw === "today") return today;
      if (typeof raw !== "string" || !isCalendarDate(raw)) throw bad();
      return raw;
    case "integer":
      if (typeof raw === "number" && Number.isSafeInteger(raw)) return raw;
      if (typeof raw === "string" && INTEGER_TEXT.test(raw) && Number.isSafeInteger(Number(raw))) {
        return Number(raw);
      }
      throw bad();
    case "boolean":
      if (typeof raw === "boolean") return raw;
      if (raw === "true" || raw === "false") return raw === "true";
      throw bad();
  }
}

/**
 * Substitutes `$refs` in a read's params with the resolved viewport params. A reference to a param
 * with no value (optional, no default) is left out, so the Totebox applies its own default.
 */
export function readParams(
  read: ViewportRead,
  params: Readonly<Record<string, string | number | boolean>>,
): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const [k, val] of Object.entries(read.params)) {
    const m = typeof val === "string" ? PARAM_REF.exec(val) : null;
    if (!m) {
      out[k] = val;
      continue;
    }
    const name = m[1]!;
    if (Object.hasOwn(params, name)) out[k] = params[name]!;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

function deepFreeze<T>(o: T): T {
  if (typeof o === "object" && o !== null && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}
