/**
 * Live progress of the current page's fan-outs: a labelled <progress> (answered of targeted), the
 * Toteboxes as they arrive with their status, and Cancel. The panel is a polite live region (a screen
 * reader hears "5 of 12 Toteboxes answered"); the arrival list inside it is its own silent region, so
 * a large fan-out does not announce every arrival.
 */
import { StatusBadge, useStore } from "./components.tsx";
import { formatInteger, formatMs } from "./format.ts";
import { isSettled, type Run } from "./store.ts";

/** Arrivals listed per run (the newest); the rest are counted. */
const LISTED = 12;

export function ProgressPanel({ keys }: { keys: readonly string[] }) {
  const store = useStore();
  const runs = keys.map((k) => store.run(k)).filter((r): r is Run => r !== undefined);
  if (runs.length === 0) return null;
  const active = runs.some((r) => !isSettled(r));
  return (
    <section
      class={`progress-panel ${active ? "is-active" : "is-idle"}`}
      data-testid="progress"
      aria-label="Fan-out progress"
      aria-live="polite"
    >
      {runs.map((r) => (
        <RunProgress key={`${r.key}:${r.gen}`} run={r} onCancel={() => store.cancel(r.key)} />
      ))}
    </section>
  );
}

function summary(run: Run): string {
  const of = run.targeted === null ? "" : ` of ${formatInteger(run.targeted)}`;
  const answered = formatInteger(run.answered);
  switch (run.phase) {
    case "starting":
      return "starting…";
    case "running":
      return run.cancelling
        ? `cancelling… ${answered}${of} Toteboxes answered`
        : `${answered}${of} Toteboxes answered`;
    case "failed":
      return `failed: ${run.error?.message ?? "unknown error"}`;
    case "done": {
      const r = run.result!;
      const took = formatMs(r.finishedAt - r.startedAt);
      const n = `${formatInteger(r.answered)} of ${formatInteger(r.targeted)}`;
      if (r.error?.code === "ORCH_ERR_CANCELLED") return `cancelled: ${n} answered`;
      if (r.error) return `failed (${r.error.code}): ${n} answered`;
      return `${n} Toteboxes answered in ${took}`;
    }
  }
}

function RunProgress({ run, onCancel }: { run: Run; onCancel: () => void }) {
  const id = `progress-${run.key}`;
  const running = !isSettled(run);
  const listed = run.arrivals.slice(-LISTED).reverse();
  const hiddenCount = run.arrivalsSeen - listed.length;
  const targeted = run.targeted ?? 0;
  return (
    <div
      class={`run run-${run.phase} ${running ? "is-running" : "is-settled"}`}
      data-run={run.key}
      data-phase={run.phase}
    >
      <div class="run-head">
        <label for={id} class="run-label">
          {run.label}
        </label>
        <span class="run-summary">{summary(run)}</span>
        {running ? (
          <button type="button" class="btn btn-small" onClick={onCancel} disabled={run.cancelling}>
            {run.cancelling ? "Cancelling…" : "Cancel"}
          </button>
        ) : null}
      </div>
      {/* Indeterminate until the first page says how many were targeted. */}
      {run.targeted === null && running ? (
        <progress id={id} />
      ) : (
        <progress id={id} max={Math.max(targeted, 1)} value={Math.min(run.answered, Math.max(targeted, 1))} />
      )}
      {listed.length > 0 && running ? <Arrivals run={run} listed={listed} hidden={hiddenCount} /> : null}
      {listed.length > 0 && !running ? (
        <details class="arrivals-done">
          <summary>Arrivals ({run.arrivalsSeen})</summary>
          <Arrivals run={run} listed={listed} hidden={hiddenCount} />
        </details>
      ) : null}
    </div>
  );
}

function Arrivals({
  run,
  listed,
  hidden,
}: {
  run: Run;
  listed: readonly Run["arrivals"][number][];
  hidden: number;
}) {
  return (
    // Its own region, silent: a thousand arrivals must not each be announced (the summary line is).
    <ul class="arrivals" aria-label={`Arrivals for ${run.label}`} aria-live="off">
      {listed.map((e) => (
        <li key={e.seq}>
          <StatusBadge status={e.status} /> <span class="arrival-id">{e.totebox}</span>{" "}
          <span class="muted num">{formatMs(e.elapsedMs)}</span>
          {e.status !== "ok" && e.reason ? <span class="muted"> — {e.reason}</span> : null}
        </li>
      ))}
      {hidden > 0 ? <li class="muted">and {hidden} earlier</li> : null}
    </ul>
  );
}
