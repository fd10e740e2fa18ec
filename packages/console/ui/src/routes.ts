/**
 * Hash routes, which fan-outs each page depends on, and when a page counts as loaded. Pure (the
 * store is read, never changed), so `data-ready` on <main> is computed during render and flips in
 * the same tick as the state it reflects.
 */
import { DRILL_KEYS, isSettled, type Store } from "./store.ts";

export type Route = "overview" | "portfolio" | "reconciliation" | "summary" | "coverage";

export const ROUTES: readonly { route: Route; label: string; title: string }[] = [
  { route: "overview", label: "Overview", title: "Estate overview" },
  { route: "portfolio", label: "Portfolio", title: "Portfolio" },
  { route: "reconciliation", label: "Reconciliation", title: "Reconciliation" },
  { route: "summary", label: "Executive summary", title: "Executive summary" },
  { route: "coverage", label: "Coverage", title: "Coverage" },
];

/** Run slots (Store keys). The executive summary is shared by Overview, Summary and Coverage. */
export const KEYS = {
  summary: "executive-summary",
  overviewPortfolio: "overview-portfolio",
  portfolio: "portfolio",
  reconciliation: "reconciliation",
} as const;

export function parseHash(hash: string): Route | null {
  const m = /^#\/([a-z]+)$/.exec(hash);
  const r = m?.[1];
  return ROUTES.some((x) => x.route === r) ? (r as Route) : null;
}

/** The run the Coverage page inspects: the operator's choice, else the latest with a result. */
export function coverageKey(store: Store, chosen: string | null): string {
  if (chosen !== null && store.run(chosen)) return chosen;
  return store.runs().find((r) => r.result !== null)?.key ?? store.runs()[0]?.key ?? KEYS.summary;
}

export function pageKeys(route: Route, store: Store, chosenCoverage: string | null = null): string[] {
  switch (route) {
    case "overview":
      return [KEYS.summary, KEYS.overviewPortfolio];
    case "portfolio":
      return [KEYS.portfolio];
    case "reconciliation":
      return store.drill ? [KEYS.reconciliation, DRILL_KEYS.a, DRILL_KEYS.b] : [KEYS.reconciliation];
    case "summary":
      return [KEYS.summary];
    case "coverage":
      return [coverageKey(store, chosenCoverage)];
  }
}

/**
 * Loaded = the session answered and every run the page shows has settled (a failed run counts:
 * its error is what the page shows). A run not yet started is not loaded.
 */
export function isReady(route: Route, store: Store, chosenCoverage: string | null = null): boolean {
  const s = store.session;
  if (!s || s.phase === "loading") return false;
  if (s.phase === "failed") return true;
  if (route === "coverage" && (!store.fleet || store.fleet.phase === "loading")) return false;
  return pageKeys(route, store, chosenCoverage).every((k) => isSettled(store.run(k)));
}
