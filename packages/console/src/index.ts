/**
 * @os-orchestration/console — the operator's terminal in Aggregate mode.
 *
 * Public surface: connecting to an aggregator, signing grants, following fan-outs and verifying
 * every Totebox's contribution by its receipt.
 */
export {
  type AggregatorConnection,
  type AnswerCheck,
  CONSOLE_LINK_LIMITS,
  connectAggregator,
  type GrantOptions,
  isLinkFailure,
  ResilientSession,
  runFanOut,
  signGrant,
  verifyAnswers,
} from "./client.ts";
export { ConsoleError, type ConsoleErrorCode } from "./errors.ts";
