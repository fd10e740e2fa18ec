/**
 * RFC 6962 Merkle tree hashing, inclusion proofs and consistency proofs (RFC 6962 §2.1,
 * RFC 9162 §2.1.3–2.1.4), SHA-256.
 *
 *   leaf hash  = SHA-256(0x00 ‖ leaf data)
 *   node hash  = SHA-256(0x01 ‖ left ‖ right)
 *   empty tree = SHA-256("")
 *
 * Users in this project: the Totebox audit log (a log of up to millions of entries kept in SQLite)
 * and batch capability signing (one signature over the root of a handful of capabilities; each
 * Totebox receives its capability with an inclusion proof).
 *
 * Trust boundary: the `verify*` functions take proofs, roots and sizes that came off the wire.
 * They check every length and range before hashing and refuse with `PSP_ERR_MERKLE_PROOF`; they
 * never throw anything but a PspError for bad input. Proof *generation* trusts its tree source
 * (it is our own data) but still refuses impossible ranges with `PSP_ERR_MERKLE_RANGE`.
 *
 * Sizes and indexes are JavaScript numbers limited to safe integers (2^53 − 1), far beyond any
 * log this project keeps. Bigints are accepted at the verification boundary so that 64-bit values
 * read from a foreign source are refused explicitly instead of being silently rounded. The bit
 * arithmetic below splits numbers into 32-bit halves because JS bitwise operators are 32-bit.
 *
 * Cost of proof generation (see `TreeReader`): with only a leaf-hash accessor, computing a
 * subtree hash reads every leaf below it, so one proof costs O(n) hashes: fine for the small
 * trees of batch signing, too slow for a large log. A source that can also return stored hashes
 * of complete (perfect) subtrees (`nodeHash`) makes every proof O(log n) lookups plus at most
 * O(log n) hashes for the tree's right border. `MerkleTree` keeps all levels in memory for that;
 * the audit log stores the nodes completed by each append (see `CompactRange`).
 */
import { createHash } from "node:crypto";
import { PspError } from "./errors.ts";

/** Length of every hash in the tree, in bytes (SHA-256). */
export const HASH_SIZE = 32;

/** Domain-separation prefixes of RFC 6962 §2.1: a leaf can never be mistaken for a node. */
const LEAF_PREFIX = Uint8Array.of(0x00);
const NODE_PREFIX = Uint8Array.of(0x01);

/** Returns the leaf hash of `data`: SHA-256(0x00 ‖ data). */
export function hashLeaf(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(LEAF_PREFIX).update(data).digest());
}

/** Returns the interior node hash SHA-256(0x01 ‖ left ‖ right). */
export function hashChildren(left: Uint8Array, right: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(NODE_PREFIX).update(left).update(right).digest());
}

/** Root hash of the empty tree: SHA-256 of the empty string. A fresh copy each call. */
export function emptyRoot(): Uint8Array {
  return new Uint8Array(createHash("sha256").digest());
}

// ---------------------------------------------------------------------------------------------
// Tree sources

/** Returns the leaf hash (already 0x00-prefixed and hashed) of the leaf at `index`. */
export type LeafHashAccessor = (index: number) => Uint8Array;

/**
 * What proof generation reads. `nodeHash(level, index)` may return the stored hash of the perfect
 * subtree covering leaves [index·2^level, (index+1)·2^level), or undefined to have it computed
 * from the leaves below. Level 0 is the leaves. It is only asked for subtrees that lie entirely
 * inside the tree size being proven, so nodes completed once never change.
 */
export interface TreeReader {
  leafHash(index: number): Uint8Array;
  nodeHash?(level: number, index: number): Uint8Array | undefined;
}

export type TreeSource = LeafHashAccessor | TreeReader;

function asReader(source: TreeSource): TreeReader {
  return typeof source === "function" ? { leafHash: source } : source;
}

// ---------------------------------------------------------------------------------------------
// 53-bit integer arithmetic on numbers (JS bitwise operators truncate to 32 bits)

const TWO32 = 2 ** 32;

function hi32(x: number): number {
  return Math.floor(x / TWO32);
}

/** Number of bits needed to write x (x ≥ 0); bitLength(0) = 0. Go's bits.Len64. */
function bitLength(x: number): number {
  return x < TWO32 ? 32 - Math.clz32(x) : 64 - Math.clz32(hi32(x));
}

function xor53(a: number, b: number): number {
  return ((hi32(a) ^ hi32(b)) >>> 0) * TWO32 + (((a >>> 0) ^ (b >>> 0)) >>> 0);
}

function popCount32(v: number): number {
  let x = v >>> 0;
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

function popCount(x: number): number {
  return popCount32(x >>> 0) + popCount32(hi32(x));
}

function trailingZeros(x: number): number {
  const lo = x >>> 0;
  if (lo !== 0) return 31 - Math.clz32(lo & -lo);
  const hi = hi32(x);
  if (hi === 0) return 64;
  return 32 + 31 - Math.clz32(hi & -hi);
}

function shiftRight(x: number, k: number): number {
  return Math.floor(x / 2 ** k);
}

function bitAt(x: number, i: number): number {
  return shiftRight(x, i) % 2;
}

/** Largest power of two strictly below n (n ≥ 2): the split point k of RFC 6962 §2.1. */
function splitPoint(n: number): number {
  return 2 ** (bitLength(n - 1) - 1);
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && popCount(n) === 1;
}

// ---------------------------------------------------------------------------------------------
// Generation

function rangeError(message: string, detail: Record<string, number>): PspError {
  return new PspError("PSP_ERR_MERKLE_RANGE", message, detail);
}

function checkSize(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw rangeError(`${what} must be a non-negative safe integer`, {});
  }
  return value;
}

function checkedLeaf(reader: TreeReader, index: number): Uint8Array {
  const h = reader.leafHash(index);
  if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
    throw rangeError("leaf hash source returned a value that is not a 32-byte hash", { index });
  }
  return h;
}

/**
 * MTH of leaves [start, start + n), n ≥ 1. Every range reached from the RFC recursion is aligned:
 * `start` is a multiple of the largest power of two ≤ n, so a perfect range is exactly the node
 * (log2 n, start / n) and can come from storage.
 */
function rangeHash(reader: TreeReader, start: number, n: number): Uint8Array {
  if (n === 1) return checkedLeaf(reader, start);
  if (isPowerOfTwo(n) && reader.nodeHash !== undefined) {
    const level = bitLength(n) - 1;
    const stored = reader.nodeHash(level, start / n);
    if (stored !== undefined) {
      if (!(stored instanceof Uint8Array) || stored.length !== HASH_SIZE) {
        throw rangeError("node hash source returned a value that is not a 32-byte hash", {
          level,
          index: start / n,
        });
      }
      return stored;
    }
  }
  const k = splitPoint(n);
  return hashChildren(rangeHash(reader, start, k), rangeHash(reader, start + k, n - k));
}

/** Merkle tree hash (RFC 6962 MTH) of the first `size` leaves of `source`. */
export function treeRoot(source: TreeSource, size: number): Uint8Array {
  checkSize(size, "tree size");
  if (size === 0) return emptyRoot();
  return rangeHash(asReader(source), 0, size);
}

/** RFC 6962 §2.1.1 PATH(m, D[start:start+n]), appended bottom-up to `out`. */
function path(reader: TreeReader, m: number, start: number, n: number, out: Uint8Array[]): void {
  if (n === 1) return;
  const k = splitPoint(n);
  if (m < k) {
    path(reader, m, start, k, out);
    out.push(rangeHash(reader, start + k, n - k));
  } else {
    path(reader, m - k, start + k, n - k, out);
    out.push(rangeHash(reader, start, k));
  }
}

/**
 * Inclusion proof (audit path) for leaf `index` in the tree of the first `size` leaves, ordered
 * from the leaf's sibling up to the root's child, as RFC 6962 and RFC 9162 define it.
 */
export function inclusionProof(source: TreeSource, index: number, size: number): Uint8Array[] {
  checkSize(index, "leaf index");
  checkSize(size, "tree size");
  if (index >= size) throw rangeError("leaf index is beyond the tree size", { index, size });
  const out: Uint8Array[] = [];
  path(asReader(source), index, 0, size, out);
  return out;
}

/** RFC 6962 §2.1.2 SUBPROOF(m, D[start:start+n], b). */
function subproof(
  reader: TreeReader,
  m: number,
  start: number,
  n: number,
  b: boolean,
  out: Uint8Array[],
): void {
  if (m === n) {
    if (!b) out.push(rangeHash(reader, start, n));
    return;
  }
  const k = splitPoint(n);
  if (m <= k) {
    subproof(reader, m, start, k, b, out);
    out.push(rangeHash(reader, start + k, n - k));
  } else {
    subproof(reader, m - k, start + k, n - k, false, out);
    out.push(rangeHash(reader, start, k));
  }
}

/**
 * Consistency proof between the tree of the first `oldSize` leaves and that of the first
 * `newSize` leaves. Equal sizes give the empty proof. `oldSize` 0 is refused: every tree extends
 * the empty tree, so there is nothing to prove, and the verifier refuses it too (RFC 9162
 * §2.1.4 defines the proof for 0 < first < second only).
 */
export function consistencyProof(source: TreeSource, oldSize: number, newSize: number): Uint8Array[] {
  checkSize(oldSize, "old tree size");
  checkSize(newSize, "new tree size");
  if (oldSize > newSize) throw rangeError("old tree size is larger than the new one", { oldSize, newSize });
  if (oldSize === 0) throw rangeError("no consistency proof from the empty tree", { oldSize, newSize });
  const out: Uint8Array[] = [];
  if (oldSize === newSize) return out;
  subproof(asReader(source), oldSize, 0, newSize, true, out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Verification (untrusted input)

function proofError(reason: string, detail: Record<string, string | number> = {}): PspError {
  return new PspError("PSP_ERR_MERKLE_PROOF", `Merkle proof refused: ${reason}`, { reason, ...detail });
}

/** Sizes and indexes from the wire: safe non-negative integers only, bigints included. */
function wireInteger(value: number | bigint, what: string): number {
  if (typeof value === "bigint") {
    if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) throw proofError(`${what} out of range`);
    return Number(value);
  }
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw proofError(`${what} is not a non-negative safe integer`);
  }
  return value;
}

function wireHash(value: unknown, what: string): Uint8Array {
  if (!(value instanceof Uint8Array) || value.length !== HASH_SIZE) {
    throw proofError(`${what} is not a ${HASH_SIZE}-byte hash`);
  }
  return value;
}

function wireProof(proof: unknown): Uint8Array[] {
  // The public vectors encode an empty proof as null as well as [].
  if (proof === null || proof === undefined) return [];
  if (!Array.isArray(proof)) throw proofError("proof is not an array of hashes");
  if (proof.length > 128) throw proofError("proof has too many components");
  return proof.map((h, i) => wireHash(h, `proof component ${i}`));
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** RFC 9162 decomposition of an inclusion proof: `inner` levels below the split, `border` above. */
function decompose(index: number, size: number): { inner: number; border: number } {
  const inner = bitLength(xor53(index, size - 1));
  const border = popCount(shiftRight(index, inner));
  return { inner, border };
}

function chainInner(seed: Uint8Array, proof: readonly Uint8Array[], index: number): Uint8Array {
  let h = seed;
  proof.forEach((p, i) => {
    h = bitAt(index, i) === 0 ? hashChildren(h, p) : hashChildren(p, h);
  });
  return h;
}

function chainInnerRight(seed: Uint8Array, proof: readonly Uint8Array[], index: number): Uint8Array {
  let h = seed;
  proof.forEach((p, i) => {
    if (bitAt(index, i) === 1) h = hashChildren(p, h);
  });
  return h;
}

function chainBorderRight(seed: Uint8Array, proof: readonly Uint8Array[]): Uint8Array {
  let h = seed;
  for (const p of proof) h = hashChildren(p, h);
  return h;
}

/**
 * Root hash implied by an inclusion proof for `leafHash` at `index` in a tree of `size` leaves
 * (RFC 9162 §2.1.3.2). Throws PSP_ERR_MERKLE_PROOF when the proof cannot belong to that position
 * (index out of range, wrong number of components, malformed hashes).
 */
export function rootFromInclusionProof(
  index: number | bigint,
  size: number | bigint,
  leafHash: Uint8Array,
  proof: readonly Uint8Array[] | null,
): Uint8Array {
  const i = wireInteger(index, "leaf index");
  const n = wireInteger(size, "tree size");
  if (i >= n) throw proofError("leaf index is beyond the tree size", { index: i, size: n });
  const leaf = wireHash(leafHash, "leaf hash");
  const components = wireProof(proof);
  const { inner, border } = decompose(i, n);
  if (components.length !== inner + border) {
    throw proofError("wrong number of proof components", { got: components.length, want: inner + border });
  }
  const h = chainInner(leaf, components.slice(0, inner), i);
  return chainBorderRight(h, components.slice(inner));
}

/** Verifies an inclusion proof against a trusted root. Throws PSP_ERR_MERKLE_PROOF if it fails. */
export function verifyInclusion(
  index: number | bigint,
  size: number | bigint,
  leafHash: Uint8Array,
  proof: readonly Uint8Array[] | null,
  root: Uint8Array,
): void {
  const calculated = rootFromInclusionProof(index, size, leafHash, proof);
  if (!(root instanceof Uint8Array) || !bytesEqual(calculated, root)) {
    throw proofError("calculated root does not match the given root");
  }
}

/**
 * Verifies that the tree of `oldSize` leaves with root `oldRoot` is a prefix of the tree of
 * `newSize` leaves with root `newRoot` (RFC 9162 §2.1.4.2). Throws PSP_ERR_MERKLE_PROOF if not.
 *
 * Edge cases, matching the public transparency-dev vectors:
 * - newSize < oldSize: refused;
 * - equal sizes (≥ 1): the proof must be empty and the two roots byte-identical;
 * - oldSize 0: refused, whatever the proof (nothing can be proven about the empty tree).
 */
export function verifyConsistency(
  oldSize: number | bigint,
  newSize: number | bigint,
  proof: readonly Uint8Array[] | null,
  oldRoot: Uint8Array,
  newRoot: Uint8Array,
): void {
  const size1 = wireInteger(oldSize, "old tree size");
  const size2 = wireInteger(newSize, "new tree size");
  if (!(oldRoot instanceof Uint8Array) || !(newRoot instanceof Uint8Array)) {
    throw proofError("roots must be byte strings");
  }
  if (size2 < size1) throw proofError("new tree size is smaller than the old one", { size1, size2 });
  if (size1 === 0) throw proofError("consistency with the empty tree proves nothing", { size2 });
  const given = proof === null || proof === undefined ? [] : proof;
  if (!Array.isArray(given)) throw proofError("proof is not an array of hashes");
  if (size1 === size2) {
    if (given.length !== 0) throw proofError("sizes are equal but the proof is not empty");
    if (!bytesEqual(oldRoot, newRoot)) throw proofError("sizes are equal but the roots differ");
    return;
  }
  const components = wireProof(given);
  if (components.length === 0) throw proofError("empty proof");
  const r1 = wireHash(oldRoot, "old root");
  const r2 = wireHash(newRoot, "new root");

  const d = decompose(size1 - 1, size2);
  const shift = trailingZeros(size1);
  const inner = d.inner - shift; // shift < inner whenever size1 < size2
  // The proof starts with the hash of the old tree's rightmost perfect subtree of size 2^shift,
  // unless the old tree is that very subtree: then its root is the seed.
  const oldIsPerfect = size1 === 2 ** shift;
  const seed = oldIsPerfect ? r1 : components[0]!;
  const rest = oldIsPerfect ? components : components.slice(1);
  if (rest.length !== inner + d.border) {
    throw proofError("wrong number of proof components", {
      got: components.length,
      want: inner + d.border + (oldIsPerfect ? 0 : 1),
    });
  }
  const mask = shiftRight(size1 - 1, shift);
  const innerPart = rest.slice(0, inner);
  const borderPart = rest.slice(inner);

  const h1 = chainBorderRight(chainInnerRight(seed, innerPart, mask), borderPart);
  if (!bytesEqual(h1, r1)) throw proofError("proof does not reproduce the old root");
  const h2 = chainBorderRight(chainInner(seed, innerPart, mask), borderPart);
  if (!bytesEqual(h2, r2)) throw proofError("proof does not reproduce the new root");
}

// ---------------------------------------------------------------------------------------------
// Incremental construction

/** A complete (perfect) subtree: leaves [index·2^level, (index+1)·2^level). */
export interface MerkleNode {
  readonly level: number;
  readonly index: number;
  readonly hash: Uint8Array;
}

/**
 * Positions of the perfect subtrees that make up a tree of `size` leaves, left to right (the
 * binary decomposition of `size`, largest first). These are the nodes a `CompactRange` holds.
 */
export function frontierPositions(size: number): { level: number; index: number }[] {
  checkSize(size, "tree size");
  const out: { level: number; index: number }[] = [];
  let covered = 0;
  for (let level = bitLength(size) - 1; level >= 0; level--) {
    if (bitAt(size, level) === 1) {
      out.push({ level, index: covered / 2 ** level });
      covered += 2 ** level;
    }
  }
  return out;
}

/**
 * The right frontier of an append-only tree (a "compact range" [0, size)): one perfect subtree
 * hash per set bit of `size`, so O(log n) memory. `append` is amortised O(1) hashes (worst
 * O(log n)) and returns every node it completed, so a store can persist them for O(log n) proofs.
 */
export class CompactRange {
  #size = 0;
  readonly #frontier: MerkleNode[] = [];

  /**
   * Rebuilds the frontier of a tree of `size` leaves from stored node hashes (for example after a
   * restart). `hashAt` is asked exactly for `frontierPositions(size)`.
   */
  static restore(size: number, hashAt: (level: number, index: number) => Uint8Array): CompactRange {
    const range = new CompactRange();
    for (const { level, index } of frontierPositions(size)) {
      const hash = hashAt(level, index);
      if (!(hash instanceof Uint8Array) || hash.length !== HASH_SIZE) {
        throw rangeError("stored frontier node is missing or malformed", { level, index });
      }
      range.#frontier.push({ level, index, hash });
    }
    range.#size = size;
    return range;
  }

  get size(): number {
    return this.#size;
  }

  /** Appends one leaf hash; returns the completed nodes, the leaf itself (level 0) first. */
  append(leafHash: Uint8Array): MerkleNode[] {
    if (!(leafHash instanceof Uint8Array) || leafHash.length !== HASH_SIZE) {
      throw rangeError("leaf hash must be 32 bytes", { size: this.#size });
    }
    let node: MerkleNode = { level: 0, index: this.#size, hash: leafHash };
    const completed: MerkleNode[] = [node];
    for (;;) {
      const last = this.#frontier[this.#frontier.length - 1];
      if (last === undefined || last.level !== node.level) break;
      this.#frontier.pop();
      node = {
        level: node.level + 1,
        index: Math.floor(node.index / 2),
        hash: hashChildren(last.hash, node.hash),
      };
      completed.push(node);
    }
    this.#frontier.push(node);
    this.#size += 1;
    return completed;
  }

  /** Root hash of the tree so far: the frontier folded from the right. */
  root(): Uint8Array {
    const last = this.#frontier[this.#frontier.length - 1];
    if (last === undefined) return emptyRoot();
    let h = last.hash;
    for (let i = this.#frontier.length - 2; i >= 0; i--) h = hashChildren(this.#frontier[i]!.hash, h);
    return h;
  }

  /** The frontier nodes, left to right. */
  frontier(): readonly MerkleNode[] {
    return [...this.#frontier];
  }
}

/**
 * A whole tree in memory, every level of perfect subtrees kept: O(n) hashes to build, then
 * O(log n) per proof. For small trees held by one process (batch capability signing: one root,
 * one inclusion proof per capability).
 */
export class MerkleTree implements TreeReader {
  /** levels[l][i] = hash of the perfect subtree (l, i); levels[0] are the leaf hashes. */
  readonly #levels: Uint8Array[][];

  constructor(leafHashes: readonly Uint8Array[]) {
    const leaves = leafHashes.map((h, i) => {
      if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
        throw rangeError("leaf hash must be 32 bytes", { index: i });
      }
      return h;
    });
    this.#levels = [leaves];
    let level = leaves;
    while (level.length > 1) {
      const next: Uint8Array[] = [];
      for (let i = 0; i + 1 < level.length; i += 2) next.push(hashChildren(level[i]!, level[i + 1]!));
      this.#levels.push(next);
      level = next;
    }
  }

  /** Builds the tree over raw leaf data (each hashed with the 0x00 prefix). */
  static fromLeaves(leaves: readonly Uint8Array[]): MerkleTree {
    return new MerkleTree(leaves.map(hashLeaf));
  }

  get size(): number {
    return this.#levels[0]!.length;
  }

  leafHash(index: number): Uint8Array {
    const h = this.#levels[0]![index];
    if (h === undefined) throw rangeError("leaf index is beyond the tree size", { index, size: this.size });
    return h;
  }

  nodeHash(level: number, index: number): Uint8Array | undefined {
    return this.#levels[level]?.[index];
  }

  /** Root of the first `size` leaves (default: all). */
  root(size: number = this.size): Uint8Array {
    this.#checkSize(size);
    return treeRoot(this, size);
  }

  inclusionProof(index: number, size: number = this.size): Uint8Array[] {
    this.#checkSize(size);
    return inclusionProof(this, index, size);
  }

  consistencyProof(oldSize: number, newSize: number = this.size): Uint8Array[] {
    this.#checkSize(newSize);
    return consistencyProof(this, oldSize, newSize);
  }

  #checkSize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0 || size > this.size) {
      throw rangeError("tree size is beyond the number of leaves", { size, leaves: this.size });
    }
  }
}
