import type { Cell, ColumnSpec } from "@os-orchestration/psp";

/**
 * Output for people (aligned tables, amounts in currency units) and for programs (JSON, CSV with
 * the raw minor-unit integers). Amount columns are recognised by name: every built-in view and
 * viewport keeps amounts as integer minor units under these names.
 */
const AMOUNT =
  /^(cash|assets|liabilities|equity|debt|net_value|income|expenses|net|balance(_a|_b)?|difference|monthly_rent(_roll)?|average_rent|total_abs_difference)$/;

export function isAmount(column: ColumnSpec): boolean {
  return column.type === "integer" && AMOUNT.test(column.name);
}

export function human(column: ColumnSpec, v: Cell): string {
  if (v === null || v === undefined) return "—";
  if (isAmount(column) && (typeof v === "number" || typeof v === "bigint")) {
    return (Number(v) / 100).toLocaleString("en-US", { maximumFractionDigits: 0 });
  }
  if (column.name.endsWith("_ratio") && typeof v === "number") return `${(v * 100).toFixed(1)}%`;
  if (typeof v === "number" && !Number.isInteger(v)) return v.toFixed(2);
  return String(v);
}

export function table(columns: readonly ColumnSpec[], rows: readonly (readonly Cell[])[]): string {
  const head = columns.map((c) => c.name);
  const body = rows.map((r) => columns.map((c, i) => human(c, r[i] ?? null)));
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const right = columns.map((c) => c.type === "integer" || c.type === "number");
  const line = (cells: string[]) =>
    cells
      .map((s, i) => (right[i] ? s.padStart(widths[i]!) : s.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(head), widths.map((w) => "─".repeat(w)).join("  "), ...body.map(line)].join("\n");
}

function csvCell(v: Cell): string {
  if (v === null || v === undefined) return "";
  const s = String(v);
  // Quote what needs it; neutralise spreadsheet formulas in text cells.
  const safe = /^[=+\-@\t\r]/.test(s) && typeof v === "string" ? `'${s}` : s;
  return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

export function csv(columns: readonly ColumnSpec[], rows: readonly (readonly Cell[])[]): string {
  return [columns.map((c) => csvCell(c.name)).join(","), ...rows.map((r) => r.map(csvCell).join(","))].join(
    "\n",
  );
}

/** JSON with bigints as strings and byte strings as base64. */
export function toJson(v: unknown): string {
  return JSON.stringify(
    v,
    (_k, x) => {
      if (typeof x === "bigint") return x.toString();
      if (x instanceof Uint8Array) return { $bytes: Buffer.from(x).toString("base64") };
      if (
        x &&
        typeof x === "object" &&
        (x as { type?: unknown }).type === "Buffer" &&
        Array.isArray((x as { data?: unknown }).data)
      ) {
        return { $bytes: Buffer.from((x as { data: number[] }).data).toString("base64") };
      }
      return x;
    },
    2,
  );
}

/** Inverse of toJson for saved answers (`receipts verify FILE`). */
export function fromJson(text: string): unknown {
  return JSON.parse(text, (_k, x) =>
    x && typeof x === "object" && typeof (x as { $bytes?: unknown }).$bytes === "string"
      ? new Uint8Array(Buffer.from((x as { $bytes: string }).$bytes, "base64"))
      : x,
  );
}

/** A one-line progress bar for a terminal (stderr); nothing when not a TTY. */
export class ProgressBar {
  readonly #out: NodeJS.WriteStream;
  readonly #enabled: boolean;
  #shown = false;

  constructor(out: NodeJS.WriteStream = process.stderr) {
    this.#out = out;
    this.#enabled = out.isTTY === true;
  }

  update(answered: number, targeted: number, label = ""): void {
    if (!this.#enabled || targeted === 0) return;
    const width = 30;
    const filled = Math.round((answered / targeted) * width);
    const bar = `${"█".repeat(filled)}${"░".repeat(width - filled)}`;
    this.#out.write(`\r${bar} ${answered}/${targeted} ${label}`.slice(0, (this.#out.columns ?? 100) - 1));
    this.#shown = true;
  }

  done(): void {
    if (this.#enabled && this.#shown) this.#out.write("\r\x1b[K");
    this.#shown = false;
  }
}
