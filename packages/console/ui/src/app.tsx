/** The shell: skip link, header, navigation, live progress and the routed page. */
import { useEffect, useRef, useState } from "preact/hooks";
import { ErrorBox, StoreContext } from "./components.tsx";
import { shortFingerprint } from "./format.ts";
import { PageKeysContext } from "./page-common.tsx";
import { CoveragePage } from "./page-coverage.tsx";
import { OverviewPage } from "./page-overview.tsx";
import { PortfolioPage } from "./page-portfolio.tsx";
import { ReconciliationPage } from "./page-reconciliation.tsx";
import { SummaryPage } from "./page-summary.tsx";
import { isReady, pageKeys, parseHash, ROUTES, type Route } from "./routes.ts";
import type { Store } from "./store.ts";

const DEFAULT_ROUTE: Route = "overview";

function currentRoute(): Route {
  return parseHash(window.location.hash) ?? DEFAULT_ROUTE;
}

export function App({ store }: { store: Store }) {
  const [, setVersion] = useState(store.version);
  const [route, setRoute] = useState<Route>(currentRoute);
  const [coverageChoice, setCoverageChoice] = useState<string | null>(null);
  const main = useRef<HTMLElement>(null);
  const navigated = useRef(false);

  useEffect(() => store.subscribe(() => setVersion(store.version)), [store]);

  useEffect(() => {
    if (parseHash(window.location.hash) === null) {
      // Normalise the address without adding a history entry.
      history.replaceState(null, "", `#/${DEFAULT_ROUTE}`);
    }
    const onHash = () => {
      const r = parseHash(window.location.hash);
      if (r) {
        navigated.current = true;
        setRoute(r);
      }
    };
    window.addEventListener("hashchange", onHash);
    if (!store.session) void store.loadSession();
    return () => window.removeEventListener("hashchange", onHash);
  }, [store]);

  // After a navigation (not the first load) focus lands on the new page's heading.
  useEffect(() => {
    const title = ROUTES.find((r) => r.route === route)?.title ?? "";
    document.title = `${title} · Estate console`;
    if (navigated.current) main.current?.querySelector<HTMLElement>("h1")?.focus();
  }, [route]);

  const session = store.session;
  const ready = isReady(route, store, coverageChoice);
  return (
    <StoreContext.Provider value={store}>
      {/* biome-ignore lint/a11y/useValidAnchor: a skip link is a link (WCAG G1); the hash belongs to the router */}
      <a
        class="skip-link"
        href="#main"
        onClick={(e) => {
          // The hash is the router's: move focus without changing it.
          e.preventDefault();
          main.current?.focus();
        }}
      >
        Skip to content
      </a>
      <div class="shell">
        <header class="topbar">
          <div class="brand">
            <span class="brand-mark" aria-hidden="true">
              ◆
            </span>
            <span class="brand-name">Estate console</span>
            <span class="brand-sub">os-orchestration</span>
          </div>
          {session?.data ? (
            <dl class="identity">
              <div>
                <dt>Operator</dt>
                <dd>
                  {session.data.operator.id} <span class="muted">({session.data.operator.role})</span>
                </dd>
              </div>
              <div>
                <dt>Tenant</dt>
                <dd>{session.data.operator.tenant}</dd>
              </div>
              <div>
                <dt>Aggregator</dt>
                <dd title={`${session.data.aggregator.fingerprint} at ${session.data.aggregator.address}`}>
                  {session.data.aggregator.address}{" "}
                  <span class="muted mono">{shortFingerprint(session.data.aggregator.fingerprint)}</span>
                </dd>
              </div>
            </dl>
          ) : null}
        </header>
        <nav class="sidenav" aria-label="Pages">
          <ul>
            {ROUTES.map((r) => (
              <li key={r.route}>
                <a
                  href={`#/${r.route}`}
                  data-testid={`nav-${r.route}`}
                  aria-current={r.route === route ? "page" : undefined}
                >
                  {r.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <main
          id="main"
          ref={main}
          tabIndex={-1}
          data-ready={ready ? "true" : "false"}
          data-route={route}
          aria-busy={!ready}
        >
          {session?.phase === "failed" && session.error ? (
            <>
              <h1 tabIndex={-1}>Estate console</h1>
              <ErrorBox title="The console session could not be opened" problem={session.error} />
            </>
          ) : (
            <PageKeysContext.Provider value={pageKeys(route, store, coverageChoice)}>
              {route === "overview" ? <OverviewPage /> : null}
              {route === "portfolio" ? <PortfolioPage /> : null}
              {route === "reconciliation" ? <ReconciliationPage /> : null}
              {route === "summary" ? <SummaryPage /> : null}
              {route === "coverage" ? (
                <CoveragePage chosen={coverageChoice} onChoose={setCoverageChoice} />
              ) : null}
            </PageKeysContext.Provider>
          )}
        </main>
      </div>
    </StoreContext.Provider>
  );
}
