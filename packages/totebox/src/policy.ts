/**
 * The exposure policy: the owner's YAML file naming every view (read-only SQL over the archive's
 * internal tables) and command the Totebox answers, and who may use which.
 *
 * Trust boundaries:
 * - The policy file is written by the owner, but it is validated as if it were hostile, because a
 *   mistake in it is a data leak: every view must be exactly one read-only SELECT whose named
 *   parameters and output columns match its declaration, checked by preparing it against the
 *   archive database at load. Any error is reported with its line and column (TOTEBOX_ERR_POLICY)
 *   and a bad file never replaces a good one (`PolicyStore.reload`).
 * - View parameters arrive from the network (through a capability the Totebox has already
 *   verified, but the values are still the caller's): `validateParams` types and bounds every one
 *   and refuses unknown names (TOTEBOX_ERR_PARAM).
 *
 * File format (version 1):
 *
 *   version: 1
 *   views:
 *     <name>:                       # [a-z][a-z0-9_-]*
 *       description: "..."
 *       sql: |                      # one SELECT / WITH statement, :named parameters only
 *         SELECT ... WHERE t.date <= :as_of
 *       params:                     # string | integer | number | date | boolean | enum
 *         as_of: { type: date, required: false, default: "today" }
 *       columns: { cash: integer }  # output columns in order: string | integer | number | date | boolean
 *       row_key: null               # or an output column: a capability's row key filters on it
 *       privacy_floor: null         # or { count_column: n, min: 3 }
 *       max_rows: 1000
 *       timeout_ms: 2000
 *   commands:
 *     verify-ledger: { description: "..." }
 *   access:
 *     - tenants: "*"                # or a list of tenant ids
 *       operators: "*"              # or a list of operator key ids (hex)
 *       views: "*"                  # or a list; default []
 *       commands: []                # or a list or "*"; default []
 */
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import fs from "node:fs";
import path from "node:path";
import type Database from "better-sqlite3";
import {
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
  type YAMLMap,
  type Node as YamlNode,
} from "yaml";
import { ToteboxError } from "./errors.ts";

// ---------------------------------------------------------------------------------------------
// Limits

/** Bounds on what a policy may declare. All can be overridden per load; these are the defaults. */
export interface PolicyLimits {
  /** Largest policy file, in bytes. Default 1 MiB. */
  readonly maxBytes: number;
  /** Most views. Default 256. */
  readonly maxViews: number;
  /** Most commands. Default 256. */
  readonly maxCommands: number;
  /** Most access rules. Default 1024. */
  readonly maxAccessRules: number;
  /** Most entries in one access-rule list (tenants, operators, views, commands). Default 4096. */
  readonly maxListItems: number;
  /** Most parameters per view. Default 32. */
  readonly maxParams: number;
  /** Most output columns per view. Default 256. */
  readonly maxColumns: number;
  /** Longest view SQL, in characters. Default 64 Ki. */
  readonly maxSqlLength: number;
  /** Longest description, in characters. Default 2000. */
  readonly maxDescriptionLength: number;
  /** Largest `max_rows` a view may declare. Default 100 000. */
  readonly maxRowsCeiling: number;
  /** `max_rows` when a view does not say. Default 1000. */
  readonly defaultMaxRows: number;
  /** Largest `timeout_ms` a view may declare. Default 60 000 ms. */
  readonly maxTimeoutMs: number;
  /** `timeout_ms` when a view does not say. Default 2000 ms. */
  readonly defaultTimeoutMs: number;
  /** Longest string parameter when the param declares no `max_length`, in UTF-16 units. Default 256. */
  readonly defaultStringMaxLength: number;
  /** Largest `max_length` a string param may declare. Default 4096. */
  readonly maxStringMaxLength: number;
  /** Most values of an enum param. Default 256. */
  readonly maxEnumValues: number;
}

export const DEFAULT_POLICY_LIMITS: PolicyLimits = Object.freeze({
  maxBytes: 1024 * 1024,
  maxViews: 256,
  maxCommands: 256,
  maxAccessRules: 1024,
  maxListItems: 4096,
  maxParams: 32,
  maxColumns: 256,
  maxSqlLength: 64 * 1024,
  maxDescriptionLength: 2000,
  maxRowsCeiling: 100_000,
  defaultMaxRows: 1000,
  maxTimeoutMs: 60_000,
  defaultTimeoutMs: 2000,
  defaultStringMaxLength: 256,
  maxStringMaxLength: 4096,
  maxEnumValues: 256,
});

// ---------------------------------------------------------------------------------------------
// Types

export const PARAM_TYPES = ["string", "integer", "number", "date", "boolean", "enum"] as const;
export type ParamType = (typeof PARAM_TYPES)[number];
export const COLUMN_TYPES = ["string", "integer", "number", "date", "boolean"] as const;
export type ColumnType = (typeof COLUMN_TYPES)[number];

/** A validated parameter value, before binding (booleans are bound as 1 / 0). */
export type ParamValue = string | number | boolean | null;

export interface ParamSpec {
  readonly name: string;
  readonly type: ParamType;
  readonly description: string;
  readonly required: boolean;
  /** Default when absent; for dates the literal "today" means the current date (injected clock). */
  readonly default: ParamValue | undefined;
  /** Strings only: longest accepted value in UTF-16 code units. */
  readonly maxLength: number | undefined;
  /** Integers and numbers only: inclusive bounds. */
  readonly min: number | undefined;
  readonly max: number | undefined;
  /** Enums only: the accepted values. */
  readonly values: readonly string[] | undefined;
}

export interface ColumnSpec {
  readonly name: string;
  readonly type: ColumnType;
}

export interface PrivacyFloor {
  /** An integer output column holding each row's group size. */
  readonly countColumn: string;
  /** Rows whose group size is below this (or NULL) are suppressed and counted. */
  readonly min: number;
}

export interface ViewSpec {
  readonly name: string;
  readonly description: string;
  /** The statement as prepared: trailing `;` and whitespace removed. */
  readonly sql: string;
  readonly params: readonly ParamSpec[];
  readonly columns: readonly ColumnSpec[];
  readonly rowKey: string | null;
  readonly privacyFloor: PrivacyFloor | null;
  readonly maxRows: number;
  readonly timeoutMs: number;
}

export interface CommandSpec {
  readonly name: string;
  readonly description: string;
}

export type NameList = "*" | readonly string[];

export interface AccessRule {
  readonly tenants: NameList;
  /** Operator key ids, lowercase hex. */
  readonly operators: NameList;
  readonly views: NameList;
  readonly commands: NameList;
}

export interface Policy {
  readonly version: 1;
  readonly views: ReadonlyMap<string, ViewSpec>;
  readonly commands: ReadonlyMap<string, CommandSpec>;
  readonly access: readonly AccessRule[];
  /** SHA-256 (hex) of the policy file's bytes: names this exact policy in receipts and logs. */
  readonly digest: string;
  /**
   * Distinct for every policy object loaded by this process: caches keyed on it (prepared
   * statements) are invalidated by a reload.
   */
  readonly generation: number;
}

/** One problem found in a policy file. Lines and columns are 1-based. */
export interface PolicyIssue {
  readonly line: number;
  readonly column: number;
  /** Dotted path of the offending node, e.g. `views.position.params.as_of.type`. */
  readonly path: string;
  readonly message: string;
}

/**
 * TOTEBOX_ERR_POLICY with every issue found. `detail` carries the first one's line, column and
 * path (plus `file` and `issues`, the count); `issues` lists them all.
 */
export class PolicyError extends ToteboxError {
  readonly issues: readonly PolicyIssue[];

  constructor(issues: readonly PolicyIssue[], file: string | undefined) {
    const first = issues[0] ?? { line: 1, column: 1, path: "", message: "invalid policy" };
    const where = `${file ?? "policy"}:${first.line}:${first.column}`;
    const more = issues.length > 1 ? ` (and ${issues.length - 1} more)` : "";
    super("TOTEBOX_ERR_POLICY", `${where}: ${first.path ? `${first.path}: ` : ""}${first.message}${more}`, {
      line: first.line,
      column: first.column,
      path: first.path,
      file: file ?? null,
      issues: issues.length,
    });
    this.issues = issues;
  }
}

// ---------------------------------------------------------------------------------------------
// Loading

export interface PolicyLoadOptions {
  /**
   * The archive database the views will run against. Every view is prepared on it (never run) to
   * check it is one read-only statement with the declared columns. A read-only connection is
   * enough and preferred.
   */
  readonly db: Database.Database;
  /** Shown in error messages and `detail.file`. */
  readonly fileName?: string;
  readonly limits?: Partial<PolicyLimits>;
}

const VIEW_NAME = /^[a-z][a-z0-9_-]{0,63}$/;
const COMMAND_NAME = /^[a-z][a-z0-9_-]{0,63}$/;
// Parameter names must be valid SQLite `:name` parameters, and never start with "__": the
// runner reserves `:__row` for the row-key filter.
const PARAM_NAME = /^[a-z][a-z0-9_]{0,63}$/;
const TENANT_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const OPERATOR_ID = /^[0-9a-fA-F]{8,128}$/;
const DATE_RE = /^(\d{4})-(\d{2})-(\d{2})$/;
const DUPLICATE_KEY = "duplicate key (map keys must be unique)";

/** Deepest YAML nesting accepted. A policy needs 6 (views.<name>.params.<name>.values[i]). */
const MAX_YAML_DEPTH = 32;
/**
 * The token budget is the byte limit divided by this: real policies average ~14 bytes per token
 * (the default one: 12 KB, 852 tokens), while 1 MiB of `[a, a, a, ...]` is ~1 000 000 tokens,
 * several seconds of yaml's time (~3 µs per token).
 */
const MIN_BYTES_PER_TOKEN = 4;

/**
 * Bounds the YAML's shape with yaml's own lexer (so quoting, comments and block scalars are
 * understood), stopping at the first offending token: the token count, flow nesting (`[[[[`) and
 * indicators opening a level each on one line (`- - - -`, `? ? ?`). Returns the offending offset.
 */
function yamlShapeProblem(text: string, maxTokens: number): { offset: number; message: string } | undefined {
  const tooDeepAt = (offset: number) => ({
    offset,
    message: `the YAML is nested deeper than ${MAX_YAML_DEPTH} levels`,
  });
  let offset = 0;
  let count = 0;
  let flow = 0;
  let lineIndicators = 0;
  let entryIndicators = 0;
  for (const token of new Lexer().lex(text)) {
    const type = CST.tokenType(token);
    // Zero-width markers: not in the source text.
    if (type === "doc-mode" || type === "scalar" || type === "flow-error-end") continue;
    if (++count > maxTokens) {
      return { offset, message: `the policy has too many YAML tokens (more than ${maxTokens})` };
    }
    if (type === "flow-map-start" || type === "flow-seq-start") {
      entryIndicators = 0;
      if (++flow > MAX_YAML_DEPTH) return tooDeepAt(offset);
    } else if (type === "flow-map-end" || type === "flow-seq-end") {
      entryIndicators = 0;
      if (flow > 0) flow--;
    } else if (type === "comma") {
      entryIndicators = 0;
    } else if (type === "seq-item-ind" || type === "explicit-key-ind" || type === "map-value-ind") {
      if (flow > 0 ? ++entryIndicators > MAX_YAML_DEPTH : ++lineIndicators > MAX_YAML_DEPTH) {
        return tooDeepAt(offset);
      }
    } else if (type === "newline") {
      lineIndicators = 0;
    }
    offset += token.length;
  }
  return undefined;
}

/**
 * Offset of the first collection nested deeper than MAX_YAML_DEPTH in yaml's concrete syntax
 * tree (which is what the composer recurses over), or undefined. Iterative: the tree may be deep.
 */
function tooDeep(tokens: readonly CST.Token[]): number | undefined {
  const stack: [CST.Token, number][] = tokens.map((t) => [t, 0]);
  for (let next = stack.pop(); next !== undefined; next = stack.pop()) {
    const [token, depth] = next;
    if (depth > MAX_YAML_DEPTH) return token.offset;
    if (token.type === "document") {
      if (token.value) stack.push([token.value, depth + 1]);
    } else if (token.type === "block-map" || token.type === "block-seq" || token.type === "flow-collection") {
      for (const item of token.items) {
        if ("key" in item && item.key) stack.push([item.key, depth + 1]);
        if (item.value) stack.push([item.value, depth + 1]);
      }
    }
  }
  return undefined;
}

let nextGeneration = 1;

/** Parses and validates a policy. Throws PolicyError (TOTEBOX_ERR_POLICY) listing every issue. */
export function parsePolicy(text: string, options: PolicyLoadOptions): Policy {
  const limits: PolicyLimits = { ...DEFAULT_POLICY_LIMITS, ...options.limits };
  const ctx = new Checker(text, limits);
  const parsed = ctx.run(options.db);
  if (ctx.issues.length > 0 || parsed === undefined) {
    throw new PolicyError(
      ctx.issues.length > 0 ? ctx.issues : [ctx.issueAt(undefined, "", "invalid policy")],
      options.fileName,
    );
  }
  return {
    ...parsed,
    digest: createHash("sha256").update(text, "utf8").digest("hex"),
    generation: nextGeneration++,
  };
}

/** Reads and validates a policy file (see parsePolicy). */
export function loadPolicyFile(file: string, options: Omit<PolicyLoadOptions, "fileName">): Policy {
  const limits: PolicyLimits = { ...DEFAULT_POLICY_LIMITS, ...options.limits };
  const name = path.basename(file);
  let text: string;
  try {
    const size = fs.statSync(file).size;
    if (size > limits.maxBytes) {
      throw new PolicyError(
        [{ line: 1, column: 1, path: "", message: `policy file is larger than ${limits.maxBytes} bytes` }],
        name,
      );
    }
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    if (e instanceof PolicyError) throw e;
    throw new PolicyError([{ line: 1, column: 1, path: "", message: "cannot read the policy file" }], name);
  }
  return parsePolicy(text, { ...options, fileName: name });
}

type Parsed = Omit<Policy, "digest" | "generation">;

/** A mapping's values by key, with the key nodes (for positions). */
class Fields extends Map<string, YamlNode | null> {
  readonly keyNodes = new Map<string, YamlNode>();
}

/** Walks the YAML tree node by node (never `toJS`), so every issue keeps its source position. */
class Checker {
  readonly issues: PolicyIssue[] = [];
  readonly #text: string;
  readonly #limits: PolicyLimits;
  readonly #lines = new LineCounter();

  constructor(text: string, limits: PolicyLimits) {
    this.#text = text;
    this.#limits = limits;
  }

  issueAt(offset: number | undefined, pathStr: string, message: string): PolicyIssue {
    const pos = offset === undefined ? { line: 1, col: 1 } : this.#lines.linePos(offset);
    return { line: pos.line, column: pos.col, path: pathStr, message };
  }

  #add(node: YamlNode | null | undefined, pathStr: string, message: string, offset?: number): void {
    this.issues.push(this.issueAt(offset ?? node?.range?.[0] ?? 0, pathStr, message));
  }

  /** An issue found before the YAML parser ran (its line counter is still empty). */
  #issueBeforeParse(offset: number, message: string): void {
    let line = 1;
    let lineStart = 0;
    for (let nl = this.#text.indexOf("\n"); nl >= 0 && nl < offset; nl = this.#text.indexOf("\n", nl + 1)) {
      line++;
      lineStart = nl + 1;
    }
    this.issues.push({ line, column: offset - lineStart + 1, path: "", message });
  }

  /**
   * Parses the text into one YAML document, bounded first: yaml's parser costs a few µs per
   * token, and its composer recurses once per nesting level; past ~1000 levels (2 KB of `[[[[`
   * or `- - - -`) Node does not always throw a RangeError but can abort the whole process (V8
   * runs out of memory compiling a RegExp near the stack limit). So the token count and the
   * nesting are checked with yaml's own lexer and parser (which are iterative) before composing.
   */
  #parse(): Document.Parsed | undefined {
    const maxTokens = Math.max(4096, Math.floor(this.#limits.maxBytes / MIN_BYTES_PER_TOKEN));
    const shape = yamlShapeProblem(this.#text, maxTokens);
    if (shape !== undefined) {
      this.#issueBeforeParse(shape.offset, shape.message);
      return undefined;
    }
    const tokens = [...new Parser(this.#lines.addNewLine).parse(this.#text)];
    const deep = tooDeep(tokens);
    if (deep !== undefined) {
      this.issues.push(this.issueAt(deep, "", `the YAML is nested deeper than ${MAX_YAML_DEPTH} levels`));
      return undefined;
    }
    // uniqueKeys is off because yaml checks it by comparing every key with every earlier one
    // (20 000 keys took about a minute); #fields, #named and #columns refuse duplicates instead.
    const composer = new Composer({
      keepSourceTokens: true,
      prettyErrors: false,
      uniqueKeys: false,
      strict: true,
    });
    let doc: Document.Parsed | undefined;
    for (const next of composer.compose(tokens, true, this.#text.length)) {
      if (doc !== undefined) {
        this.issues.push(this.issueAt(next.range[0], "", "a policy is a single YAML document"));
        break;
      }
      doc = next;
    }
    return doc;
  }

  run(db: Database.Database): Parsed | undefined {
    if (this.#text.length > this.#limits.maxBytes) {
      this.issues.push(this.issueAt(undefined, "", `policy is larger than ${this.#limits.maxBytes} bytes`));
      return undefined;
    }
    let doc: Document.Parsed | undefined;
    try {
      doc = this.#parse();
    } catch {
      // yaml is third-party code: whatever it throws is reported as a policy error, not passed on.
      this.issues.push(this.issueAt(undefined, "", "the YAML parser failed on this policy"));
      return undefined;
    }
    if (doc === undefined || this.issues.length > 0) return undefined;
    // Aliases are refused node by node below, and the tree is never expanded with toJS, so alias
    // bombs cost nothing.
    for (const e of doc.errors)
      this.issues.push(this.issueAt(e.pos[0], "", e.message.split("\n")[0] ?? e.code));
    if (doc.errors.length > 0) return undefined;
    const root = doc.contents;
    if (!isMap(root)) {
      this.#add(root, "", "the policy must be a mapping with version, views, commands and access");
      return undefined;
    }
    const top = this.#fields(root, "", ["version", "views", "commands", "access"], ["version", "views"]);
    const version = top.get("version");
    if (version !== undefined && !(isScalar(version) && version.value === 1)) {
      this.#add(version, "version", "version must be 1");
    }
    const views = this.#views(top.get("views"), db);
    const commands = this.#commands(top.get("commands"));
    const access = this.#access(top.get("access"), views, commands);
    if (this.issues.length > 0) return undefined;
    return { version: 1, views, commands, access };
  }

  /** Checks a mapping's keys: plain strings, known, required present. Returns key → value node. */
  #fields(map: YAMLMap, at: string, known: readonly string[], required: readonly string[]): Fields {
    const out = new Fields();
    for (const pair of map.items) {
      const key = pair.key as YamlNode | null;
      if (!isScalar(key) || typeof key.value !== "string") {
        this.#add(key, at, "keys must be plain strings");
        continue;
      }
      const name = key.value;
      const keyPath = at ? `${at}.${name}` : name;
      if (!known.includes(name)) {
        this.#add(key, keyPath, `unknown key "${name}" (expected one of: ${known.join(", ")})`);
        continue;
      }
      if (out.keyNodes.has(name)) {
        this.#add(key, keyPath, DUPLICATE_KEY);
        continue;
      }
      out.keyNodes.set(name, key);
      const value = pair.value as YamlNode | null;
      if (isAlias(value)) {
        this.#add(value, keyPath, "YAML aliases are not allowed in a policy");
        continue;
      }
      out.set(name, value);
    }
    for (const r of required) {
      if (!out.has(r) && !map.items.some((p) => isScalar(p.key) && p.key.value === r)) {
        this.#add(map, at, `missing required key "${r}"`);
      }
    }
    return out;
  }

  /** Entries of a mapping whose keys are names matching `re`. */
  #named(
    node: YamlNode | null | undefined,
    at: string,
    re: RegExp,
    what: string,
    max: number,
  ): [string, YamlNode | null, YamlNode][] {
    if (node === undefined || node === null || (isScalar(node) && node.value === null)) return [];
    if (!isMap(node)) {
      this.#add(node, at, `${at} must be a mapping of ${what} names`);
      return [];
    }
    if (node.items.length > max) this.#add(node, at, `too many ${what}s (at most ${max})`);
    const out: [string, YamlNode | null, YamlNode][] = [];
    const seen = new Set<string>();
    for (const pair of node.items.slice(0, max)) {
      const key = pair.key as YamlNode | null;
      if (!isScalar(key) || typeof key.value !== "string" || !re.test(key.value)) {
        this.#add(key, at, `invalid ${what} name (expected ${re.source})`);
        continue;
      }
      if (seen.has(key.value)) {
        this.#add(key, `${at}.${key.value}`, DUPLICATE_KEY);
        continue;
      }
      seen.add(key.value);
      const value = pair.value as YamlNode | null;
      if (isAlias(value)) {
        this.#add(value, `${at}.${key.value}`, "YAML aliases are not allowed in a policy");
        continue;
      }
      out.push([key.value, value, key]);
    }
    return out;
  }

  #string(node: YamlNode | null | undefined, at: string, max: number, fallback?: string): string | undefined {
    if (node === undefined) return fallback;
    if (!isScalar(node) || typeof node.value !== "string") {
      this.#add(node, at, "must be a string");
      return undefined;
    }
    if (node.value.length > max) {
      this.#add(node, at, `is longer than ${max} characters`);
      return undefined;
    }
    return node.value;
  }

  #integer(
    node: YamlNode | null | undefined,
    at: string,
    min: number,
    max: number,
    fallback?: number,
  ): number | undefined {
    if (node === undefined) return fallback;
    if (!isScalar(node) || typeof node.value !== "number" || !Number.isSafeInteger(node.value)) {
      this.#add(node, at, "must be an integer");
      return undefined;
    }
    if (node.value < min || node.value > max) {
      this.#add(node, at, `must be between ${min} and ${max}`);
      return undefined;
    }
    return node.value;
  }

  #finite(node: YamlNode | null | undefined, at: string): number | undefined {
    if (node === undefined) return undefined;
    if (!isScalar(node) || typeof node.value !== "number" || !Number.isFinite(node.value)) {
      this.#add(node, at, "must be a finite number");
      return undefined;
    }
    return node.value;
  }

  #boolean(node: YamlNode | null | undefined, at: string, fallback: boolean): boolean {
    if (node === undefined) return fallback;
    if (!isScalar(node) || typeof node.value !== "boolean") {
      this.#add(node, at, "must be true or false");
      return fallback;
    }
    return node.value;
  }

  #isNull(node: YamlNode | null | undefined): boolean {
    return node === undefined || node === null || (isScalar(node) && node.value === null);
  }

  #views(node: YamlNode | null | undefined, db: Database.Database): Map<string, ViewSpec> {
    const views = new Map<string, ViewSpec>();
    for (const [name, value, key] of this.#named(node, "views", VIEW_NAME, "view", this.#limits.maxViews)) {
      const view = this.#view(name, value, key, db);
      if (view) views.set(name, view);
    }
    return views;
  }

  #view(name: string, node: YamlNode | null, key: YamlNode, db: Database.Database): ViewSpec | undefined {
    const at = `views.${name}`;
    if (!isMap(node)) {
      this.#add(node ?? key, at, "a view must be a mapping with sql and columns");
      return undefined;
    }
    const before = this.issues.length;
    const f = this.#fields(
      node,
      at,
      ["description", "sql", "params", "columns", "row_key", "privacy_floor", "max_rows", "timeout_ms"],
      ["sql", "columns"],
    );
    const description = this.#string(
      f.get("description"),
      `${at}.description`,
      this.#limits.maxDescriptionLength,
      "",
    );
    const { specs: params, keys: paramKeys } = this.#params(f.get("params"), `${at}.params`);
    const columns = this.#columns(f.get("columns"), `${at}.columns`);
    const columnNames = new Set(columns.map((c) => c.name));

    let rowKey: string | null = null;
    const rk = f.get("row_key");
    if (!this.#isNull(rk)) {
      const s = this.#string(rk, `${at}.row_key`, 256);
      if (s !== undefined && !columnNames.has(s))
        this.#add(rk, `${at}.row_key`, `row_key "${s}" is not a declared column`);
      else if (s !== undefined) rowKey = s;
    }

    let privacyFloor: PrivacyFloor | null = null;
    const pf = f.get("privacy_floor");
    if (!this.#isNull(pf)) {
      if (!isMap(pf))
        this.#add(pf, `${at}.privacy_floor`, "privacy_floor must be null or { count_column, min }");
      else {
        const pff = this.#fields(pf, `${at}.privacy_floor`, ["count_column", "min"], ["count_column", "min"]);
        const col = this.#string(pff.get("count_column"), `${at}.privacy_floor.count_column`, 256);
        const min = this.#integer(pff.get("min"), `${at}.privacy_floor.min`, 1, 1_000_000);
        const declared = columns.find((c) => c.name === col);
        if (col !== undefined && declared === undefined) {
          this.#add(
            pff.get("count_column"),
            `${at}.privacy_floor.count_column`,
            `"${col}" is not a declared column`,
          );
        } else if (declared !== undefined && declared.type !== "integer") {
          this.#add(
            pff.get("count_column"),
            `${at}.privacy_floor.count_column`,
            `"${col}" must be an integer column`,
          );
        } else if (col !== undefined && min !== undefined) privacyFloor = { countColumn: col, min };
      }
    }
    const maxRows = this.#integer(
      f.get("max_rows"),
      `${at}.max_rows`,
      1,
      this.#limits.maxRowsCeiling,
      this.#limits.defaultMaxRows,
    );
    const timeoutMs = this.#integer(
      f.get("timeout_ms"),
      `${at}.timeout_ms`,
      1,
      this.#limits.maxTimeoutMs,
      this.#limits.defaultTimeoutMs,
    );
    const sqlNode = f.get("sql");
    const rawSql = this.#string(sqlNode, `${at}.sql`, this.#limits.maxSqlLength);
    if (this.issues.length > before || rawSql === undefined || !isScalar(sqlNode)) return undefined;
    const sql = this.#sql(
      rawSql,
      sqlNode,
      `${at}.sql`,
      { params, paramKeys },
      columns,
      f.get("columns") ?? node,
      rowKey,
      db,
    );
    if (sql === undefined || maxRows === undefined || timeoutMs === undefined || description === undefined) {
      return undefined;
    }
    return { name, description, sql, params, columns, rowKey, privacyFloor, maxRows, timeoutMs };
  }

  #params(
    node: YamlNode | null | undefined,
    at: string,
  ): { specs: ParamSpec[]; keys: Map<string, YamlNode> } {
    const specs: ParamSpec[] = [];
    const keys = new Map<string, YamlNode>();
    for (const [name, value, key] of this.#named(node, at, PARAM_NAME, "param", this.#limits.maxParams)) {
      const p = this.#param(name, value, key, `${at}.${name}`);
      if (p) specs.push(p);
      keys.set(name, key);
    }
    return { specs, keys };
  }

  #param(name: string, node: YamlNode | null, key: YamlNode, at: string): ParamSpec | undefined {
    if (!isMap(node)) {
      this.#add(node ?? key, at, "a param must be a mapping with a type");
      return undefined;
    }
    const before = this.issues.length;
    const f = this.#fields(
      node,
      at,
      ["type", "description", "required", "default", "max_length", "min", "max", "values"],
      ["type"],
    );
    const typeNode = f.get("type");
    const typeStr = this.#string(typeNode, `${at}.type`, 32);
    if (typeStr !== undefined && !(PARAM_TYPES as readonly string[]).includes(typeStr)) {
      this.#add(
        typeNode,
        `${at}.type`,
        `unknown param type "${typeStr}" (expected ${PARAM_TYPES.join(" | ")})`,
      );
      return undefined;
    }
    if (typeStr === undefined) return undefined;
    const type = typeStr as ParamType;
    const description = this.#string(
      f.get("description"),
      `${at}.description`,
      this.#limits.maxDescriptionLength,
      "",
    );
    const required = this.#boolean(f.get("required"), `${at}.required`, false);
    const onlyFor = (k: string, types: readonly ParamType[]) => {
      if (f.has(k) && !types.includes(type))
        this.#add(f.keyNodes.get(k), `${at}.${k}`, `"${k}" does not apply to ${type} params`);
    };
    onlyFor("max_length", ["string"]);
    onlyFor("min", ["integer", "number"]);
    onlyFor("max", ["integer", "number"]);
    onlyFor("values", ["enum"]);
    const maxLength =
      type === "string"
        ? this.#integer(
            f.get("max_length"),
            `${at}.max_length`,
            1,
            this.#limits.maxStringMaxLength,
            this.#limits.defaultStringMaxLength,
          )
        : undefined;
    const bound = (k: "min" | "max") =>
      type === "integer"
        ? this.#integer(f.get(k), `${at}.${k}`, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER)
        : type === "number"
          ? this.#finite(f.get(k), `${at}.${k}`)
          : undefined;
    const min = bound("min");
    const max = bound("max");
    if (min !== undefined && max !== undefined && min > max)
      this.#add(f.get("min"), `${at}.min`, "min is larger than max");
    let values: string[] | undefined;
    if (type === "enum") {
      const vn = f.get("values");
      if (!isSeq(vn) || vn.items.length === 0) {
        this.#add(vn ?? node, `${at}.values`, "an enum param needs a non-empty list of values");
      } else if (vn.items.length > this.#limits.maxEnumValues) {
        this.#add(vn, `${at}.values`, `too many enum values (at most ${this.#limits.maxEnumValues})`);
      } else {
        values = [];
        for (const [i, item] of vn.items.entries()) {
          const v = this.#string(item as YamlNode, `${at}.values[${i}]`, this.#limits.maxStringMaxLength);
          if (v === undefined) continue;
          if (values.includes(v))
            this.#add(item as YamlNode, `${at}.values[${i}]`, `duplicate enum value "${v}"`);
          values.push(v);
        }
      }
    }
    if (this.issues.length > before) return undefined;
    const spec: ParamSpec = {
      name,
      type,
      description: description ?? "",
      required,
      default: undefined,
      maxLength,
      min,
      max,
      values,
    };
    const dn = f.get("default");
    if (dn !== undefined) {
      if (required) {
        this.#add(f.keyNodes.get("default"), `${at}.default`, "a required param cannot have a default");
        return undefined;
      }
      if (!isScalar(dn)) {
        this.#add(dn, `${at}.default`, "a default must be a scalar");
        return undefined;
      }
      const raw = dn.value;
      if (raw === null) return spec;
      if (type === "date" && raw === "today") return { ...spec, default: "today" };
      try {
        return { ...spec, default: checkParam(spec, raw, "policy") };
      } catch (e) {
        this.#add(dn, `${at}.default`, e instanceof ToteboxError ? e.message : "invalid default");
        return undefined;
      }
    }
    return spec;
  }

  #columns(node: YamlNode | null | undefined, at: string): ColumnSpec[] {
    const out: ColumnSpec[] = [];
    if (node === undefined) return out;
    if (!isMap(node) || node.items.length === 0) {
      this.#add(node, at, "columns must be a non-empty mapping of column name to type");
      return out;
    }
    if (node.items.length > this.#limits.maxColumns) {
      this.#add(node, at, `too many columns (at most ${this.#limits.maxColumns})`);
      return out;
    }
    const seen = new Set<string>();
    for (const pair of node.items) {
      const key = pair.key as YamlNode | null;
      if (
        !isScalar(key) ||
        typeof key.value !== "string" ||
        key.value.length === 0 ||
        key.value.length > 256
      ) {
        this.#add(key, at, "column names must be non-empty strings");
        continue;
      }
      if (seen.has(key.value)) {
        this.#add(key, `${at}.${key.value}`, DUPLICATE_KEY);
        continue;
      }
      seen.add(key.value);
      const value = pair.value as YamlNode | null;
      const t = isScalar(value) ? value.value : undefined;
      if (typeof t !== "string" || !(COLUMN_TYPES as readonly string[]).includes(t)) {
        this.#add(
          value ?? key,
          `${at}.${key.value}`,
          `column type must be one of ${COLUMN_TYPES.join(" | ")}`,
        );
        continue;
      }
      out.push({ name: key.value, type: t as ColumnType });
    }
    return out;
  }

  /** Maps an offset inside a scalar's value back to the file, where that is exact; else the scalar's start. */
  #sqlOffset(node: Scalar, valueOffset: number): number {
    const start = node.range?.[0] ?? 0;
    const value = String(node.value);
    if (node.type === "BLOCK_LITERAL") {
      // A literal block keeps its lines: value line i is source line (header + 1 + i), shifted by
      // the block's indentation.
      const headerEnd = this.#text.indexOf("\n", start);
      if (headerEnd < 0) return start;
      const before = value.slice(0, valueOffset);
      const lineIdx = before.split("\n").length - 1;
      const col = valueOffset - (before.lastIndexOf("\n") + 1);
      let lineStart = headerEnd + 1;
      for (let i = 0; i < lineIdx; i++) {
        const nl = this.#text.indexOf("\n", lineStart);
        if (nl < 0) return start;
        lineStart = nl + 1;
      }
      const indent = /^ */.exec(this.#text.slice(headerEnd + 1).replace(/^(\s*\n)*/, ""))?.[0].length ?? 0;
      return lineStart + indent + col;
    }
    const quoted = node.type === "QUOTE_DOUBLE" || node.type === "QUOTE_SINGLE" ? 1 : 0;
    if (this.#text.slice(start + quoted, start + quoted + value.length) === value)
      return start + quoted + valueOffset;
    return start;
  }

  #sql(
    raw: string,
    node: Scalar,
    at: string,
    declaredParams: { params: readonly ParamSpec[]; paramKeys: ReadonlyMap<string, YamlNode> },
    columns: readonly ColumnSpec[],
    columnsNode: YamlNode,
    rowKey: string | null,
    db: Database.Database,
  ): string | undefined {
    const lexed = lexSql(raw);
    const fail = (message: string, offset?: number) => {
      this.#add(node, at, message, offset === undefined ? undefined : this.#sqlOffset(node, offset));
      return undefined;
    };
    if (lexed.error) return fail(lexed.error.message, lexed.error.offset);
    const first = lexed.tokens.find((t) => t.kind === "word");
    if (first === undefined) return fail("the SQL is empty");
    if (!["SELECT", "WITH", "VALUES"].includes(first.text.toUpperCase())) {
      return fail("a view must be a single SELECT (or WITH ... SELECT) statement", first.start);
    }
    for (const t of lexed.tokens) {
      const name = sqlName(t);
      if (name === undefined) continue;
      const w = name.toLowerCase();
      if (
        w === "attach" ||
        w === "detach" ||
        w === "pragma" ||
        w.startsWith("pragma_") ||
        w === "load_extension" ||
        w === "vacuum"
      ) {
        return fail(`"${name}" is not allowed in a view`, t.start);
      }
    }
    const semi = lexed.tokens.findIndex((t) => t.kind === "semicolon");
    if (semi >= 0 && lexed.tokens.slice(semi).some((t) => t.kind !== "semicolon")) {
      return fail("a view must be exactly one statement", lexed.tokens[semi]!.start);
    }
    if (cteExpansion(lexed.tokens) > MAX_CTE_EXPANSION) {
      return fail(
        `the WITH clauses expand to more than ${MAX_CTE_EXPANSION} subqueries (SQLite copies a common table expression for every reference to it)`,
        first.start,
      );
    }
    const sql = (semi >= 0 ? raw.slice(0, lexed.tokens[semi]!.start) : raw).trimEnd();

    const used = new Map<string, number>();
    for (const t of lexed.tokens) {
      if (t.kind === "param" && !used.has(t.text)) used.set(t.text, t.start);
    }
    const { params, paramKeys } = declaredParams;
    const declared = new Set(params.map((p) => p.name));
    let paramsOk = true;
    for (const [name, offset] of used) {
      if (!declared.has(name)) {
        fail(`the SQL uses :${name}, which is not declared in params`, offset);
        paramsOk = false;
      }
    }
    for (const p of params) {
      if (!used.has(p.name)) {
        this.#add(
          paramKeys.get(p.name) ?? node,
          at,
          `param "${p.name}" is declared but the SQL does not use :${p.name}`,
        );
        paramsOk = false;
      }
    }
    if (!paramsOk) return undefined;

    let stmt: Database.Statement;
    try {
      stmt = db.prepare(sql);
    } catch (e) {
      return fail(`SQLite refuses the statement: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (!stmt.reader || !stmt.readonly) return fail("a view must be a read-only statement that returns rows");
    const got = stmt.columns().map((c) => c.name);
    const want = columns.map((c) => c.name);
    if (got.length !== want.length || got.some((n, i) => n !== want[i])) {
      this.#add(
        columnsNode,
        at.replace(/\.sql$/, ".columns"),
        `declared columns [${want.join(", ")}] do not match the statement's columns [${got.join(", ")}]`,
      );
      return undefined;
    }
    if (rowKey !== null) {
      try {
        db.prepare(wrapRowKey(sql, rowKey));
      } catch (e) {
        return fail(`the row-key filter cannot be applied: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    return sql;
  }

  #commands(node: YamlNode | null | undefined): Map<string, CommandSpec> {
    const out = new Map<string, CommandSpec>();
    for (const [name, value, key] of this.#named(
      node,
      "commands",
      COMMAND_NAME,
      "command",
      this.#limits.maxCommands,
    )) {
      const at = `commands.${name}`;
      if (this.#isNull(value)) {
        out.set(name, { name, description: "" });
        continue;
      }
      if (!isMap(value)) {
        this.#add(value ?? key, at, "a command must be a mapping (or null)");
        continue;
      }
      const f = this.#fields(value, at, ["description"], []);
      const description = this.#string(
        f.get("description"),
        `${at}.description`,
        this.#limits.maxDescriptionLength,
        "",
      );
      if (description !== undefined) out.set(name, { name, description });
    }
    return out;
  }

  #list(
    node: YamlNode | null | undefined,
    at: string,
    check: (value: string, item: YamlNode) => string | undefined,
    fallback: NameList | undefined,
  ): NameList | undefined {
    if (node === undefined) {
      if (fallback === undefined) this.#add(null, at, 'missing (use "*" or a list)');
      return fallback;
    }
    if (isScalar(node) && node.value === "*") return "*";
    if (!isSeq(node)) {
      this.#add(node, at, 'must be "*" or a list');
      return undefined;
    }
    if (node.items.length > this.#limits.maxListItems) {
      this.#add(node, at, `too many items (at most ${this.#limits.maxListItems})`);
      return undefined;
    }
    const out: string[] = [];
    for (const [i, item] of node.items.entries()) {
      const itemNode = item as YamlNode;
      if (!isScalar(itemNode) || typeof itemNode.value !== "string") {
        this.#add(itemNode, `${at}[${i}]`, "must be a string");
        continue;
      }
      const problem = check(itemNode.value, itemNode);
      if (problem !== undefined) this.#add(itemNode, `${at}[${i}]`, problem);
      else out.push(itemNode.value);
    }
    return out;
  }

  #access(
    node: YamlNode | null | undefined,
    views: Map<string, ViewSpec>,
    commands: Map<string, CommandSpec>,
  ): AccessRule[] {
    const out: AccessRule[] = [];
    if (node === undefined || this.#isNull(node)) return out;
    if (!isSeq(node)) {
      this.#add(node, "access", "access must be a list of rules");
      return out;
    }
    if (node.items.length > this.#limits.maxAccessRules) {
      this.#add(node, "access", `too many access rules (at most ${this.#limits.maxAccessRules})`);
      return out;
    }
    for (const [i, item] of node.items.entries()) {
      const at = `access[${i}]`;
      const rule = item as YamlNode | null;
      if (!isMap(rule)) {
        this.#add(rule ?? node, at, "an access rule must be a mapping");
        continue;
      }
      const f = this.#fields(
        rule,
        at,
        ["tenants", "operators", "views", "commands"],
        ["tenants", "operators"],
      );
      // A missing required key was already reported by #fields: pass a fallback to avoid a double report.
      const tenants = this.#list(
        f.get("tenants"),
        `${at}.tenants`,
        (v) => (TENANT_ID.test(v) ? undefined : "not a valid tenant id"),
        [],
      );
      const operators = this.#list(
        f.get("operators"),
        `${at}.operators`,
        (v) => (OPERATOR_ID.test(v) ? undefined : "not an operator key id (hex)"),
        [],
      );
      const ruleViews = this.#list(
        f.get("views"),
        `${at}.views`,
        (v) => (views.has(v) ? undefined : `no view named "${v}"`),
        [],
      );
      const ruleCommands = this.#list(
        f.get("commands"),
        `${at}.commands`,
        (v) => (commands.has(v) ? undefined : `no command named "${v}"`),
        [],
      );
      if (tenants && operators && ruleViews && ruleCommands) {
        out.push({
          tenants,
          operators: operators === "*" ? "*" : operators.map((o) => o.toLowerCase()),
          views: ruleViews,
          commands: ruleCommands,
        });
      }
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// SQL lexing (enough of SQLite's to find statements, parameters and keywords outside literals)

export interface SqlToken {
  readonly kind: "word" | "param" | "semicolon" | "other";
  /** For params, the name without its ':'. */
  readonly text: string;
  readonly start: number;
}

const IDENT_START = /[A-Za-z_\u0080-\uffff]/;
const IDENT_PART = /[A-Za-z0-9_$\u0080-\uffff]/;

/** Splits SQL into words, `:name` parameters and `;`, skipping comments, strings and quoted names. */
export function lexSql(sql: string): { tokens: SqlToken[]; error?: { offset: number; message: string } } {
  const tokens: SqlToken[] = [];
  let i = 0;
  const n = sql.length;
  while (i < n) {
    const c = sql[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === "-" && sql[i + 1] === "-") {
      const nl = sql.indexOf("\n", i);
      i = nl < 0 ? n : nl + 1;
    } else if (c === "/" && sql[i + 1] === "*") {
      const end = sql.indexOf("*/", i + 2);
      i = end < 0 ? n : end + 2;
    } else if (c === "'" || c === '"' || c === "`" || c === "[") {
      const close = c === "[" ? "]" : c;
      let j = i + 1;
      for (;;) {
        if (j >= n) return { tokens, error: { offset: i, message: "unterminated quoted text in the SQL" } };
        if (sql[j] === close) {
          if (close !== "]" && sql[j + 1] === close) {
            j += 2;
            continue;
          }
          break;
        }
        j++;
      }
      tokens.push({ kind: "other", text: sql.slice(i, j + 1), start: i });
      i = j + 1;
    } else if (c === ":" || c === "@" || c === "$" || c === "?") {
      let j = i + 1;
      while (j < n && IDENT_PART.test(sql[j]!)) j++;
      if (c === ":" && j > i + 1) {
        tokens.push({ kind: "param", text: sql.slice(i + 1, j), start: i });
      } else if (c === ":") {
        tokens.push({ kind: "other", text: c, start: i });
      } else {
        return { tokens, error: { offset: i, message: "use :name parameters (no ?, @name or $name)" } };
      }
      i = j;
    } else if (c === ";") {
      tokens.push({ kind: "semicolon", text: c, start: i });
      i++;
    } else if (IDENT_START.test(c)) {
      let j = i + 1;
      while (j < n && IDENT_PART.test(sql[j]!)) j++;
      tokens.push({ kind: "word", text: sql.slice(i, j), start: i });
      i = j;
    } else if (/[0-9]/.test(c) || (c === "." && /[0-9]/.test(sql[i + 1] ?? ""))) {
      // A number (possibly 1e5, 0x1F, 1.5): never a keyword or a parameter.
      let j = i + 1;
      while (j < n && /[0-9A-Za-z_.]/.test(sql[j]!)) j++;
      tokens.push({ kind: "other", text: sql.slice(i, j), start: i });
      i = j;
    } else {
      tokens.push({ kind: "other", text: c, start: i });
      i++;
    }
  }
  return { tokens };
}

/**
 * The name a token can stand for: a word, or the text of a quoted token. SQLite takes "name",
 * `name` and [name] as identifiers, and even 'name' where a table name is expected (FROM
 * 'pragma_table_list'), so forbidden names are checked in every quoted form; a string literal
 * spelled exactly like one must be written another way ('prag' || 'ma').
 */
function sqlName(t: SqlToken): string | undefined {
  if (t.kind === "word") return t.text;
  if (t.kind !== "other" || t.text.length < 2) return undefined;
  const q = t.text[0];
  if (q === "[") return t.text.slice(1, -1);
  if (q === '"' || q === "'" || q === "`") return t.text.slice(1, -1).replaceAll(q + q, q);
  return undefined;
}

/**
 * Most subqueries a view's common table expressions may expand to. SQLite inlines a CTE by
 * copying its body for every reference, recursively, while *preparing* the statement: ten CTEs
 * each referring four times to the previous one (1 KB of SQL) took 39 s to prepare (and fail),
 * twelve referring three times in scalar subqueries prepared in 2.7 s, and each further level
 * multiplies that. The default views expand to at most 2.
 */
const MAX_CTE_EXPANSION = 256;

/**
 * An upper bound, from the tokens alone, on the subqueries SQLite builds for the statement's CTEs
 * (capped just above MAX_CTE_EXPANSION). Conservative: every `name [(...)] AS [NOT]
 * [MATERIALIZED] (` counts as a CTE definition (WINDOW definitions too), and every word or quoted
 * name equal to a CTE's name as a reference to it, attributed to the innermost CTE body holding it.
 */
function cteExpansion(tokens: readonly SqlToken[]): number {
  const cap = MAX_CTE_EXPANSION + 1;
  const isOther = (i: number, text: string) => tokens[i]?.kind === "other" && tokens[i]!.text === text;
  const isWord = (i: number, w: string) => tokens[i]?.kind === "word" && tokens[i]!.text.toUpperCase() === w;
  // Matching parentheses, in one pass (unbalanced ones are SQLite's to refuse).
  const closing = new Map<number, number>();
  const open: number[] = [];
  for (let i = 0; i < tokens.length; i++) {
    if (isOther(i, "(")) open.push(i);
    else if (isOther(i, ")") && open.length > 0) closing.set(open.pop()!, i);
  }
  const end = (i: number) => closing.get(i) ?? tokens.length;
  const ctes: { name: string; at: number; from: number; to: number }[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const name = sqlName(tokens[i]!);
    if (name === undefined) continue;
    let j = i + 1;
    if (isOther(j, "(")) j = end(j) + 1;
    if (!isWord(j, "AS")) continue;
    j++;
    if (isWord(j, "NOT")) j++;
    if (isWord(j, "MATERIALIZED")) j++;
    if (isOther(j, "(")) ctes.push({ name: name.toLowerCase(), at: i, from: j, to: end(j) });
  }
  if (ctes.length === 0) return 1;
  const names = new Set(ctes.map((c) => c.name));
  const definitions = new Set(ctes.map((c) => c.at));
  const bodyAt = new Map(ctes.map((c, k) => [c.from, k]));
  // References per scope: a CTE's name (key) or "" for the statement itself.
  const refs = new Map<string, string[]>();
  const scopes: number[] = [];
  for (let i = 0; i < tokens.length; i++) {
    while (scopes.length > 0 && i > ctes[scopes[scopes.length - 1]!]!.to) scopes.pop();
    const body = bodyAt.get(i);
    if (body !== undefined) scopes.push(body);
    if (definitions.has(i)) continue;
    const name = sqlName(tokens[i]!)?.toLowerCase();
    if (name === undefined || !names.has(name)) continue;
    const scope = scopes.length > 0 ? ctes[scopes[scopes.length - 1]!]!.name : "";
    const list = refs.get(scope);
    if (list === undefined) refs.set(scope, [name]);
    else list.push(name);
  }
  const sizes = new Map<string, number>();
  const visiting = new Set<string>();
  const sizeOf = (scope: string): number => {
    const known = sizes.get(scope);
    if (known !== undefined) return known;
    if (visiting.has(scope)) return 1; // a recursive CTE: iterated at run time, not copied
    visiting.add(scope);
    let size = 1;
    for (const r of refs.get(scope) ?? []) size = Math.min(cap, size + sizeOf(r));
    visiting.delete(scope);
    sizes.set(scope, size);
    return size;
  };
  return Math.max(sizeOf(""), ...[...names].map(sizeOf));
}

/** The SQL the runner uses for a row-keyed read: the view as a subquery, filtered on `:__row`. */
export function wrapRowKey(sql: string, rowKey: string): string {
  // The newline ends any trailing `--` comment of the view's SQL; the name is a quoted identifier.
  return `SELECT * FROM (\n${sql}\n) WHERE "${rowKey.replaceAll('"', '""')}" = :__row`;
}

// ---------------------------------------------------------------------------------------------
// Parameters (untrusted, at call time)

export interface ParamOptions {
  /** Current time in ms since the epoch, for "today" defaults. Default Date.now. */
  readonly now?: () => number;
  /** IANA zone whose calendar date "today" means. Default "UTC". */
  readonly timeZone?: string;
}

function paramError(view: string, param: string, reason: string): ToteboxError {
  return new ToteboxError("TOTEBOX_ERR_PARAM", `parameter "${param}" of view "${view}": ${reason}`, {
    view,
    param,
    reason,
  });
}

/** True for a real calendar date written YYYY-MM-DD (years 0001–9999). */
export function isCalendarDate(s: string): boolean {
  const m = DATE_RE.exec(s);
  if (!m) return false;
  const y = Number(m[1]);
  const mo = Number(m[2]);
  const d = Number(m[3]);
  if (y < 1 || mo < 1 || mo > 12 || d < 1) return false;
  const days = new Date(Date.UTC(2000, mo, 0)).getUTCDate(); // days in month, leap-agnostic
  const leap = (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
  return d <= (mo === 2 ? (leap ? 29 : 28) : days);
}

/** Today's date (YYYY-MM-DD) in `timeZone`, from the injected clock. */
export function todayIn(now: number, timeZone = "UTC"): string {
  const parts = new Intl.DateTimeFormat("en-CA", {
    timeZone,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
  }).formatToParts(new Date(now));
  const get = (t: string) => parts.find((p) => p.type === t)?.value ?? "";
  return `${get("year")}-${get("month")}-${get("day")}`;
}

const INTEGER_TEXT = /^-?(0|[1-9][0-9]{0,15})$/;
const NUMBER_TEXT = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$/;

/**
 * Checks one raw value against its spec. Besides native JSON/CBOR types, the canonical text form
 * of integers, numbers and booleans is accepted ("42", "1.5", "true"), because command lines and
 * query strings carry text; nothing else is coerced.
 */
function checkParam(spec: ParamSpec, raw: unknown, view: string): ParamValue {
  const bad = (reason: string) => paramError(view, spec.name, reason);
  switch (spec.type) {
    case "string": {
      if (typeof raw !== "string") throw bad("must be a string");
      const max = spec.maxLength ?? DEFAULT_POLICY_LIMITS.defaultStringMaxLength;
      if (raw.length > max) throw bad(`is longer than ${max} characters`);
      return raw;
    }
    case "integer":
    case "number": {
      let v: number;
      if (typeof raw === "number") v = raw;
      else if (typeof raw === "bigint") {
        if (raw > BigInt(Number.MAX_SAFE_INTEGER) || raw < BigInt(Number.MIN_SAFE_INTEGER))
          throw bad("is out of the safe integer range");
        v = Number(raw);
      } else if (typeof raw === "string" && (spec.type === "integer" ? INTEGER_TEXT : NUMBER_TEXT).test(raw))
        v = Number(raw);
      else throw bad(`must be ${spec.type === "integer" ? "an integer" : "a number"}`);
      if (spec.type === "integer" && !Number.isSafeInteger(v)) throw bad("must be a safe integer");
      if (!Number.isFinite(v)) throw bad("must be a finite number");
      if (spec.min !== undefined && v < spec.min) throw bad(`must be at least ${spec.min}`);
      if (spec.max !== undefined && v > spec.max) throw bad(`must be at most ${spec.max}`);
      return v;
    }
    case "date":
      if (typeof raw !== "string" || !isCalendarDate(raw)) throw bad("must be a calendar date YYYY-MM-DD");
      return raw;
    case "boolean":
      if (raw === true || raw === "true") return true;
      if (raw === false || raw === "false") return false;
      throw bad("must be true or false");
    case "enum":
      if (typeof raw !== "string" || !(spec.values ?? []).includes(raw)) {
        throw bad(`must be one of: ${(spec.values ?? []).join(", ")}`);
      }
      return raw;
  }
}

/**
 * Validates the caller's parameters for `view`: every declared param gets a typed value (or null
 * when optional and absent without default); unknown names are refused. Throws TOTEBOX_ERR_PARAM
 * naming the param and why.
 */
export function validateParams(
  view: ViewSpec,
  raw: unknown,
  options: ParamOptions = {},
): Record<string, ParamValue> {
  let input: Record<string, unknown>;
  if (raw === undefined || raw === null) input = {};
  else if (raw instanceof Map) {
    // No prototype: on a plain {}, `input["__proto__"] = v` would set the prototype instead of
    // adding a key, and that unknown name would pass unnoticed.
    input = Object.create(null) as Record<string, unknown>;
    for (const [k, v] of raw) {
      // Not String(k): a key can be any value, unbounded in size or with no string form at all.
      if (typeof k !== "string")
        throw paramError(view.name, `(${typeof k})`, "parameter names must be strings");
      input[k] = v;
    }
  } else if (typeof raw === "object" && !Array.isArray(raw) && !ArrayBuffer.isView(raw)) {
    input = raw as Record<string, unknown>;
  } else throw paramError(view.name, "*", "parameters must be a mapping of name to value");

  const specs = new Map(view.params.map((p) => [p.name, p]));
  for (const key of Object.keys(input)) {
    if (!specs.has(key)) throw paramError(view.name, key.slice(0, 64), "unknown parameter");
  }
  // A plain object (better-sqlite3 binds named parameters from plain objects only); its keys are
  // declared param names, which PARAM_NAME keeps clear of "__proto__" and friends.
  const out: Record<string, ParamValue> = {};
  for (const spec of view.params) {
    const has =
      Object.hasOwn(input, spec.name) && input[spec.name] !== undefined && input[spec.name] !== null;
    if (has) {
      out[spec.name] = checkParam(spec, input[spec.name], view.name);
    } else if (spec.required) {
      throw paramError(view.name, spec.name, "is required");
    } else if (spec.default === "today" && spec.type === "date") {
      out[spec.name] = todayIn((options.now ?? Date.now)(), options.timeZone);
    } else {
      out[spec.name] = spec.default ?? null;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Access

export interface ReadRequest {
  readonly tenant: string;
  /** Operator key id, hex (any case). */
  readonly operator: string;
  readonly view: string;
}

export interface RunRequest {
  readonly tenant: string;
  readonly operator: string;
  readonly command: string;
}

const inList = (list: NameList, value: string): boolean => list === "*" || list.includes(value);

/** True when the view exists and some access rule lets this operator of this tenant read it. */
export function canRead(policy: Policy, req: ReadRequest): boolean {
  if (!policy.views.has(req.view)) return false;
  const op = req.operator.toLowerCase();
  return policy.access.some(
    (r) => inList(r.tenants, req.tenant) && inList(r.operators, op) && inList(r.views, req.view),
  );
}

/** True when the command exists and some access rule lets this operator of this tenant run it. */
export function canRun(policy: Policy, req: RunRequest): boolean {
  if (!policy.commands.has(req.command)) return false;
  const op = req.operator.toLowerCase();
  return policy.access.some(
    (r) => inList(r.tenants, req.tenant) && inList(r.operators, op) && inList(r.commands, req.command),
  );
}

/** Metadata only (names, params, columns), for `hello`: never the SQL. */
export interface ViewCatalogueEntry {
  readonly name: string;
  readonly description: string;
  readonly params: readonly {
    name: string;
    type: ParamType;
    required: boolean;
    default: ParamValue | undefined;
    values: readonly string[] | undefined;
  }[];
  readonly columns: readonly ColumnSpec[];
  readonly rowKey: string | null;
  readonly privacyFloor: PrivacyFloor | null;
}

export function viewCatalogue(policy: Policy): ViewCatalogueEntry[] {
  return [...policy.views.values()].map((v) => ({
    name: v.name,
    description: v.description,
    params: v.params.map((p) => ({
      name: p.name,
      type: p.type,
      required: p.required,
      default: p.default,
      values: p.values,
    })),
    columns: v.columns,
    rowKey: v.rowKey,
    privacyFloor: v.privacyFloor,
  }));
}

// ---------------------------------------------------------------------------------------------
// Hot reload

export type ReloadResult =
  | { readonly ok: true; readonly policy: Policy; readonly changed: boolean }
  | { readonly ok: false; readonly error: ToteboxError; readonly policy: Policy };

export interface PolicyStoreOptions {
  readonly file: string;
  /** See PolicyLoadOptions.db. */
  readonly db: Database.Database;
  readonly limits?: Partial<PolicyLimits>;
  /** Quiet period after the last file event before reloading, in ms. Default 150. */
  readonly debounceMs?: number;
}

/**
 * Holds the current policy and replaces it only with a valid one. Events:
 * - "reload" (ReloadResult): after every reload attempt, from `reload()` or the watcher.
 */
export class PolicyStore extends EventEmitter {
  readonly #file: string;
  readonly #db: Database.Database;
  readonly #limits: Partial<PolicyLimits> | undefined;
  readonly #debounceMs: number;
  #policy: Policy;
  #watcher: fs.FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;

  /** Loads the file; throws TOTEBOX_ERR_POLICY if the initial policy is invalid (no fallback yet). */
  constructor(options: PolicyStoreOptions) {
    super();
    this.#file = path.resolve(options.file);
    this.#db = options.db;
    this.#limits = options.limits;
    this.#debounceMs = options.debounceMs ?? 150;
    this.#policy = loadPolicyFile(this.#file, { db: this.#db, limits: this.#limits });
  }

  get current(): Policy {
    return this.#policy;
  }

  /** Re-reads the file. A bad file keeps the current policy and reports the error. */
  reload(): ReloadResult {
    let result: ReloadResult;
    try {
      const next = loadPolicyFile(this.#file, { db: this.#db, limits: this.#limits });
      const changed = next.digest !== this.#policy.digest;
      if (changed) this.#policy = next;
      result = { ok: true, policy: this.#policy, changed };
    } catch (e) {
      const error =
        e instanceof ToteboxError
          ? e
          : new ToteboxError(
              "TOTEBOX_ERR_POLICY",
              "cannot load the policy",
              { file: path.basename(this.#file) },
              { cause: e },
            );
      result = { ok: false, error, policy: this.#policy };
    }
    this.emit("reload", result);
    return result;
  }

  /**
   * Watches the file's folder (editors replace files by rename, which a watch on the file itself
   * misses) and reloads after `debounceMs` without further events.
   */
  watch(): void {
    if (this.#watcher) return;
    const base = path.basename(this.#file);
    this.#watcher = fs.watch(path.dirname(this.#file), { persistent: false }, (_event, name) => {
      if (name !== null && name !== base) return;
      if (this.#timer) clearTimeout(this.#timer);
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.reload();
      }, this.#debounceMs);
    });
    this.#watcher.on("error", () => {
      // The folder went away: keep serving the current policy; a later watch() may resume.
      this.#watcher?.close();
      this.#watcher = undefined;
    });
  }

  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#watcher?.close();
    this.#watcher = undefined;
  }
}
