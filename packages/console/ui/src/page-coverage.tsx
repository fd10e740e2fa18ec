/**
 * Coverage: for the latest fan-out of any page, every targeted Totebox exactly once with its status,
 * code, reason, time and receipt check; then the fleet as the aggregator sees it.
 */
import { useEffect, useMemo, useState } from "preact/hooks";
import type { FleetEntry, Outcome, UiResult } from "./api.ts";
import {
  Card,
  ErrorBox,
  PartialBanner,
  RunStatus,
  StatusBadge,
  useStore,
  VerifiedBadge,
} from "./components.tsx";
import { formatAgo, formatInteger, formatMs, shortFingerprint } from "./format.ts";
import { PageHead, useEnsureRuns } from "./page-common.tsx";
import { summaryWant } from "./page-overview.tsx";
import { coverageKey } from "./routes.ts";
import type { Run } from "./store.ts";

export function CoveragePage({
  chosen,
  onChoose,
}: {
  chosen: string | null;
  onChoose: (key: string) => void;
}) {
  const store = useStore();
  const session = store.session?.data ?? null;
  const hasAny = store.runs().length > 0;
  // Nothing has run yet: a fresh executive summary gives every Totebox's status.
  useEnsureRuns(session && !hasAny ? [summaryWant()] : null);
  // Load the fleet once per visit (and when the session arrives).
  useEffect(() => {
    if (session) void store.loadFleet();
  }, [session !== null]);
  const key = coverageKey(store, chosen);
  const run = store.run(key);
  const choices = store.runs();
  return (
    <>
      <PageHead
        title="Coverage"
        lead="Which Toteboxes answered, which did not and why, and whether each answer verified."
      >
        {choices.length > 1 ? (
          <div class="field">
            <label for="coverage-run">Fan-out</label>
            <select id="coverage-run" value={key} onChange={(e) => onChoose(e.currentTarget.value)}>
              {choices.map((r) => (
                <option key={r.key} value={r.key}>
                  {runLabel(r)}
                </option>
              ))}
            </select>
          </div>
        ) : null}
      </PageHead>
      <RunStatus run={run} what={run?.label ?? "Fan-out"} />
      {run?.result ? <Outcomes run={run} result={run.result} /> : null}
      <Fleet />
    </>
  );
}

function runLabel(r: Run): string {
  const asOf = typeof r.request.params?.as_of === "string" ? ` as of ${r.request.params.as_of}` : "";
  const state = r.result ? `${r.result.answered} of ${r.result.targeted} answered` : r.phase;
  return `${r.label}${asOf} (${state})`;
}

/** Rows rendered before "Show all" (a 10,000-Totebox fan-out). */
const OUTCOME_LIMIT = 500;

function Outcomes({ run, result }: { run: Run; result: UiResult }) {
  const [all, setAll] = useState(false);
  // Those that did not answer first: they are what the operator came here for.
  const sorted = useMemo(
    () => [...result.outcomes].sort((a, b) => Number(a.status === "ok") - Number(b.status === "ok")),
    [result],
  );
  const rows = useMemo(
    () => (all ? sorted : sorted.slice(0, OUTCOME_LIMIT)).map((o) => <OutcomeRow key={o.totebox} o={o} />),
    [sorted, all],
  );
  const byStatus = new Map<string, number>();
  for (const o of result.outcomes) byStatus.set(o.status, (byStatus.get(o.status) ?? 0) + 1);
  return (
    <>
      <PartialBanner result={result} what={run.label} />
      <Card
        id="coverage-head"
        title={`${run.label}: every targeted Totebox`}
        actions={<VerifiedBadge result={result} />}
      >
        <p class="muted">
          {formatInteger(result.targeted)} targeted, {formatInteger(result.answered)} answered
          {[...byStatus.entries()]
            .filter(([s]) => s !== "ok")
            .map(([s, n]) => `, ${n} ${s}`)
            .join("")}
          . Receipts verified: {result.verification.receipts}; combine step recomputed:{" "}
          {result.verification.recomputed === null
            ? "not applicable"
            : result.verification.recomputed
              ? "yes, same"
              : "differed"}
          .
        </p>
        <div class="table-wrap">
          <table class="table" data-testid="coverage-table">
            <caption>
              Every Totebox targeted by {run.label}, with its status, the reason when it is not ok, and its
              receipt check
            </caption>
            <thead>
              <tr>
                <th scope="col">Totebox</th>
                <th scope="col">Status</th>
                <th scope="col">Code</th>
                <th scope="col">Reason</th>
                <th scope="col" class="num">
                  Elapsed
                </th>
                <th scope="col" class="num">
                  Rows
                </th>
                <th scope="col">Receipt</th>
              </tr>
            </thead>
            <tbody>{rows}</tbody>
          </table>
          {sorted.length > OUTCOME_LIMIT ? (
            <p class="table-more">
              {all ? `Showing all ${sorted.length}. ` : `Showing ${OUTCOME_LIMIT} of ${sorted.length}. `}
              <button type="button" class="btn btn-link" onClick={() => setAll(!all)}>
                {all ? `Show the first ${OUTCOME_LIMIT}` : `Show all ${sorted.length}`}
              </button>
            </p>
          ) : null}
        </div>
      </Card>
    </>
  );
}

function OutcomeRow({ o }: { o: Outcome }) {
  const rows = o.answers.reduce((s, a) => s + a.rowCount, 0);
  const suppressed = o.answers.reduce((s, a) => s + a.suppressedGroups, 0);
  const answered = o.status === "ok" || o.status === "suppressed";
  return (
    <tr data-totebox={o.totebox} data-status={o.status} class={`row-status-${o.status}`}>
      <th scope="row">
        <span class="entity">
          <span class="entity-name">{o.name || o.totebox}</span>
          <span class="entity-id">{o.totebox}</span>
        </span>
      </th>
      <td>
        <StatusBadge status={o.status} />
      </td>
      <td>{o.code ? <code class="code">{o.code}</code> : <span class="muted">—</span>}</td>
      <td>{o.reason || <span class="muted">—</span>}</td>
      <td class="num" data-value={String(o.elapsedMs)}>
        {formatMs(o.elapsedMs)}
      </td>
      <td class="num">
        {answered ? formatInteger(rows) : "—"}
        {suppressed > 0 ? <span class="muted"> ({suppressed} groups withheld)</span> : null}
      </td>
      <td data-verified={String(o.verified)}>
        {!answered ? (
          <span class="muted">no answer</span>
        ) : o.verified ? (
          <span class="status status-ok" title="This Totebox's signed receipt verified with its pinned key">
            <span aria-hidden="true">✓</span> verified
          </span>
        ) : (
          <span class="status status-bad" title="This Totebox's receipt did not verify">
            <span aria-hidden="true">!</span> unverified
            {o.verifyCode ? <code class="code">{o.verifyCode}</code> : null}
          </span>
        )}
      </td>
    </tr>
  );
}

function Fleet() {
  const store = useStore();
  const fleet = store.fleet;
  const [all, setAll] = useState(false);
  const data = fleet?.data ?? null;
  // Offline first (what needs attention), memoised on the fleet answer: the App re-renders often.
  const sorted = useMemo(
    () => (data ? [...data].sort((a, b) => Number(a.online) - Number(b.online)) : []),
    [data],
  );
  const rows = useMemo(() => {
    const now = Date.now();
    return (all ? sorted : sorted.slice(0, OUTCOME_LIMIT)).map((f) => (
      <FleetRow key={f.id} f={f} now={now} />
    ));
  }, [sorted, all]);
  return (
    <Card
      id="fleet-head"
      title={`Fleet${fleet?.data ? ` (${formatInteger(fleet.data.length)})` : ""}`}
      actions={
        <button type="button" class="btn btn-small" onClick={() => void store.loadFleet()}>
          Refresh fleet
        </button>
      }
    >
      {!fleet || fleet.phase === "loading" ? <p class="loading">Loading the fleet…</p> : null}
      {fleet?.phase === "failed" && fleet.error ? (
        <ErrorBox title="The fleet could not be loaded" problem={fleet.error} />
      ) : null}
      {fleet?.data ? (
        <div class="table-wrap">
          <table class="table" data-testid="fleet-table">
            <caption>Every registered Totebox as the aggregator sees it now</caption>
            <thead>
              <tr>
                <th scope="col">Totebox</th>
                <th scope="col">Tags</th>
                <th scope="col">State</th>
                <th scope="col">Link</th>
                <th scope="col">In grant</th>
                <th scope="col">Last contact</th>
                <th scope="col">Last error</th>
              </tr>
            </thead>
            <tbody>{rows}</tbody>
          </table>
          {sorted.length > OUTCOME_LIMIT ? (
            <p class="table-more">
              {all ? `Showing all ${sorted.length}. ` : `Showing ${OUTCOME_LIMIT} of ${sorted.length}. `}
              <button type="button" class="btn btn-link" onClick={() => setAll(!all)}>
                {all ? `Show the first ${OUTCOME_LIMIT}` : `Show all ${sorted.length}`}
              </button>
            </p>
          ) : null}
        </div>
      ) : null}
    </Card>
  );
}

function FleetRow({ f, now }: { f: FleetEntry; now: number }) {
  return (
    <tr data-totebox={f.id} data-online={String(f.online)}>
      <th scope="row">
        <span class="entity">
          <span class="entity-name">{f.name || f.id}</span>
          <span class="entity-id">{f.id}</span>
          <span class="entity-id" title={`Pinned certificate fingerprint ${f.fingerprint}`}>
            {shortFingerprint(f.fingerprint)}
          </span>
        </span>
      </th>
      <td>
        <ul class="tags">
          {Object.entries(f.tags).map(([k, v]) => (
            <li key={k} class="tag">
              {k}: {v}
            </li>
          ))}
        </ul>
      </td>
      <td>{f.state}</td>
      <td>
        {f.online ? (
          <span class="status status-ok">
            <span aria-hidden="true">●</span> online
          </span>
        ) : (
          <span class="status status-bad">
            <span aria-hidden="true">○</span> offline
          </span>
        )}
        <span class="muted"> {f.health}</span>
      </td>
      <td>{f.inGrant ? "yes" : "no"}</td>
      <td title={f.lastContact === null ? undefined : new Date(f.lastContact).toISOString()}>
        {formatAgo(f.lastContact, now)}
      </td>
      <td>
        {f.lastError ? (
          <>
            <code class="code">{f.lastError.code}</code> {f.lastError.message}
          </>
        ) : (
          <span class="muted">—</span>
        )}
      </td>
    </tr>
  );
}
