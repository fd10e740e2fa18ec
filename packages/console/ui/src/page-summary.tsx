/** Executive summary: every section of the executive-summary viewport as tiles, charts and tables. */
import { useMemo, useState } from "preact/hooks";
import type { Section, UiResult } from "./api.ts";
import { TOTEBOX_STATUSES, type ToteboxStatus } from "./api.ts";
import { Chart } from "./chart.tsx";
import { describePie, pieOption } from "./charts.ts";
import {
  Card,
  cellOf,
  DataTable,
  PartialBanner,
  RunStatus,
  StatusBadge,
  usable,
  useStore,
  VerifiedBadge,
} from "./components.tsx";
import { formatAmount, formatDetail, formatInteger, toNumber } from "./format.ts";
import { AsOfForm, asOfOf, dateParam, PageHead, useEnsureRuns } from "./page-common.tsx";
import { currencyOf, exceptionLabel, FigureTiles, summaryWant, WindowsChart } from "./page-overview.tsx";
import { KEYS } from "./routes.ts";
import { section } from "./sections.ts";

export function SummaryPage() {
  const store = useStore();
  const session = store.session?.data ?? null;
  const run = store.run(KEYS.summary);
  const last = run?.request.params?.as_of;
  const [asOf, setAsOf] = useState<string>(typeof last === "string" ? last : "");
  const result = usable(run);
  useEnsureRuns(session ? [summaryWant(dateParam(asOf))] : null);
  const go = (d: string) => {
    const w = summaryWant(dateParam(d));
    void store.start(w.key, w.label, w.request);
  };
  return (
    <>
      <PageHead
        title="Executive summary"
        lead="The estate on one page: key figures, income, exceptions and who answered."
      >
        <AsOfForm
          id="summary-as-of"
          value={asOf || asOfOf(run?.result) || ""}
          onDate={(d) => {
            setAsOf(d);
            if (d === "" || dateParam(d)) go(d);
          }}
          onSubmit={() => go(asOf)}
        />
      </PageHead>
      <RunStatus run={run} what="Executive summary" />
      {run?.result?.error ? <PartialBanner result={run.result} what="Executive summary" /> : null}
      {result ? <Summary result={result} /> : null}
    </>
  );
}

function Summary({ result }: { result: UiResult }) {
  const figures = section(result, "figures");
  const windows = section(result, "windows");
  const exceptions = section(result, "exceptions");
  const coverage = section(result, "coverage");
  const cur = currencyOf(result);
  return (
    <>
      <PartialBanner result={result} what="Executive summary" />
      {figures ? (
        <Card id="sum-figures" title={figures.title} actions={<VerifiedBadge result={result} />}>
          <FigureTiles result={result} all />
        </Card>
      ) : null}
      {windows ? (
        <Card id="sum-windows" title={windows.title} actions={<VerifiedBadge result={result} />}>
          <div class="stack">
            <WindowsChart result={result} />
            <DataTable
              testid="windows-table"
              caption="Income, expenses and net per reporting window (1D to inception-to-date)"
              columns={windows.columns}
              rows={windows.rows}
              rowHeader="period"
              currency={() => cur}
            />
          </div>
        </Card>
      ) : null}
      {exceptions ? (
        <Card
          id="sum-exceptions"
          title={`${exceptions.title} (${formatInteger(exceptions.rows.length)})`}
          actions={<VerifiedBadge result={result} />}
        >
          <DataTable
            testid="exceptions-table"
            caption="Intercompany mismatches, one-sided pairs, Toteboxes that did not answer, and staged entries awaiting their owner"
            columns={exceptions.columns}
            rows={exceptions.rows}
            rowAttrs={(row) => ({ "data-kind": String(cellOf(exceptions.columns, row, "kind") ?? "") })}
            render={{
              kind: (v) => <span class={`kind kind-${String(v ?? "")}`}>{exceptionLabel(v)}</span>,
              detail: (v, row) => formatDetail(cellOf(exceptions.columns, row, "kind"), v, cur),
              // `amount` is money for intercompany rows and a count for staged entries.
              amount: (v, row) => {
                const kind = String(cellOf(exceptions.columns, row, "kind") ?? "");
                if (v === null) return "—";
                return kind.startsWith("intercompany") ? formatAmount(v, cur) : formatInteger(v);
              },
            }}
            empty="No exceptions."
          />
        </Card>
      ) : null}
      {coverage ? <CoverageSection result={result} s={coverage} /> : null}
    </>
  );
}

const STATUS_COLORS: Record<ToteboxStatus, string> = {
  ok: "#1f7a4d",
  timeout: "#c46a0c",
  offline: "#5b6675",
  denied: "#7b4fc4",
  suppressed: "#2456c7",
  error: "#b42318",
};

function CoverageSection({ result, s }: { result: UiResult; s: Section }) {
  const slices = useMemo(
    () =>
      s.rows.map((r) => {
        const st = String(cellOf(s.columns, r, "status") ?? "");
        return {
          name: st,
          value: toNumber(cellOf(s.columns, r, "toteboxes")) ?? 0,
          ...(st in STATUS_COLORS ? { color: STATUS_COLORS[st as ToteboxStatus] } : {}),
        };
      }),
    [s],
  );
  return (
    <Card id="sum-coverage" title={s.title} actions={<VerifiedBadge result={result} />}>
      <div class="grid-2 grid-chart-table">
        <Chart
          testid="chart-coverage"
          label={describePie("Toteboxes by answer status", slices)}
          option={pieOption(slices)}
        />
        <DataTable
          testid="coverage-summary-table"
          caption={
            <>
              Toteboxes by answer status (<a href="#/coverage">each Totebox's status and reason</a>)
            </>
          }
          columns={s.columns}
          rows={s.rows}
          rowHeader="status"
          rowAttrs={(row) => ({
            class: toNumber(cellOf(s.columns, row, "toteboxes")) === 0 ? "row-zero" : undefined,
          })}
          render={{
            status: (v) =>
              (TOTEBOX_STATUSES as readonly string[]).includes(String(v)) ? (
                <StatusBadge status={v as ToteboxStatus} />
              ) : (
                String(v ?? "")
              ),
          }}
        />
      </div>
    </Card>
  );
}
