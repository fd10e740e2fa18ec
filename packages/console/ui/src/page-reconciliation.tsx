/**
 * Reconciliation: intercompany pairs, exceptions first, each with a drill-down that reads both
 * entities' own intercompany view (two `read` fan-outs, one Totebox each) and shows them side by side.
 */
import { useEffect, useRef, useState } from "preact/hooks";
import type { UiResult } from "./api.ts";
import {
  Card,
  cellOf,
  DataTable,
  PartialBanner,
  type Row,
  RunStatus,
  Tile,
  usable,
  useStore,
  VerifiedBadge,
} from "./components.tsx";
import { type Cell, columnDecimals, formatAmount, formatInteger, toBigInt } from "./format.ts";
import { AsOfForm, asOfOf, dateParam, PageHead, useEnsureRuns } from "./page-common.tsx";
import { KEYS } from "./routes.ts";
import { firstRow, section, sideRows } from "./sections.ts";
import { DRILL_KEYS, type DrillPair, type Run } from "./store.ts";

const STATUS_GLYPH: Record<string, string> = { matched: "✓", mismatched: "≠", "one-sided": "◑" };

export function ReconStatus({ status }: { status: Cell }) {
  const s = String(status ?? "");
  const tone = s === "matched" ? "ok" : s === "one-sided" ? "info" : "bad";
  return (
    <span class={`status status-${tone}`}>
      <span aria-hidden="true">{STATUS_GLYPH[s] ?? "?"}</span> {s}
    </span>
  );
}

export function ReconciliationPage() {
  const store = useStore();
  const session = store.session?.data ?? null;
  const run = store.run(KEYS.reconciliation);
  const last = run?.request.params?.as_of;
  const [asOf, setAsOf] = useState<string>(typeof last === "string" ? last : "");
  const result = usable(run);
  const req = (d: string) => {
    const p = dateParam(d);
    return { kind: "viewport" as const, name: "reconciliation", ...(p ? { params: { as_of: p } } : {}) };
  };
  useEnsureRuns(session ? [{ key: KEYS.reconciliation, label: "Reconciliation", request: req(asOf) }] : null);
  const go = (d: string) => {
    store.closeDrill();
    void store.start(KEYS.reconciliation, "Reconciliation", req(d));
  };

  return (
    <>
      <PageHead
        title="Reconciliation"
        lead="Intercompany balances pair by pair: one entity's receivable should be the other's payable."
      >
        <AsOfForm
          id="recon-as-of"
          value={asOf || asOfOf(run?.result) || ""}
          onDate={(d) => {
            setAsOf(d);
            if (d === "" || dateParam(d)) go(d);
          }}
          onSubmit={() => go(asOf)}
        />
      </PageHead>
      <RunStatus run={run} what="Reconciliation" />
      {run?.result?.error ? <PartialBanner result={run.result} what="Reconciliation" /> : null}
      {result ? <Reconciliation result={result} /> : null}
    </>
  );
}

function Reconciliation({ result }: { result: UiResult }) {
  const store = useStore();
  const pairs = section(result, "pairs");
  const sum = firstRow(section(result, "summary"));
  const summaryTitle = section(result, "summary")?.title ?? "Summary";
  const opener = useRef<HTMLElement | null>(null);
  const asOf = asOfOf(result);
  return (
    <>
      <PartialBanner result={result} what="Reconciliation" />
      {sum ? (
        <Card id="recon-summary" title={summaryTitle} actions={<VerifiedBadge result={result} />}>
          <section class="tiles" aria-label="Reconciliation summary">
            <Tile testid="tile-pairs" label="Pairs" value={formatInteger(sum.pairs ?? null)} />
            <Tile testid="tile-mismatched" label="Mismatched" value={formatInteger(sum.mismatched ?? null)} />
            <Tile testid="tile-one_sided" label="One-sided" value={formatInteger(sum.one_sided ?? null)} />
            <Tile testid="tile-matched" label="Matched" value={formatInteger(sum.matched ?? null)} />
            <Tile
              testid="tile-total_abs_difference"
              label="Total |difference|"
              value={formatAmount(sum.total_abs_difference ?? null)}
              raw={String(sum.total_abs_difference ?? "")}
              sub="Over the mismatched pairs"
            />
          </section>
        </Card>
      ) : null}
      {store.drill ? (
        <Drilldown
          pair={store.drill}
          onClose={() => {
            store.closeDrill();
            opener.current?.focus();
          }}
        />
      ) : null}
      {pairs ? (
        <Card id="pairs-head" title={pairs.title} actions={<VerifiedBadge result={result} />}>
          <DataTable
            testid="pairs-table"
            caption="Intercompany pairs: mismatched first (largest difference first), then one-sided, then matched"
            columns={pairs.columns}
            rows={pairs.rows}
            hide={["name_a", "name_b", "missing_side"]}
            labels={{ missing_reason: "Note" }}
            rowAttrs={(row) => {
              const st = String(cellOf(pairs.columns, row, "status") ?? "");
              return {
                class: `row-${st}`,
                "data-status": st,
                "data-entity-a": String(cellOf(pairs.columns, row, "entity_a") ?? ""),
                "data-entity-b": String(cellOf(pairs.columns, row, "entity_b") ?? ""),
              };
            }}
            render={{
              entity_a: (v, row) => <Entity id={v} name={cellOf(pairs.columns, row, "name_a")} />,
              entity_b: (v, row) => <Entity id={v} name={cellOf(pairs.columns, row, "name_b")} />,
              status: (v) => <ReconStatus status={v} />,
            }}
            extra={{
              header: "Drill down",
              cell: (row) => (
                <button
                  type="button"
                  class="btn btn-small"
                  onClick={(e) => {
                    opener.current = e.currentTarget;
                    void store.openDrill(pairOf(pairs.columns, row, asOf));
                  }}
                >
                  Show both sides
                  <span class="visually-hidden">
                    {" "}
                    of {String(cellOf(pairs.columns, row, "entity_a"))} and{" "}
                    {String(cellOf(pairs.columns, row, "entity_b"))}
                  </span>
                </button>
              ),
            }}
            empty="No intercompany pairs in the answers."
          />
        </Card>
      ) : (
        <p class="muted">This result has no pairs section.</p>
      )}
    </>
  );
}

function pairOf(columns: Parameters<typeof cellOf>[0], row: Row, asOf: string | null): DrillPair {
  const s = (n: string) => String(cellOf(columns, row, n) ?? "");
  return {
    entityA: s("entity_a"),
    nameA: s("name_a") || s("entity_a"),
    entityB: s("entity_b"),
    nameB: s("name_b") || s("entity_b"),
    asOf,
  };
}

function Entity({ id, name }: { id: Cell; name: Cell }) {
  return (
    <span class="entity">
      <span class="entity-name">{String(name ?? id ?? "")}</span>
      <span class="entity-id">{String(id ?? "")}</span>
    </span>
  );
}

function Drilldown({ pair, onClose }: { pair: DrillPair; onClose: () => void }) {
  const store = useStore();
  const head = useRef<HTMLHeadingElement>(null);
  // Focus follows the operator's action to the panel it opened.
  useEffect(() => head.current?.focus(), [pair]);
  const a = store.run(DRILL_KEYS.a);
  const b = store.run(DRILL_KEYS.b);
  const sa = side(a, pair.entityA, pair.entityB);
  const sb = side(b, pair.entityB, pair.entityA);
  const total = sa !== null && sb !== null ? sa + sb : null;
  const dec = columnDecimals([sa, sb, total].map((v) => (v === null ? null : String(v))));
  const money = (v: bigint) => formatAmount(String(v), null, dec);
  return (
    <section class="card drilldown" data-testid="drilldown" aria-labelledby="drill-title">
      <header class="card-head">
        <h2 id="drill-title" ref={head} tabIndex={-1}>
          Both sides: {pair.nameA} ↔ {pair.nameB}
          {pair.asOf ? <span class="muted"> as of {pair.asOf}</span> : null}
        </h2>
        <div class="card-actions">
          <button type="button" class="btn btn-small" onClick={onClose}>
            Close
          </button>
        </div>
      </header>
      <p class="muted">
        Each side is read from that entity's own Totebox (its intercompany view), not from the combined
        result. Mirrored balances sum to zero.
      </p>
      <div class="grid-2">
        <Side run={a} self={pair.entityA} selfName={pair.nameA} other={pair.entityB} otherName={pair.nameB} />
        <Side run={b} self={pair.entityB} selfName={pair.nameB} other={pair.entityA} otherName={pair.nameA} />
      </div>
      {a?.result && b?.result ? (
        <p class="drill-sum" data-testid="drilldown-sum">
          {pair.entityA} records <strong class="num">{sa === null ? "nothing" : money(sa)}</strong>,{" "}
          {pair.entityB} records <strong class="num">{sb === null ? "nothing" : money(sb)}</strong>
          {total !== null ? (
            <>
              ; sum <strong class="num">{money(total)}</strong>{" "}
              {total === 0n ? "(they mirror each other)" : "(they do not mirror each other)"}
            </>
          ) : (
            "; one side has no balance toward the other"
          )}
          .
        </p>
      ) : null}
    </section>
  );
}

/** A side's balance toward the other entity, summed over its rows (exact), or null if none. */
function side(run: Run | undefined, self: string, other: string): bigint | null {
  if (!run?.result) return null;
  let total: bigint | null = null;
  for (const s of sideRows(run.result, self, other)) {
    const bi = s.section.columns.findIndex((c) => c.name === "balance");
    if (bi < 0) continue;
    for (const r of s.rows) {
      const v = toBigInt(r[bi] ?? null);
      if (v !== null) total = (total ?? 0n) + v;
    }
  }
  return total;
}

function Side({
  run,
  self,
  selfName,
  other,
  otherName,
}: {
  run: Run | undefined;
  self: string;
  selfName: string;
  other: string;
  otherName: string;
}) {
  const result = run?.result ?? null;
  const id = `drill-${self}`;
  return (
    <section class="side" aria-labelledby={id} data-side={self}>
      <header class="side-head">
        <h3 id={id}>
          {selfName} <span class="muted">({self})</span>
        </h3>
        {result ? <VerifiedBadge result={result} /> : null}
      </header>
      <p class="muted">
        What {self} records toward {otherName}.
      </p>
      <RunStatus run={run} what={`${self}'s intercompany view`} />
      {result ? <PartialBanner result={result} what={self} /> : null}
      {result && !result.error
        ? sideRows(result, self, other).map(({ section: s, rows, total }) => (
            <div key={s.name}>
              <DataTable
                caption={`${self} toward ${other}: ${rows.length} of ${total} intercompany rows`}
                columns={s.columns}
                rows={rows}
                hide={["totebox", "counterparty_name"]}
                empty={`${self} has no intercompany row for ${other}.`}
              />
              {total > rows.length ? (
                <details class="side-all">
                  <summary>
                    All {total} intercompany rows of {self}
                  </summary>
                  <DataTable
                    caption={`Every intercompany row of ${self}`}
                    columns={s.columns}
                    rows={s.rows}
                    hide={["totebox"]}
                  />
                </details>
              ) : null}
            </div>
          ))
        : null}
      {result && result.sections.length === 0 && !result.error ? (
        <NoRows result={result} self={self} />
      ) : null}
    </section>
  );
}

/** Why a side shows no rows: it did not answer, or it answered and no rows came with the result. */
function NoRows({ result, self }: { result: UiResult; self: string }) {
  const o = result.outcomes.find((x) => x.totebox === self);
  if (!o || (o.status !== "ok" && o.status !== "suppressed")) {
    return <p class="muted">No rows: {self} did not answer (see its status above).</p>;
  }
  const rows = o.answers.reduce((n, a) => n + a.rowCount, 0);
  return (
    <p class="muted">
      {self} answered with {formatInteger(rows)} intercompany rows, but the console server sent the answer
      without its rows.
    </p>
  );
}
