/**
 * The operator's console for the `aggregator` contender (hub-aggregator.ts), in a process of its
 * own as in deployment: it connects to the aggregator over PSP, signs the operator's grant and
 * asks for the viewport once per query. Run in the hub's process, its end of the link (decoding
 * and evaluating a result with one outcome per Totebox, 1,000 or 10,000 of them per query) was
 * counted as the aggregator's work. (Measured, moving it changed the hub's figure less than the
 * host's noise: performance.md, eighth round.) With BENCH_PIN_HUB it runs on the fleet's cores.
 *
 * IPC (the hub is the parent): `start` → `ready`; `query` → `answer` (counts and the rollup only);
 * `close` ends the process. Any failure is reported as `{ type: "error", code, message }`.
 */
import { pathToFileURL } from "node:url";
import { type AggregatorConnection, connectAggregator, signGrant } from "@os-orchestration/console";
import { identityFromPem } from "@os-orchestration/psp";

export interface ConsoleStart {
  type: "start";
  host: string;
  port: number;
  fingerprint: string;
  operator: { keyPem: string; certPem: string };
  operatorId: string;
  tenant: string;
  toteboxSelectors: string[];
  viewport: string;
}

export interface ConsoleAnswer {
  type: "answer";
  /** Unhandled rejections in this process since the last answer (the hub counts its own alike). */
  unhandled: number;
  answered: number;
  errors: [string, number][];
  /** Region → net value (the grand total left out). */
  rollup: [string, bigint][];
}

function codeOf(e: unknown): string {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === "string" ? c : "BENCH_ERR_CONSOLE";
}

async function consoleMain(): Promise<void> {
  const send = (m: unknown) => process.send?.(m);
  // The hub holds our lifetime: if it goes away (even killed), so do we.
  process.on("disconnect", () => process.exit(0));
  // As in the hub: a link dropping mid-run can reject a promise nobody awaits. Counted and
  // reported with the next answer, not fatal.
  let unhandled = 0;
  process.on("unhandledRejection", () => {
    unhandled++;
  });
  let conn: AggregatorConnection | undefined;
  let grant: Uint8Array | undefined;
  let viewport = "";

  const start = async (req: ConsoleStart) => {
    const operator = identityFromPem("operator", req.operator.keyPem, req.operator.certPem);
    conn = await connectAggregator({
      identity: operator,
      host: req.host,
      port: req.port,
      fingerprint: req.fingerprint,
    });
    grant = signGrant({
      operator,
      operatorId: req.operatorId,
      tenant: req.tenant,
      aggregator: conn.hello,
      toteboxSelectors: req.toteboxSelectors,
      views: ["position"],
      actions: ["read"],
      lifetimeSeconds: 12 * 3600,
    });
    viewport = req.viewport;
    send({ type: "ready" });
  };

  // One operator session for the whole run, as the console's client holds one per link
  // (client.ts). Authorizing afresh per query without releasing the stub left every session, with
  // its last fan-out's 1,000 outcomes, in the aggregator's export table until the link closed:
  // 43 of them by the 40th query, ~20 MB of its live heap (heap snapshot, tenth round: 77.6 MB
  // live with them, 57.9 MB without).
  let session: ReturnType<AggregatorConnection["aggregator"]["authorize"]> | undefined;
  const query = async () => {
    session ??= conn!.aggregator.authorize(grant!);
    const r = await session.viewport(viewport, {
      timeoutMs: 120_000,
      deadlineMs: 120_000,
      // The bench reads figures, not receipts: the aggregator still verifies every one.
      answers: false,
    });
    const errors = new Map<string, number>();
    for (const o of r.outcomes) {
      if (o.status !== "ok") errors.set(o.code ?? o.status, (errors.get(o.code ?? o.status) ?? 0) + 1);
    }
    if (r.error) errors.set(r.error.code, (errors.get(r.error.code) ?? 0) + 1);
    const rollup: [string, bigint][] = [];
    const s = r.sections.find((x) => x.name === "rollup");
    for (const row of s?.rows ?? []) {
      if (row[0] === null) continue; // the grand total
      rollup.push([String(row[0]), BigInt(String(row[2]))]);
    }
    const answer: ConsoleAnswer = {
      type: "answer",
      unhandled,
      answered: r.answered,
      errors: [...errors],
      rollup,
    };
    unhandled = 0;
    send(answer);
  };

  const fail = (e: unknown) =>
    send({ type: "error", code: codeOf(e), message: String((e as { message?: unknown } | null)?.message) });
  process.on("message", (raw: unknown) => {
    const m = raw as { type?: unknown } | null;
    switch (m?.type) {
      case "start":
        start(raw as ConsoleStart).catch(fail);
        return;
      case "query":
        query().catch(fail);
        return;
      case "close":
        conn?.close();
        process.exit(0);
        return;
      default:
        send({ type: "error", code: "BENCH_ERR_IPC", message: "unknown request" });
    }
  });
}

if (
  process.send !== undefined &&
  process.argv[1] &&
  import.meta.url === pathToFileURL(process.argv[1]).href
) {
  void consoleMain();
}
