/**
 * Display formatting for combined results. Pure functions (no DOM), so they are unit-tested in Node.
 *
 * Units: amount columns are integer MINOR units (cents) of one currency. The aggregator turns integers
 * beyond 2^53 into strings of decimal digits, so every amount helper accepts a number or such a
 * string and never goes through a float when the value could lose precision.
 */

export type Cell = string | number | boolean | null;

/** One locale for the whole dashboard: figures must read the same in every table, tile and chart. */
export const LOCALE = "en-US";

/** Amount columns by exact name (integer minor units). */
const AMOUNT_NAMES = new Set([
  "cash",
  "assets",
  "liabilities",
  "equity",
  "debt",
  "net_value",
  "income",
  "expenses",
  "net",
  "difference",
  "average_rent",
  "total_abs_difference",
]);
/** Amount columns by prefix (balance_a, balance_b, monthly_rent_roll, ...). */
const AMOUNT_PREFIXES = ["balance", "monthly_rent"];

/** |amount| at or above this many major units is shown without decimals (10,000.00). */
export const LARGE_MAJOR = 10_000;

export function isAmountColumn(name: string, type: string): boolean {
  if (type !== "integer") return false;
  return AMOUNT_NAMES.has(name) || AMOUNT_PREFIXES.some((p) => name.startsWith(p));
}

export function isRatioColumn(name: string, type: string): boolean {
  return name === "occupancy_ratio" && (type === "number" || type === "integer");
}

const DIGITS = /^-?\d{1,400}$/;

/** The exact integer a cell holds (number or digit string), or null if it holds none. */
export function toBigInt(v: Cell): bigint | null {
  if (typeof v === "number") return Number.isSafeInteger(v) ? BigInt(v) : null;
  if (typeof v === "string" && DIGITS.test(v)) return BigInt(v);
  return null;
}

/** A cell as a JS number for charts (precision beyond 2^53 does not matter on an axis). */
export function toNumber(v: Cell): number | null {
  if (typeof v === "number") return Number.isFinite(v) ? v : null;
  if (typeof v === "string" && DIGITS.test(v)) return Number(v);
  return null;
}

/** Minor units to major units as a float, for charts only. */
export function minorToMajor(v: Cell): number | null {
  const n = toNumber(v);
  return n === null ? null : n / 100;
}

const ISO_CURRENCY = /^[A-Z]{3}$/;
const formatters = new Map<string, Intl.NumberFormat>();

function formatter(key: string, make: () => Intl.NumberFormat): Intl.NumberFormat {
  let f = formatters.get(key);
  if (!f) {
    f = make();
    formatters.set(key, f);
  }
  return f;
}

/** A currency code Intl knows, else null ("MIXED", null, garbage from a hostile Totebox). */
export function currencyCode(c: unknown): string | null {
  if (typeof c !== "string" || !ISO_CURRENCY.test(c)) return null;
  try {
    formatter(`cur:${c}:2`, () => new Intl.NumberFormat(LOCALE, { style: "currency", currency: c }));
    return c;
  } catch {
    return null;
  }
}

function amountFormatter(currency: string | null, decimals: 0 | 2): Intl.NumberFormat {
  const code = currencyCode(currency);
  return formatter(`${code ?? "plain"}:${decimals}`, () =>
    code
      ? new Intl.NumberFormat(LOCALE, {
          style: "currency",
          currency: code,
          minimumFractionDigits: decimals,
          maximumFractionDigits: decimals,
        })
      : new Intl.NumberFormat(LOCALE, { minimumFractionDigits: decimals, maximumFractionDigits: decimals }),
  );
}

/** How many decimals an amount shows: "auto" (two below LARGE_MAJOR, none above) or a fixed 0. */
export type AmountDecimals = "auto" | 0;

/**
 * Minor units as money: divided by 100, thousands separators, two decimals below LARGE_MAJOR and
 * none above (rounded half away from zero, in bigint so huge sums stay exact). A currency Intl does
 * not know (e.g. "MIXED") gives a plain number. `decimals: 0` rounds small figures too, so a column
 * of mostly large figures reads evenly.
 */
export function formatAmount(
  v: Cell,
  currency: string | null = null,
  decimals: AmountDecimals = "auto",
): string {
  const cents = toBigInt(v);
  if (cents === null) return v === null ? "—" : String(v);
  const abs = cents < 0n ? -cents : cents;
  if (decimals === "auto" && abs < BigInt(LARGE_MAJOR * 100)) {
    return amountFormatter(currency, 2).format(Number(cents) / 100);
  }
  const major = (abs + 50n) / 100n;
  return amountFormatter(currency, 0).format(cents < 0n ? -major : major);
}

/** One decimals rule for a whole column: none as soon as one figure in it is large. */
export function columnDecimals(values: readonly Cell[]): AmountDecimals {
  const limit = BigInt(LARGE_MAJOR * 100);
  for (const v of values) {
    const b = toBigInt(v);
    if (b !== null && (b < 0n ? -b : b) >= limit) return 0;
  }
  return "auto";
}

/** Compact money for chart axes and labels: "$1.2M". Input in MAJOR units. */
export function formatCompactMajor(major: number, currency: string | null = null): string {
  const code = currencyCode(currency);
  return formatter(`compact:${code ?? "plain"}`, () =>
    code
      ? new Intl.NumberFormat(LOCALE, {
          style: "currency",
          currency: code,
          notation: "compact",
          maximumFractionDigits: 1,
        })
      : new Intl.NumberFormat(LOCALE, { notation: "compact", maximumFractionDigits: 1 }),
  ).format(major);
}

/** A ratio in [0, 1] as a percentage with one decimal. */
export function formatPercent(v: Cell): string {
  const n = toNumber(v);
  if (n === null) return v === null ? "—" : String(v);
  return formatter(
    "pct",
    () =>
      new Intl.NumberFormat(LOCALE, { style: "percent", minimumFractionDigits: 1, maximumFractionDigits: 1 }),
  ).format(n);
}

/** Counts and other plain integers, with thousands separators; exact for digit strings. */
export function formatInteger(v: Cell): string {
  const b = toBigInt(v);
  if (b === null) return v === null ? "—" : String(v);
  return formatter("int", () => new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 0 })).format(b);
}

export function formatNumber(v: Cell): string {
  const n = toNumber(v);
  if (n === null) return v === null ? "—" : String(v);
  return formatter("num", () => new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 2 })).format(n);
}

export interface FormattedCell {
  readonly text: string;
  /** Right-aligned, tabular figures. */
  readonly numeric: boolean;
  /** Raw value for `data-value` on amount cells (the minor-unit integer as sent), else null. */
  readonly raw: string | null;
}

/** How one cell of a typed column is shown. */
export function formatCell(
  column: { readonly name: string; readonly type: string },
  v: Cell,
  currency: string | null = null,
  decimals: AmountDecimals = "auto",
): FormattedCell {
  if (isAmountColumn(column.name, column.type)) {
    return { text: formatAmount(v, currency, decimals), numeric: true, raw: v === null ? "" : String(v) };
  }
  if (isRatioColumn(column.name, column.type)) return { text: formatPercent(v), numeric: true, raw: null };
  switch (column.type) {
    case "integer":
      return { text: formatInteger(v), numeric: true, raw: null };
    case "number":
      return { text: formatNumber(v), numeric: true, raw: null };
    case "boolean":
      return { text: v === null ? "—" : v ? "yes" : "no", numeric: false, raw: null };
    default:
      return { text: v === null ? "—" : String(v), numeric: false, raw: null };
  }
}

const LABELS: Readonly<Record<string, string>> = {
  grp: "Group",
  totebox: "Totebox",
  toteboxes: "Toteboxes",
  net_value: "Net value",
  occupancy_ratio: "Occupancy",
  occupied_units: "Occupied units",
  toteboxes_targeted: "Toteboxes targeted",
  toteboxes_answered: "Toteboxes answered",
  pending_staged_entries: "Pending staged entries",
  entity_a: "Entity A",
  entity_b: "Entity B",
  name_a: "Name A",
  name_b: "Name B",
  balance_a: "Balance A",
  balance_b: "Balance B",
  missing_side: "Missing side",
  missing_reason: "Why missing",
  total_abs_difference: "Total |difference|",
  one_sided: "One-sided",
  counterparty_entity: "Counterparty",
  counterparty_name: "Counterparty name",
};

/** Column name to a heading: "net_value" → "Net value". */
export function humanise(name: string): string {
  const known = LABELS[name];
  if (known) return known;
  const words = name.replace(/[_-]+/g, " ").trim();
  return words.length === 0 ? name : words[0]!.toUpperCase() + words.slice(1);
}

/** A last-contact time relative to `now` (both epoch ms). */
export function formatAgo(ms: number | null, now: number): string {
  if (ms === null) return "never";
  const s = Math.round((now - ms) / 1000);
  if (s < 0) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86_400)} d ago`;
}

export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return "—";
  return ms < 10_000 ? `${formatInteger(Math.round(ms))} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** Shortens a fingerprint for display ("ab12…ef90"); the full value goes in a title. */
export function shortFingerprint(fp: string): string {
  // "SHA256:ab12…" or "ab:12:…": drop an algorithm prefix and separators, keep both ends.
  const body = fp.replace(/^[A-Za-z][A-Za-z0-9-]{0,15}:(?=[0-9A-Za-z+/=]{16})/, "").replace(/[:\s]/g, "");
  return body.length <= 20 ? body : `${body.slice(0, 8)}…${body.slice(-8)}`;
}

/**
 * Exception details are composed by the combine SQL with raw minor units ("records 48000000,
 * difference -765000"); for the intercompany kinds, show those figures as money. Other kinds carry
 * counts and are left alone.
 */
export function formatDetail(kind: Cell, detail: Cell, currency: string | null = null): string {
  const text = detail === null ? "" : String(detail);
  if (typeof kind !== "string" || !kind.startsWith("intercompany")) return text;
  return text.replace(/\b(records|difference) (-?\d{1,40})\b/g, (_, word: string, n: string) => {
    return `${word} ${formatAmount(n, currency)}`;
  });
}
