/** Estate overview: the key figures as tiles, income by window, net value by region, top exceptions. */
import { useMemo } from "preact/hooks";
import type { Section, UiResult } from "./api.ts";
import { Chart } from "./chart.tsx";
import { barOption, describeBar } from "./charts.ts";
import { Card, PartialBanners, RunStatus, Tile, usable, useStore, VerifiedBadge } from "./components.tsx";
import {
  type Cell,
  formatAmount,
  formatCompactMajor,
  formatDetail,
  formatInteger,
  formatPercent,
  minorToMajor,
  toNumber,
} from "./format.ts";
import { asOfOf, PageHead, rerun, useEnsureRuns, type Want } from "./page-common.tsx";
import { KEYS } from "./routes.ts";
import { column, firstRow, rowsWhere, section } from "./sections.ts";

export function summaryWant(asOf: string | null = null): Want {
  return {
    key: KEYS.summary,
    label: "Executive summary",
    request: { kind: "viewport", name: "executive-summary", ...(asOf ? { params: { as_of: asOf } } : {}) },
  };
}

/** The grouping the overview charts by: region when the fleet has that tag. */
export function overviewTag(tags: readonly string[] | undefined): string {
  if (!tags || tags.length === 0 || tags.includes("region")) return "region";
  return tags[0]!;
}

export function OverviewPage() {
  const store = useStore();
  const session = store.session?.data ?? null;
  const tag = overviewTag(session?.tags);
  const wants: Want[] | null = session
    ? [
        summaryWant(),
        {
          key: KEYS.overviewPortfolio,
          label: `Portfolio by ${tag}`,
          request: { kind: "viewport", name: "portfolio", params: { group_by: tag } },
        },
      ]
    : null;
  useEnsureRuns(wants);
  const sumRun = store.run(KEYS.summary);
  const portRun = store.run(KEYS.overviewPortfolio);
  const summary = usable(sumRun);
  const portfolio = usable(portRun);
  const banners = [
    ...(sumRun?.result ? [{ result: sumRun.result, what: "Executive summary" }] : []),
    ...(portRun?.result ? [{ result: portRun.result, what: `Portfolio by ${tag}` }] : []),
  ];
  const asOf = asOfOf(summary);

  return (
    <>
      <PageHead
        title="Estate overview"
        lead={
          asOf
            ? `The estate as of ${asOf}, combined from every Totebox that answered.`
            : "The estate at a glance."
        }
      >
        <button type="button" class="btn" onClick={() => wants && rerun(store, wants)} disabled={!wants}>
          Refresh
        </button>
      </PageHead>
      <RunStatus run={sumRun} what="Executive summary" />
      <PartialBanners items={banners} />
      {summary ? <FigureTiles result={summary} /> : null}
      <div class="grid-2">
        <Card
          id="ov-windows"
          title="Income, expenses and net by reporting window"
          actions={summary ? <VerifiedBadge result={summary} /> : null}
        >
          {summary ? <WindowsChart result={summary} /> : <RunStatus run={sumRun} what="Income" />}
        </Card>
        <Card
          id="ov-groups"
          title={`Net value by ${tag}`}
          actions={portfolio ? <VerifiedBadge result={portfolio} /> : null}
        >
          <RunStatus run={portRun} what={`Portfolio by ${tag}`} />
          {portfolio ? <GroupChart result={portfolio} tag={tag} /> : null}
        </Card>
      </div>
      {summary ? <TopExceptions result={summary} /> : null}
    </>
  );
}

export function FigureTiles({ result, all = false }: { result: UiResult; all?: boolean }) {
  const f = firstRow(section(result, "figures"));
  if (!f) return <p class="muted">No figures in this result.</p>;
  const g = (n: string): Cell => f[n] ?? null;
  const cur = typeof f.currency === "string" ? f.currency : null;
  const amount = (v: Cell) => formatAmount(v, cur);
  const compact = (v: Cell) => {
    const m = minorToMajor(v);
    return m === null ? "—" : formatCompactMajor(m, cur);
  };
  const raw = (v: Cell) => (v === null ? "" : String(v));
  const assets = toNumber(g("assets"));
  const debt = toNumber(g("debt"));
  const ltv = assets && debt !== null && assets > 0 ? formatPercent(debt / assets) : null;
  return (
    <section class="tiles" aria-label="Key figures">
      <Tile
        testid="tile-net_value"
        label="Net value"
        value={amount(g("net_value"))}
        raw={raw(g("net_value"))}
        sub={`Assets ${compact(g("assets"))} − liabilities ${compact(g("liabilities"))}`}
        result={result}
      />
      <Tile
        testid="tile-cash"
        label="Cash"
        value={amount(g("cash"))}
        raw={raw(g("cash"))}
        result={result}
        sub={cur === "MIXED" ? "Mixed currencies: figures are not comparable" : `In ${cur ?? "minor units"}`}
      />
      <Tile
        testid="tile-debt"
        label="Debt"
        value={amount(g("debt"))}
        raw={raw(g("debt"))}
        sub={ltv ? `${ltv} of assets` : undefined}
        result={result}
      />
      <Tile
        testid="tile-occupancy"
        label="Occupancy"
        value={formatPercent(g("occupancy_ratio"))}
        raw={raw(g("occupancy_ratio"))}
        sub={`${formatInteger(g("occupied_units"))} of ${formatInteger(g("units"))} units`}
        result={result}
      />
      <Tile
        testid="tile-coverage"
        label="Toteboxes answered"
        value={`${formatInteger(g("toteboxes_answered") ?? result.answered)} of ${formatInteger(g("toteboxes_targeted") ?? result.targeted)}`}
        raw={`${raw(g("toteboxes_answered") ?? result.answered)}/${raw(g("toteboxes_targeted") ?? result.targeted)}`}
        sub={
          result.answered < result.targeted ? (
            <a href="#/coverage">{result.targeted - result.answered} did not answer: see coverage</a>
          ) : (
            "Every targeted Totebox answered"
          )
        }
        result={result}
      />
      {all ? (
        <>
          <Tile label="Assets" value={amount(g("assets"))} raw={raw(g("assets"))} result={result} />
          <Tile
            label="Liabilities"
            value={amount(g("liabilities"))}
            raw={raw(g("liabilities"))}
            result={result}
          />
          <Tile
            label="Units"
            value={formatInteger(g("units"))}
            sub={`${formatInteger(g("occupied_units"))} occupied`}
            result={result}
          />
          <Tile
            label="Pending staged entries"
            value={formatInteger(g("pending_staged_entries"))}
            sub="Awaiting their owner's approval"
            result={result}
          />
        </>
      ) : null}
    </section>
  );
}

export function WindowsChart({ result }: { result: UiResult }) {
  const s = section(result, "windows");
  const cur = currencyOf(result);
  const data = useMemo(() => (s ? windowsData(s, cur) : null), [s, cur]);
  if (!s || !data) return <p class="muted">No reporting windows in this result.</p>;
  return (
    <Chart
      testid="chart-windows"
      label={describeBar("income, expenses and net by reporting window", data)}
      option={barOption(data)}
    />
  );
}

function windowsData(s: Section, currency: string | null) {
  const ys = s.columns.filter((c) => ["income", "expenses", "net"].includes(c.name)).map((c) => c.name);
  return {
    categories: column(s, "period").map((v) => String(v ?? "")),
    series: ys.map((y) => ({
      name: y[0]!.toUpperCase() + y.slice(1),
      values: column(s, y).map(minorToMajor),
    })),
    kind: "amount" as const,
    currency,
  };
}

/** The currency of a result's figures (figures or rollup), null if none or mixed. */
export function currencyOf(result: UiResult): string | null {
  for (const s of result.sections) {
    const i = s.columns.findIndex((c) => c.name === "currency");
    if (i < 0) continue;
    const set = new Set(s.rows.map((r) => r[i]).filter((v) => typeof v === "string"));
    return set.size === 1 ? ([...set][0] as string) : null;
  }
  return null;
}

export function GroupChart({ result, tag }: { result: UiResult; tag: string }) {
  const s = section(result, "rollup");
  const data = useMemo(() => {
    if (!s) return null;
    const subs = rowsWhere(s, "level", (v) => v === "subtotal");
    const gi = s.columns.findIndex((c) => c.name === (s.chart?.x ?? "grp"));
    const ys = (s.chart?.y ?? ["net_value"]).filter((y) => s.columns.some((c) => c.name === y));
    return {
      categories: subs.map((r) => String(r[gi] ?? "(none)")),
      series: ys.map((y) => {
        const i = s.columns.findIndex((c) => c.name === y);
        return {
          name: y === "net_value" ? "Net value" : y,
          values: subs.map((r) => minorToMajor(r[i] ?? null)),
        };
      }),
      kind: "amount" as const,
      currency: currencyOf(result),
    };
  }, [s, result]);
  if (!s || !data) return <p class="muted">No roll-up in this result.</p>;
  return (
    <Chart testid="chart-groups" label={describeBar(`net value by ${tag}`, data)} option={barOption(data)} />
  );
}

const EXCEPTION_LABEL: Record<string, string> = {
  "intercompany-mismatch": "Intercompany mismatch",
  "intercompany-one-sided": "One-sided intercompany",
  "not-answered": "Did not answer",
  suppressed: "Suppressed",
  "pending-staged": "Pending staged entries",
};

export function exceptionLabel(kind: Cell): string {
  const k = String(kind ?? "");
  return EXCEPTION_LABEL[k] ?? k;
}

function TopExceptions({ result }: { result: UiResult }) {
  const s = section(result, "exceptions");
  if (!s) return null;
  const ki = s.columns.findIndex((c) => c.name === "kind");
  const ti = s.columns.findIndex((c) => c.name === "totebox");
  const di = s.columns.findIndex((c) => c.name === "detail");
  const top = s.rows.slice(0, 6);
  return (
    <Card
      id="ov-exceptions"
      title={`Exceptions (${formatInteger(s.rows.length)})`}
      actions={
        <>
          <VerifiedBadge result={result} />
          <a class="btn btn-link" href="#/reconciliation">
            Reconciliation
          </a>
          <a class="btn btn-link" href="#/summary">
            All exceptions
          </a>
        </>
      }
    >
      {top.length === 0 ? (
        <p class="muted">No exceptions: intercompany balances reconcile and every Totebox answered.</p>
      ) : (
        <ul class="exception-list">
          {top.map((r, i) => (
            <li key={i}>
              <span class={`kind kind-${String(r[ki] ?? "")}`}>{exceptionLabel(r[ki] ?? null)}</span>
              <strong>{String(r[ti] ?? "")}</strong>{" "}
              <span class="muted">{formatDetail(r[ki] ?? null, r[di] ?? null, currencyOf(result))}</span>
            </li>
          ))}
        </ul>
      )}
    </Card>
  );
}
