/**
 * @os-orchestration/orchestration — the fleet aggregator.
 *
 * Public surface: the server, its registry and viewports, the shapes consoles receive, the error
 * class and limits. The pool, fan-out engine and service objects are internal.
 */
export { type CombinedSection, coverageOf, runCombine } from "./combine.ts";
export { isOrchError, OrchError, type OrchErrorCode } from "./errors.ts";
export type {
  FanOutResult,
  PartialMode,
  PassedAnswer,
  PassedCommand,
  ProgressEvent,
  ToteboxOutcome,
  ToteboxStatus,
} from "./fanout.ts";
export { TOTEBOX_STATUSES } from "./fanout.ts";
export { applyHeapGrowth, DEFAULT_HEAP_GROWTH_PERCENT } from "./heap-growth.ts";
export { DEFAULT_ORCH_LIMITS, type OrchLimits, resolveOrchLimits } from "./limits.ts";
export { ReceiptSampler } from "./receipt-sampler.ts";
export {
  loadRegistry,
  type OperatorEntry,
  parseRegistry,
  type Registry,
  type ToteboxEntry,
} from "./registry.ts";
export type {
  AggregatorRemote,
  FanOutHandleRemote,
  FanOutPage,
  FanOutRequest,
  OperatorSessionRemote,
} from "./remote-api.ts";
export { OrchestrationServer, type OrchestrationServerOptions } from "./server.ts";
export type { AggregatorHello, FleetEntry, ViewportInfo } from "./service.ts";
export { builtinViewports, compileViewports, type Viewport } from "./viewports.ts";
