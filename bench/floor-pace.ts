/**
 * The paced floor (`floor-paced` in fanout.ts): the floor's hub, unchanged, against Toteboxes
 * that do, before each answer, the cryptography no implementation of ours may skip there.
 *
 * Why: the floor's Toteboxes answer a fixed byte string at once, so on this machine its answers
 * reach the hub together. Any Totebox of ours must first verify the batch signature its
 * capability rests on, hash its inclusion path and its answer, and sign a receipt
 * (machine-bound.ts), ~180-270 µs here with the fleet idle, and that spreads its answers out in
 * time. The paced floor measures what the same bare transport costs the floor's hub, which reads
 * each answer as it arrives, under that arrival pattern. It is for reading where a hub's CPU
 * goes, not a bound: a hub that read otherwise might pay less (one that gathered answers before
 * reading them did not, thirteenth round), and the goal is still judged against the floor as the
 * issue defines it.
 *
 * The hub asks for the work in the first payload byte of its request (the rest is random, as
 * the floor's): 0 for none, 1 + d for the work with an inclusion path of d node hashes.
 */
import { generateKeyPairSync, hash, type KeyObject, sign, verify } from "node:crypto";
import { BenchError } from "./bench-error.ts";

/** The first payload byte of a plain floor request: answer at once. */
export const FLOOR_PLAIN = 0;
/** The longest inclusion path a paced request may ask for (a batch of 2^62 capabilities). */
export const MAX_PACED_DEPTH = 62;

/** The first payload byte of a paced request whose Totebox checks a path of `depth` node hashes. */
export function pacedMarker(depth: number): number {
  if (!Number.isSafeInteger(depth) || depth < 0 || depth > MAX_PACED_DEPTH) {
    throw new RangeError(`depth must be a whole number from 0 to ${MAX_PACED_DEPTH}`);
  }
  return 1 + depth;
}

/**
 * The inclusion path the paced floor asks for over N Toteboxes: ⌊log2 N⌋ node hashes, one batch
 * for the whole fan-out, as the hub's bound takes it (machine-bound.ts, B = N).
 */
export function pacedDepthFor(n: number): number {
  return Math.floor(Math.log2(n));
}

/** The path depth a request's first payload byte asks for, or undefined for a plain request. */
export function pacedDepth(firstByte: number): number | undefined {
  return firstByte >= 1 && firstByte <= 1 + MAX_PACED_DEPTH ? firstByte - 1 : undefined;
}

/** The primitives the work runs on: node:crypto's, or a test's counting wrappers around them. */
export interface CryptoPrimitives {
  verify(message: Uint8Array, key: KeyObject, signature: Uint8Array): boolean;
  sign(message: Uint8Array, key: KeyObject): Uint8Array;
  sha256(data: Uint8Array): Uint8Array;
}

export const NODE_CRYPTO: CryptoPrimitives = {
  verify: (message, key, signature) => verify(null, message, key, signature),
  sign: (message, key) => sign(null, message, key),
  sha256: (data) => hash("sha256", data, "buffer"),
};

/**
 * The per-answer cryptography of a Totebox of ours (machine-bound.ts counts the same): one
 * Ed25519 verification, a leaf hash and `depth` node hashes, SHA-256 over the answer and one
 * Ed25519 signature. The keys are this process's own: Ed25519's cost does not depend on whose
 * key it is, and OpenSSL caches nothing between verifications.
 */
export class RequiredToteboxWork {
  readonly #crypto: CryptoPrimitives;
  readonly #batchKey: KeyObject;
  readonly #batchMessage = new Uint8Array(200).fill(7);
  readonly #batchSignature: Uint8Array;
  readonly #receiptKey: KeyObject;
  /** What the receipt signs: a Sig_structure-sized message, its digest field rewritten per answer. */
  readonly #receiptMessage = new Uint8Array(200).fill(9);
  /** A capability's claims (~150 bytes), the Merkle leaf's input. */
  readonly #leaf = new Uint8Array(150).fill(3);
  /** 0x01 ‖ left ‖ right, an RFC 6962 interior node's input. */
  readonly #node = new Uint8Array(65).fill(1);

  constructor(crypto: CryptoPrimitives = NODE_CRYPTO) {
    this.#crypto = crypto;
    const batch = generateKeyPairSync("ed25519");
    this.#batchKey = batch.publicKey;
    this.#batchSignature = sign(null, this.#batchMessage, batch.privateKey);
    this.#receiptKey = generateKeyPairSync("ed25519").privateKey;
  }

  /**
   * Does one answer's work: `answer` is what the receipt's digest covers (the worker passes the
   * answer's whole payload, a few hundred bytes more than the Arrow part a real receipt covers:
   * ~1 µs more work). Returns the receipt's signature.
   */
  run(depth: number, answer: Uint8Array): Uint8Array {
    const c = this.#crypto;
    // A failed verification is a bug here, not a hostile peer: nothing this side receives is signed.
    if (!c.verify(this.#batchMessage, this.#batchKey, this.#batchSignature)) {
      throw new BenchError("BENCH_ERR_WORKER", "paced floor: the batch signature did not verify");
    }
    let h = c.sha256(this.#leaf);
    for (let d = 0; d < depth; d++) {
      this.#node.set(h, 1);
      h = c.sha256(this.#node);
    }
    this.#receiptMessage.set(c.sha256(answer), 0);
    this.#receiptMessage.set(h, 32);
    return c.sign(this.#receiptMessage, this.#receiptKey);
  }
}
