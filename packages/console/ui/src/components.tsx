/** Shared building blocks: verification marks, partial banners, status badges, tables, tiles. */
import { type ComponentChildren, createContext } from "preact";
import { useContext, useMemo, useState } from "preact/hooks";
import type { Column, Outcome, ToteboxStatus, UiResult } from "./api.ts";
import {
  type AmountDecimals,
  type Cell,
  columnDecimals,
  formatCell,
  formatInteger,
  humanise,
  isAmountColumn,
} from "./format.ts";
import type { Run, Store } from "./store.ts";
import { coverageOf, unverifiedReason, VERIFIED_EXPLANATION } from "./verification.ts";

export const StoreContext = createContext<Store | null>(null);

export function useStore(): Store {
  const s = useContext(StoreContext);
  if (!s) throw new Error("StoreContext missing");
  return s;
}

// ---------------------------------------------------------------------------------------------
// Marks and banners

/** ✓ verified, or a visible "unverified" badge with the reason next to it (never colour alone). */
export function VerifiedBadge({ result, compact = false }: { result: UiResult; compact?: boolean }) {
  // A fan-out that failed as a whole is never shown as verified, whatever its flags say.
  if (result.verification.verified && result.error === null) {
    return (
      <span class="badge badge-ok" data-testid="verified" title={VERIFIED_EXPLANATION}>
        <span aria-hidden="true">✓</span> verified
      </span>
    );
  }
  const reason = unverifiedReason(result);
  return (
    <span class="unverified">
      <span class="badge badge-warn" data-testid="unverified" title={reason}>
        <span aria-hidden="true">!</span> unverified
      </span>
      {compact ? <span class="visually-hidden">: {reason}</span> : <span class="badge-reason">{reason}</span>}
    </span>
  );
}

const STATUS_GLYPH: Record<ToteboxStatus, string> = {
  ok: "✓",
  timeout: "◷",
  offline: "○",
  denied: "⊘",
  suppressed: "◐",
  error: "✕",
};

export function StatusBadge({ status }: { status: ToteboxStatus }) {
  const tone = status === "ok" ? "ok" : status === "suppressed" ? "info" : "bad";
  return (
    <span class={`status status-${tone}`}>
      <span aria-hidden="true">{STATUS_GLYPH[status]}</span> {status}
    </span>
  );
}

/** "N of M Toteboxes answered" with every missing one and why. Shown whenever anything is missing. */
export function PartialBanner({ result, what }: { result: UiResult; what: string }) {
  return <PartialBanners items={[{ result, what }]} />;
}

/** Missing Toteboxes named one by one in a banner; the rest are counted by status. */
const BANNER_LISTED = 8;

/**
 * One banner for several fan-outs of a page (the overview runs two): each one's count, then every
 * missing Totebox once, naming the fan-outs it is missing from when that is not all of them.
 */
export function PartialBanners({ items }: { items: readonly { result: UiResult; what: string }[] }) {
  const partial = items.map((i) => ({ ...i, c: coverageOf(i.result) })).filter((i) => i.c.partial);
  if (partial.length === 0) return null;
  const missing = new Map<string, { o: Outcome; from: string[] }>();
  for (const { c, what } of partial) {
    for (const o of c.missing) {
      const m = missing.get(o.totebox);
      if (m) m.from.push(what);
      else missing.set(o.totebox, { o, from: [what] });
    }
  }
  const all = [...missing.values()];
  const shown = all.slice(0, BANNER_LISTED);
  const rest = new Map<string, number>();
  for (const { o } of all.slice(BANNER_LISTED)) rest.set(o.status, (rest.get(o.status) ?? 0) + 1);
  const suppressed = Math.max(...partial.map((p) => p.c.suppressed.length));
  return (
    <div class="banner banner-warn" data-testid="partial-banner" role="status">
      <p class="banner-title">
        <span aria-hidden="true">⚠ </span>
        {partial.map((p, i) => (
          <span key={p.what}>
            {i > 0 ? " · " : ""}
            {p.what}: {formatInteger(p.c.answered)} of {formatInteger(p.c.targeted)} Toteboxes answered
          </span>
        ))}
      </p>
      {shown.length > 0 && (
        <ul class="banner-list">
          {shown.map(({ o, from }) => (
            <li key={o.totebox}>
              <strong>{o.name || o.totebox}</strong> <span class="muted">({o.totebox})</span> —{" "}
              <StatusBadge status={o.status} /> {o.reason}
              {o.code ? <code class="code">{o.code}</code> : null}
              {partial.length > 1 && from.length < partial.length ? (
                <span class="muted"> (missing from {from.join(", ")})</span>
              ) : null}
            </li>
          ))}
          {all.length > shown.length && (
            <li>
              and {formatInteger(all.length - shown.length)} more:{" "}
              {[...rest].map(([status, n]) => `${formatInteger(n)} ${status}`).join(", ")} (see{" "}
              <a href="#/coverage">Coverage</a>)
            </li>
          )}
        </ul>
      )}
      {suppressed > 0 && (
        <p class="banner-note">{suppressed} answered with groups withheld by their owner's privacy floor.</p>
      )}
    </div>
  );
}

export function ErrorBox({ title, problem }: { title: string; problem: { code: string; message: string } }) {
  return (
    <div class="banner banner-error" role="alert">
      <p class="banner-title">
        <span aria-hidden="true">✕ </span>
        {title}
      </p>
      <p>
        {problem.message} <code class="code">{problem.code}</code>
      </p>
    </div>
  );
}

/** A run's result if it can be shown as data: a fan-out that failed as a whole (abort, cancel,
 * combine failure) is reported by RunStatus and its sections are not shown as figures. */
export function usable(run: Run | undefined): UiResult | null {
  const r = run?.result ?? null;
  return r && r.error === null ? r : null;
}

/** The state of one run where its data would be: loading, failed, or the fan-out's own error. */
export function RunStatus({ run, what }: { run: Run | undefined; what: string }) {
  if (!run || run.phase === "starting" || run.phase === "running") {
    return (
      <p class="loading" aria-busy="true">
        Loading {what}…
      </p>
    );
  }
  if (run.phase === "failed" && run.error)
    return <ErrorBox title={`${what} could not be loaded`} problem={run.error} />;
  if (run.result?.error) return <ErrorBox title={`${what} did not complete`} problem={run.result.error} />;
  return null;
}

// ---------------------------------------------------------------------------------------------
// Layout pieces

export function Card({
  title,
  actions,
  children,
  id,
  class: cls,
}: {
  title: ComponentChildren;
  actions?: ComponentChildren;
  children: ComponentChildren;
  id?: string;
  class?: string;
}) {
  return (
    <section class={`card ${cls ?? ""}`} aria-labelledby={id}>
      <header class="card-head">
        <h2 id={id}>{title}</h2>
        {actions ? <div class="card-actions">{actions}</div> : null}
      </header>
      {children}
    </section>
  );
}

export function Tile({
  testid,
  label,
  value,
  raw,
  sub,
  result,
}: {
  testid?: string;
  label: string;
  value: string;
  /** The exact figure (minor units / ratio) for tests and copy-paste. */
  raw?: string | null;
  sub?: ComponentChildren;
  result?: UiResult | null;
}) {
  return (
    <div class="tile" data-testid={testid} data-value={raw ?? undefined}>
      <p class="tile-label">{label}</p>
      <p class="tile-value num">{value}</p>
      {sub ? <p class="tile-sub">{sub}</p> : null}
      {result ? (
        <p class="tile-mark">
          <VerifiedBadge result={result} compact />
        </p>
      ) : null}
    </div>
  );
}

// ---------------------------------------------------------------------------------------------
// Tables

export type Row = readonly Cell[];

/**
 * A typed table. The body is memoised on (rows, columns, shown-all, hidden columns): renderers and
 * row attributes must depend only on the row and on data that changes with `rows`, because the
 * App re-renders on every progress page of any fan-out and a 10,000-row body must not be rebuilt.
 */
export interface DataTableProps {
  readonly caption: ComponentChildren;
  readonly columns: readonly Column[];
  readonly rows: readonly Row[];
  readonly testid?: string;
  /** Columns not shown (still available to renderers). */
  readonly hide?: readonly string[];
  readonly labels?: Readonly<Record<string, string>>;
  /** The column rendered as the row's header cell (<th scope="row">). */
  readonly rowHeader?: string;
  /** Currency of a row's amounts (null: plain figures). */
  readonly currency?: (row: Row) => string | null;
  /** Extra attributes per row (data-* hooks, class). */
  readonly rowAttrs?: (row: Row, index: number) => Record<string, string | undefined>;
  /** Custom cell content per column. */
  readonly render?: Readonly<Record<string, (v: Cell, row: Row) => ComponentChildren>>;
  /** An extra trailing column (actions). */
  readonly extra?: { readonly header: string; readonly cell: (row: Row, index: number) => ComponentChildren };
  /** Rows rendered before "Show all" (large fleets). */
  readonly limit?: number;
  readonly empty?: string;
}

export function DataTable(p: DataTableProps) {
  const [all, setAll] = useState(false);
  const limit = p.limit ?? 500;
  const hidden = new Set(p.hide ?? []);
  const cols = p.columns.map((c, i) => ({ c, i })).filter(({ c }) => !hidden.has(c.name));
  const label = (name: string) => p.labels?.[name] ?? humanise(name);
  const hideKey = (p.hide ?? []).join(",");
  // Deliberately not every input: see DataTableProps (renderers follow `rows`).
  const body = useMemo(() => {
    const rows = all ? p.rows : p.rows.slice(0, limit);
    // Per amount column: cents only when every figure in it is small (see columnDecimals).
    const decimals = new Map<string, AmountDecimals>();
    for (const { c, i } of cols) {
      if (isAmountColumn(c.name, c.type))
        decimals.set(c.name, columnDecimals(p.rows.map((r) => r[i] ?? null)));
    }
    return rows.map((row, ri) => {
      const currency = p.currency ? p.currency(row) : null;
      return (
        <tr key={ri} {...(p.rowAttrs ? p.rowAttrs(row, ri) : {})}>
          {cols.map(({ c, i }) => {
            const v = row[i] ?? null;
            const f = formatCell(c, v, currency, decimals.get(c.name) ?? "auto");
            const content = p.render?.[c.name] ? p.render[c.name]!(v, row) : f.text;
            const cls = f.numeric ? "num" : undefined;
            if (c.name === p.rowHeader) {
              return (
                <th key={c.name} scope="row" class={cls} data-value={f.raw ?? undefined}>
                  {content}
                </th>
              );
            }
            return (
              <td key={c.name} class={cls} data-col={c.name} data-value={f.raw ?? undefined}>
                {content}
              </td>
            );
          })}
          {p.extra ? <td class="cell-action">{p.extra.cell(row, ri)}</td> : null}
        </tr>
      );
    });
  }, [p.rows, p.columns, all, hideKey, limit]);
  return (
    <div class="table-wrap">
      <table class="table" data-testid={p.testid}>
        <caption>{p.caption}</caption>
        <thead>
          <tr>
            {cols.map(({ c }) => {
              const numeric = formatCell(c, null).numeric;
              return (
                <th key={c.name} scope="col" class={numeric ? "num" : undefined}>
                  {label(c.name)}
                </th>
              );
            })}
            {p.extra ? (
              <th scope="col">
                <span class="visually-hidden">{p.extra.header}</span>
              </th>
            ) : null}
          </tr>
        </thead>
        <tbody>
          {p.rows.length === 0 ? (
            <tr>
              <td colSpan={cols.length + (p.extra ? 1 : 0)} class="muted">
                {p.empty ?? "No rows."}
              </td>
            </tr>
          ) : null}
          {body}
        </tbody>
      </table>
      {p.rows.length > limit ? (
        <p class="table-more">
          {all ? `Showing all ${p.rows.length} rows. ` : `Showing ${limit} of ${p.rows.length} rows. `}
          <button type="button" class="btn btn-link" onClick={() => setAll(!all)}>
            {all ? `Show the first ${limit}` : `Show all ${p.rows.length}`}
          </button>
        </p>
      ) : null}
    </div>
  );
}

/** Index of a column by name, or -1. */
export function col(columns: readonly Column[], name: string): number {
  return columns.findIndex((c) => c.name === name);
}

/** A cell by column name. */
export function cellOf(columns: readonly Column[], row: Row, name: string): Cell {
  const i = col(columns, name);
  return i < 0 ? null : (row[i] ?? null);
}
