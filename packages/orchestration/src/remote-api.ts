import type { FanOutResult, ProgressEvent } from "./fanout.ts";
import type { AggregatorHello, FleetEntry, ViewportInfo } from "./service.ts";

/**
 * The aggregator's PSP API as a console sees it (for `openCommander<AggregatorRemote>(link)`).
 * Methods that return remote objects are typed as returning them directly, so that
 * `agg.authorize(grant).start(request).result()` pipelines into one round trip.
 */
export interface FanOutRequest {
  readonly kind: "viewport" | "read" | "command";
  readonly name: string;
  /** Totebox ids and/or tag selectors ("region=west,kind=property"); default: all the grant reaches. */
  readonly targets?: readonly string[];
  /** Viewport parameters, or the view's parameters for a read. */
  readonly params?: Readonly<Record<string, string | number | boolean | null>>;
  /** warn (default): return what arrived; abort: fail if any Totebox is missing. */
  readonly mode?: "warn" | "abort";
  /** Per-Totebox timeout, ms. */
  readonly timeoutMs?: number;
  /** Overall deadline, ms. */
  readonly deadlineMs?: number;
  readonly row?: string;
  /** Command arguments. */
  readonly args?: Readonly<Record<string, string | number | boolean | null>>;
  readonly idempotencyKey?: string;
  /** Include each Totebox's raw answer and receipt (default true). */
  readonly answers?: boolean;
}

export interface FanOutPage {
  readonly events: ProgressEvent[];
  readonly cursor: number;
  readonly done: boolean;
  readonly answered: number;
  readonly targeted: number;
}

export interface FanOutHandleRemote {
  id(): Promise<string>;
  next(cursor: number, waitMs?: number): Promise<FanOutPage>;
  result(): Promise<FanOutResult>;
  cancel(): Promise<{ cancelled: boolean }>;
}

export interface OperatorSessionRemote {
  fleet(): Promise<FleetEntry[]>;
  viewports(): Promise<ViewportInfo[]>;
  start(request: FanOutRequest): FanOutHandleRemote;
  viewport(name: string, options?: Omit<FanOutRequest, "kind" | "name">): Promise<FanOutResult>;
  read(view: string, options?: Omit<FanOutRequest, "kind" | "name">): Promise<FanOutResult>;
  command(name: string, options?: Omit<FanOutRequest, "kind" | "name">): Promise<FanOutResult>;
  audit(totebox: string, request: Record<string, string | number | boolean | null>): Promise<unknown>;
  fanout(id: string): FanOutHandleRemote;
}

export interface AggregatorRemote {
  hello(): Promise<AggregatorHello>;
  /** The tenant's Toteboxes from the registry, before any grant (inGrant is false). */
  fleet(): Promise<FleetEntry[]>;
  authorize(grant: Uint8Array): OperatorSessionRemote;
}
