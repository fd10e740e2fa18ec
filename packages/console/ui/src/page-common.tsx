/** Page header and the "start this page's fan-outs once" effect shared by every page. */
import { type ComponentChildren, createContext } from "preact";
import { useContext, useEffect } from "preact/hooks";
import type { FanOutRequest, Scalar, UiResult } from "./api.ts";
import { useStore } from "./components.tsx";
import { ProgressPanel } from "./progress-panel.tsx";
import type { Store } from "./store.ts";

/** The run slots of the current page (from the App), whose progress the page head shows. */
export const PageKeysContext = createContext<readonly string[]>([]);

export function PageHead({
  title,
  lead,
  children,
}: {
  title: string;
  lead?: ComponentChildren;
  children?: ComponentChildren;
}) {
  const keys = useContext(PageKeysContext);
  return (
    <>
      <header class="page-head">
        <div>
          {/* Focused on navigation (tabIndex -1): keyboard and screen-reader users land on the page. */}
          <h1 tabIndex={-1}>{title}</h1>
          {lead ? <p class="lead">{lead}</p> : null}
        </div>
        {children ? <div class="page-controls">{children}</div> : null}
      </header>
      <ProgressPanel keys={keys} />
    </>
  );
}

export interface Want {
  readonly key: string;
  readonly label: string;
  readonly request: FanOutRequest;
}

/**
 * Starts each wanted run that has never run in its slot, once the session is there. A slot that
 * already has a run (even a finished one) is shown as is: Refresh re-runs it.
 */
export function useEnsureRuns(wants: readonly Want[] | null): void {
  const store = useStore();
  const ready = store.session?.phase === "done";
  const sig = wants ? JSON.stringify(wants) : "";
  // `sig` stands for the content of `wants` (a new array every render).
  useEffect(() => {
    if (!ready || !wants) return;
    for (const w of wants) if (!store.run(w.key)) void store.start(w.key, w.label, w.request);
  }, [ready, sig, store]);
}

export function rerun(store: Store, wants: readonly Want[]): void {
  for (const w of wants) void store.start(w.key, w.label, w.request);
}

/** The as-of date a result was computed for (the server resolves "today"). */
export function asOfOf(result: UiResult | null | undefined): string | null {
  const v: Scalar | undefined = result?.params.as_of;
  return typeof v === "string" ? v : null;
}

/** A valid YYYY-MM-DD from a date input, or null (empty means the server's default: today). */
export function dateParam(v: string): string | null {
  return /^\d{4}-\d{2}-\d{2}$/.test(v) ? v : null;
}

/**
 * A page's controls: any extra fields (children), the as-of date and Refresh. A date typed in full
 * (or cleared, meaning "today") re-runs at once; Refresh re-runs with whatever is there.
 */
export function AsOfForm({
  id,
  value,
  onDate,
  onSubmit,
  children,
}: {
  id: string;
  value: string;
  onDate: (date: string) => void;
  onSubmit: () => void;
  children?: ComponentChildren;
}) {
  return (
    <form
      class="controls"
      onSubmit={(e) => {
        e.preventDefault();
        onSubmit();
      }}
    >
      {children}
      <div class="field">
        <label for={id}>As of</label>
        <input id={id} type="date" value={value} onChange={(e) => onDate(e.currentTarget.value)} />
      </div>
      <button type="submit" class="btn">
        Refresh
      </button>
    </form>
  );
}
