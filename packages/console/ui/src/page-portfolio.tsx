/** Portfolio: the roll-up grouped by any tag, with subtotals and the grand total. */
import { useState } from "preact/hooks";
import type { FanOutRequest, UiResult } from "./api.ts";
import {
  Card,
  cellOf,
  DataTable,
  PartialBanner,
  type Row,
  RunStatus,
  usable,
  useStore,
  VerifiedBadge,
} from "./components.tsx";
import { humanise } from "./format.ts";
import { AsOfForm, asOfOf, dateParam, PageHead, useEnsureRuns } from "./page-common.tsx";
import { currencyOf, GroupChart } from "./page-overview.tsx";
import { KEYS } from "./routes.ts";
import { section } from "./sections.ts";

function request(groupBy: string, asOf: string | null): FanOutRequest {
  return {
    kind: "viewport",
    name: "portfolio",
    params: { group_by: groupBy, ...(asOf ? { as_of: asOf } : {}) },
  };
}

export function PortfolioPage() {
  const store = useStore();
  const session = store.session?.data ?? null;
  const tags = [...(session?.tags ?? [])].sort();
  const run = store.run(KEYS.portfolio);
  const last = run?.request.params;
  const fallback = tags.includes("region") ? "region" : (tags[0] ?? "region");
  const [groupBy, setGroupBy] = useState<string>(
    typeof last?.group_by === "string" ? last.group_by : fallback,
  );
  const [asOf, setAsOf] = useState<string>(typeof last?.as_of === "string" ? last.as_of : "");
  const result = usable(run);

  useEnsureRuns(
    session
      ? [
          {
            key: KEYS.portfolio,
            label: `Portfolio by ${groupBy}`,
            request: request(groupBy, dateParam(asOf)),
          },
        ]
      : null,
  );

  const go = (g: string, d: string) =>
    void store.start(KEYS.portfolio, `Portfolio by ${g}`, request(g, dateParam(d)));

  return (
    <>
      <PageHead
        title="Portfolio"
        lead="Net position, debt and occupancy by any tag, with subtotals and a grand total."
      >
        <AsOfForm
          id="portfolio-as-of"
          value={asOf || asOfOf(run?.result) || ""}
          onDate={(d) => {
            setAsOf(d);
            if (d === "" || dateParam(d)) go(groupBy, d);
          }}
          onSubmit={() => go(groupBy, asOf)}
        >
          <div class="field">
            <label for="group-by">Group by</label>
            <select
              id="group-by"
              data-testid="group-by"
              value={groupBy}
              onChange={(e) => {
                const g = e.currentTarget.value;
                setGroupBy(g);
                go(g, asOf);
              }}
            >
              {(tags.length > 0 ? tags : [groupBy]).map((t) => (
                <option key={t} value={t}>
                  {humanise(t)}
                </option>
              ))}
            </select>
          </div>
        </AsOfForm>
      </PageHead>
      <RunStatus run={run} what="Portfolio" />
      {run?.result?.error ? <PartialBanner result={run.result} what="Portfolio" /> : null}
      {result ? <Rollup result={result} /> : null}
    </>
  );
}

/** Shown only with "All columns" (the table stays readable at 1024 px without them). */
const DETAIL_COLUMNS = ["assets", "liabilities", "equity", "occupied_units"];

function Rollup({ result }: { result: UiResult }) {
  const [allColumns, setAllColumns] = useState(false);
  const s = section(result, "rollup");
  const groupBy = typeof result.params.group_by === "string" ? result.params.group_by : "group";
  if (!s) return <p class="muted">This result has no roll-up section.</p>;
  const cols = s.columns;
  const rowCurrency = (row: Row) => {
    const c = cellOf(cols, row, "currency");
    return typeof c === "string" ? c : null;
  };
  const mixed =
    s.rows.length > 0 && (currencyOf(result) === null || s.rows.some((r) => rowCurrency(r) === "MIXED"));
  return (
    <>
      <PartialBanner result={result} what={s.title} />
      <Card
        id="rollup-chart"
        title={`Net value by ${humanise(groupBy).toLowerCase()}`}
        actions={<VerifiedBadge result={result} />}
      >
        <GroupChart result={result} tag={groupBy} />
      </Card>
      <Card
        id="rollup-head"
        title={s.title}
        actions={
          <>
            <label class="check">
              <input
                type="checkbox"
                checked={allColumns}
                onChange={(e) => setAllColumns(e.currentTarget.checked)}
              />
              All columns
            </label>
            <VerifiedBadge result={result} />
          </>
        }
      >
        {mixed ? (
          <p class="banner banner-warn">
            These Toteboxes keep their books in different currencies: sums marked MIXED are not comparable.
          </p>
        ) : null}
        <DataTable
          testid="rollup-table"
          caption={`${s.title}${typeof result.params.as_of === "string" ? ` as of ${result.params.as_of}` : ""}: one row per Totebox, a subtotal per ${groupBy}, and the total`}
          columns={cols}
          rows={s.rows}
          hide={["level", "totebox", "name", "currency", ...(allColumns ? [] : DETAIL_COLUMNS)]}
          labels={{ grp: `${humanise(groupBy)} / Totebox` }}
          rowHeader="grp"
          currency={rowCurrency}
          rowAttrs={(row) => {
            const level = String(cellOf(cols, row, "level") ?? "");
            const grp = cellOf(cols, row, "grp");
            const tb = cellOf(cols, row, "totebox");
            return {
              class: `row-${level}`,
              "data-level": level,
              "data-grp": grp === null ? undefined : String(grp),
              "data-totebox": level === "totebox" && tb !== null ? String(tb) : undefined,
            };
          }}
          render={{
            grp: (v, row) => {
              const level = cellOf(cols, row, "level");
              if (level === "total") return <span class="level-label">Total</span>;
              if (level === "subtotal")
                return (
                  <span class="level-label">
                    Subtotal <span class="muted">·</span> {String(v ?? "(none)")}
                  </span>
                );
              const name = cellOf(cols, row, "name");
              const tb = String(cellOf(cols, row, "totebox") ?? "");
              return (
                <span class="entity">
                  <span class="entity-name">{name === null ? tb : String(name)}</span>
                  <span class="entity-id">{tb}</span>
                </span>
              );
            },
          }}
        />
      </Card>
    </>
  );
}
