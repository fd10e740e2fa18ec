/**
 * The least time this machine allows a fan-out, from work no implementation of ours may skip.
 *
 * In the fan-out bench the hub and every simulated Totebox share this machine's cores, so a
 * query cannot finish before all the CPU work it needs has run: its latency is at least
 * N × (CPU per Totebox, hub and Totebox together) / cores. Part of that work is fixed by the
 * protocol's guarantees, whatever the code around it:
 *
 * - on each Totebox: one Ed25519 verification (the batch signature its capability rests on;
 *   invariant 3), the capability's leaf hash and its inclusion path (at least ⌊log2 N⌋ node hashes), one
 *   SHA-256 over the Arrow answer (the receipt's digest) and one Ed25519 signature (the receipt);
 * - on the hub: the leaf and internal-node hashes of the batch (N leaves, N − 1 nodes), one
 *   batch signature per query, the receipt's binding to the answer (SHA-256 over the Arrow bytes)
 *   and the sampled receipt signature check (one in `receiptSignatureEvery`);
 * - on both: moving frames of the same size over the same TLS links, which the floor contender
 *   measures in the same run.
 *
 * Each primitive is timed here with the fleet idle, so the figures are the machine's best, and
 * a bound built from them is a true lower bound: under the load of a real run every one of them
 * costs more, not less. Hashes are timed on 64-byte inputs (a Merkle node); a leaf (the claims,
 * ~150 bytes) costs more, so counting it as a node keeps the bound low.
 */
import { generateKeyPairSync, hash, sign, verify } from "node:crypto";

/** Microseconds per primitive on this machine, best of several rounds. */
export interface CryptoCosts {
  readonly ed25519VerifyUs: number;
  readonly ed25519SignUs: number;
  /** SHA-256 over one Arrow answer of `answerBytes`. */
  readonly sha256AnswerUs: number;
  /** SHA-256 over 64 bytes (one Merkle node). */
  readonly sha256NodeUs: number;
  readonly answerBytes: number;
}

/** Runs `op` in rounds and returns the best round's mean, in µs (best: least disturbed). */
function bestMeanUs(op: () => void, perRound: number, rounds: number): number {
  for (let i = 0; i < Math.min(perRound, 50); i++) op();
  let best = Number.POSITIVE_INFINITY;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < perRound; i++) op();
    const us = Number(process.hrtime.bigint() - t0) / 1000 / perRound;
    if (us < best) best = us;
  }
  return best;
}

/** Times the primitives (~1 s). `answerBytes`: the size of one Arrow answer. */
export function measureCryptoCosts(answerBytes: number): CryptoCosts {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  // A COSE Sig_structure for a capability or a receipt is ~100-300 bytes; Ed25519 hashes its
  // input twice, so the message size barely moves the cost.
  const message = new Uint8Array(200).fill(7);
  const signature = sign(null, message, privateKey);
  const answer = new Uint8Array(answerBytes).fill(3);
  const node = new Uint8Array(64).fill(5);
  const sha = (b: Uint8Array) => hash("sha256", b, "buffer");
  return {
    ed25519VerifyUs: bestMeanUs(
      () => {
        if (!verify(null, message, publicKey, signature)) throw new Error("self-check failed");
      },
      200,
      9,
    ),
    ed25519SignUs: bestMeanUs(() => sign(null, message, privateKey), 200, 9),
    sha256AnswerUs: bestMeanUs(() => sha(answer), 2000, 9),
    sha256NodeUs: bestMeanUs(() => sha(node), 2000, 9),
    answerBytes,
  };
}

export interface FanoutBoundInput {
  readonly n: number;
  readonly cores: number;
  readonly costs: CryptoCosts;
  /** The floor contender's hub CPU per Totebox per query and its fleet CPU per answer, µs. */
  readonly floorHubUs: number;
  readonly floorFleetUs: number;
  /** The aggregator checks one receipt signature in this many (after each link's first). */
  readonly receiptSignatureEvery: number;
  /**
   * Cores reserved to the hub (the fleet has the rest), when the hub is pinned; absent: hub and
   * fleet share all `cores`.
   */
  readonly hubCores?: number;
}

/** The least work per Totebox of one batch size, and the latency it implies. */
export interface FanoutSplit {
  /** Capabilities per batch signature. */
  readonly batch: number;
  /** The cryptography a hub must do per Totebox per query, µs. */
  readonly hubCryptoUs: number;
  /** The cryptography a Totebox must do per answer, µs. */
  readonly toteboxCryptoUs: number;
  /** The floor's hub CPU plus `hubCryptoUs`. */
  readonly hubUs: number;
  /** The floor's fleet CPU plus `toteboxCryptoUs`. */
  readonly fleetUs: number;
  /** The least latency of one fan-out over N Toteboxes on this machine's cores (shared or pinned), ms. */
  readonly latencyMs: number;
}

export interface FanoutBound {
  /** The least hub CPU per Totebox: one batch for the whole fan-out. */
  readonly hub: FanoutSplit;
  /** The least latency: the batch size for which the whole fan-out's work is least. */
  readonly latency: FanoutSplit;
}

export function fanoutLowerBound(input: FanoutBoundInput): FanoutBound {
  const { n, costs: c } = input;
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError("n must be a positive integer");
  if (!(input.cores >= 1)) throw new RangeError("cores must be at least 1");
  const h = input.hubCores;
  if (h !== undefined && !(Number.isSafeInteger(h) && h >= 1 && h < input.cores)) {
    throw new RangeError("hubCores must be a whole number of cores that leaves the fleet at least one");
  }
  // The batch size B is a free choice of an implementation: one batch per fan-out (B = N) costs the
  // hub least (1/N of a signature per Totebox), smaller batches give each Totebox a shorter path to
  // check (the aggregator signs slices of 256). The hub figure takes B = N; the latency takes the
  // B from 1 to N for which the whole fan-out's work is least (every B: with paths counted at
  // ⌊log2 B⌋, 2^(d+1) - 1 beats 2^d, so powers of two alone would overstate the bound).
  const split = (b: number): FanoutSplit => {
    // The shortest inclusion path in a tree of B leaves (RFC 6962 paths are ⌊log2 B⌋ or ⌈log2 B⌉
    // long): counting that one for every Totebox keeps the bound below what is required.
    const depth = Math.floor(Math.log2(b));
    const hubCryptoUs =
      c.sha256NodeUs * (1 + (b - 1) / b) + // leaf hash, and each batch's B - 1 internal nodes
      c.ed25519SignUs / b + // one signature per batch
      c.sha256AnswerUs + // the receipt's binding to the Arrow bytes received
      c.ed25519VerifyUs / input.receiptSignatureEvery; // the sampled receipt signature
    const toteboxCryptoUs =
      c.ed25519VerifyUs + c.sha256NodeUs * (1 + depth) + c.sha256AnswerUs + c.ed25519SignUs;
    const hubUs = input.floorHubUs + hubCryptoUs;
    const fleetUs = input.floorFleetUs + toteboxCryptoUs;
    // Every query needs all of this work done within its own window, so each query's latency (not
    // only the mean) is at least: shared cores, all the work over all the cores; pinned, the slower
    // of the two sides on its own cores.
    const latencyUs =
      h === undefined
        ? (n * (hubUs + fleetUs)) / input.cores
        : Math.max((n * hubUs) / h, (n * fleetUs) / (input.cores - h));
    return { batch: b, hubCryptoUs, toteboxCryptoUs, hubUs, fleetUs, latencyMs: latencyUs / 1000 };
  };
  const hub = split(n);
  let latency = hub;
  for (let b = 1; b < n; b++) {
    const s = split(b);
    if (s.latencyMs < latency.latencyMs) latency = s;
  }
  return { hub, latency };
}
