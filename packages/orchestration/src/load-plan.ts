/**
 * Which columns of the combine's input tables a viewport's SQL can observe, read from DuckDB's own
 * parse of each section (`json_serialize_sql`). The combine then creates and loads only those:
 * a portfolio that sums `net_value` by region no longer turns seven more columns of every answer
 * into JavaScript values and DuckDB vectors (the loading was most of the combine's cost, and a
 * sixth of everything the aggregator allocated per query).
 *
 * Dropping a column the SQL needs must never change a dashboard silently, so the rules only ever
 * err towards loading more:
 * - a column is loaded when its name appears anywhere in any section, in any column reference
 *   (qualified or not, in any clause, subquery or CTE), or in a join's USING list;
 * - a table is loaded whole when its name or one of its aliases is used as a value (a row read as
 *   a struct: `to_json(position)`);
 * - nothing is pruned in a viewport where any section uses `*` or `COLUMNS(...)` (they expand to
 *   every column), a positional reference (`#3`), a NATURAL join (it joins on every shared name),
 *   a table function (it can read a table named in a string), PIVOT/UNPIVOT (they group by every
 *   column not named), column aliases on a table (`position AS p(a, b)` renames by position), a
 *   catalog view or a schema-qualified table, a CTE named like a catalog view, any expression or
 *   FROM kind not on the allow-lists below, or anything DuckDB will not serialise.
 * A name that only looks like a column (an alias, a lambda parameter) merely loads a column more.
 * What is left, a column the SQL names only in a way these rules miss, would fail loudly rather
 * than read wrong: the table is created without that column, so the SQL does not bind. The
 * viewport compiler checks every pruned viewport that way before using its plan (combine.ts).
 */

/** How one input table is created and loaded. */
export interface TableLoad {
  /** false: the SQL never reads the table; it is created (all columns) and left empty. */
  readonly rows: boolean;
  /** The columns created and loaded (a subset of the table's, in its order); undefined: all. */
  readonly columns: ReadonlySet<string> | undefined;
}

/** Per input table (by name): what to create and load. */
export type LoadPlan = ReadonlyMap<string, TableLoad>;

/** The column every referenced table keeps when the SQL names none of its columns (it counts rows). */
export const ROW_COLUMN = "totebox";

interface Found {
  /** Every identifier in every column reference (lower case). */
  readonly mentioned: Set<string>;
  /** The last identifier of each column reference: a table or alias here is a row used as a value. */
  readonly lastOfRef: Set<string>;
  /** Base tables read (lower case) and the aliases each is read under. */
  readonly tables: Map<string, Set<string>>;
  /** Names of the common table expressions defined anywhere (lower case). */
  readonly ctes: Set<string>;
}

/**
 * The expression kinds whose columns are all named (in COLUMN_REF children). Anything else bails:
 * STAR (`*`, `COLUMNS(...)`), POSITIONAL_REFERENCE (`#3` is the third column, so pruning would
 * move it), and whatever a later DuckDB adds.
 */
const NAMED_EXPRESSIONS = new Set([
  "BETWEEN",
  "CASE",
  "CAST",
  "COLLATE",
  "COLUMN_REF",
  "COMPARISON",
  "CONJUNCTION",
  "CONSTANT",
  "FUNCTION",
  "LAMBDA",
  "OPERATOR",
  "PARAMETER",
  "SUBQUERY",
  "WINDOW",
]);

/**
 * The FROM-clause kinds that read tables only through named columns. Anything else bails: a table
 * function (it can read a table named in a string: `query_table('position')`), PIVOT/UNPIVOT,
 * SHOW, and whatever a later DuckDB adds.
 */
const NAMED_TABLE_REFS = new Set(["BASE_TABLE", "EMPTY", "EXPRESSION_LIST", "JOIN", "SUBQUERY"]);

/**
 * The plan for one viewport, from the parse of each of its sections (the parsed JSON of
 * `json_serialize_sql(sql)`), every input table's columns (in table order) and the names of the
 * database's own tables and views (lower case: `duckdb_columns`, `sqlite_master`, ...). Returns
 * undefined when everything must be loaded, or when nothing would be left out anyway.
 */
export function planLoads(
  parses: readonly unknown[],
  tables: ReadonlyMap<string, readonly string[]>,
  catalog: ReadonlySet<string>,
): LoadPlan | undefined {
  const found: Found = { mentioned: new Set(), lastOfRef: new Set(), tables: new Map(), ctes: new Set() };
  for (const parse of parses) {
    if (!isRecord(parse) || parse.error !== false || !Array.isArray(parse.statements)) return undefined;
    if (!scan(parse.statements, found)) return undefined;
  }
  // Every table read is one of ours or a CTE: a catalog view (`duckdb_columns`,
  // `information_schema.columns`) would show which columns were created. CTE names are not
  // resolved by scope here, so none may be a catalog name either: a name defined as a CTE in one
  // place would otherwise let the same name elsewhere, out of that scope, reach the catalog.
  for (const t of found.tables.keys()) if (!tables.has(t) && !found.ctes.has(t)) return undefined;
  for (const c of found.ctes) if (catalog.has(c)) return undefined;
  const plan = new Map<string, TableLoad>();
  let prunes = false;
  for (const [name, columns] of tables) {
    const aliases = found.tables.get(name);
    if (aliases === undefined) {
      plan.set(name, { rows: false, columns: undefined });
      prunes = true;
      continue;
    }
    if (found.lastOfRef.has(name) || [...aliases].some((a) => found.lastOfRef.has(a))) {
      plan.set(name, { rows: true, columns: undefined });
      continue;
    }
    const keep = new Set(columns.filter((c) => found.mentioned.has(c)));
    if (keep.size === 0) keep.add(ROW_COLUMN);
    if (keep.size < columns.length) prunes = true;
    plan.set(name, { rows: true, columns: keep.size === columns.length ? undefined : keep });
  }
  return prunes ? plan : undefined;
}

/** Walks a parse (iteratively: a deeply nested expression must not overflow the stack). Returns false to bail. */
function scan(root: unknown, found: Found): boolean {
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const node = stack.pop();
    if (Array.isArray(node)) {
      for (const x of node) stack.push(x);
      continue;
    }
    if (!isRecord(node)) continue;
    if (node.type === "SELECT_NODE" && selectsAllOfValues(node)) {
      // `WITH t(a, b) AS (VALUES ...)` parses as `SELECT * FROM (VALUES ...)`: that `*` expands to
      // the literal list's columns, none of ours. The rest of the node is walked as usual.
      for (const [k, v] of Object.entries(node)) if (k !== "select_list") stack.push(v);
      continue;
    }
    if ("class" in node && !NAMED_EXPRESSIONS.has(String(node.class))) return false;
    if (node.type === "SELECT_NODE" && !namedTableRef(node.from_table)) return false;
    if (node.type === "JOIN" && !("class" in node)) {
      if (!namedTableRef(node.left) || !namedTableRef(node.right)) return false;
      if (node.ref_type === "NATURAL") return false; // joins on every shared name
      if (node.using_columns !== undefined && !addNames(node.using_columns, found.mentioned)) return false;
    }
    if (isRecord(node.cte_map) && Array.isArray(node.cte_map.map)) {
      for (const entry of node.cte_map.map) {
        if (!isRecord(entry) || typeof entry.key !== "string") return false;
        found.ctes.add(entry.key.toLowerCase());
      }
    }
    if (node.type === "BASE_TABLE" && !("class" in node)) {
      if (typeof node.table_name !== "string") return false;
      // A schema or catalog: a catalog view, or ours named the long way (nothing needs that).
      if (node.schema_name !== "" || node.catalog_name !== "") return false;
      // `position AS p(a, b)` renames columns by position: pruning would move them.
      if (Array.isArray(node.column_name_alias) && node.column_name_alias.length > 0) return false;
      const table = node.table_name.toLowerCase();
      const aliases = found.tables.get(table) ?? new Set<string>();
      found.tables.set(table, aliases);
      if (typeof node.alias === "string" && node.alias !== "") aliases.add(node.alias.toLowerCase());
    }
    if (node.class === "COLUMN_REF") {
      const names = node.column_names;
      if (!Array.isArray(names) || names.length === 0 || !addNames(names, found.mentioned)) return false;
      found.lastOfRef.add(String(names[names.length - 1]).toLowerCase());
    }
    for (const v of Object.values(node)) if (typeof v === "object" && v !== null) stack.push(v);
  }
  return true;
}

/** A FROM clause, or one side of a join, of a kind that reads tables only through named columns. */
function namedTableRef(v: unknown): boolean {
  return isRecord(v) && typeof v.type === "string" && NAMED_TABLE_REFS.has(v.type);
}

/** A SELECT whose list is only a plain `*` and whose FROM is a VALUES list. */
function selectsAllOfValues(node: Record<string, unknown>): boolean {
  const from = node.from_table;
  const list = node.select_list;
  return (
    isRecord(from) &&
    from.type === "EXPRESSION_LIST" &&
    Array.isArray(list) &&
    list.length > 0 &&
    list.every(
      (x) =>
        isRecord(x) &&
        x.class === "STAR" &&
        x.relation_name === "" &&
        x.columns === false &&
        x.expr === null &&
        emptyList(x.exclude_list) &&
        emptyList(x.replace_list) &&
        emptyList(x.qualified_exclude_list) &&
        emptyList(x.rename_list),
    )
  );
}

/** An absent or empty list (fields newer DuckDB versions added to a STAR node). */
function emptyList(v: unknown): boolean {
  return v === undefined || (Array.isArray(v) && v.length === 0);
}

function addNames(names: unknown, into: Set<string>): boolean {
  if (!Array.isArray(names)) return false;
  for (const n of names) {
    if (typeof n !== "string") return false;
    into.add(n.toLowerCase());
  }
  return true;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
