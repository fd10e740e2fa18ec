import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { isPspError } from "./errors.ts";
import {
  CompactRange,
  consistencyProof,
  emptyRoot,
  frontierPositions,
  hashChildren,
  hashLeaf,
  inclusionProof,
  MerkleTree,
  rootFromInclusionProof,
  type TreeReader,
  treeRoot,
  verifyConsistency,
  verifyInclusion,
} from "./merkle.ts";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const vectorsDir = path.resolve(repoRoot, "..", "shared", "vectors", "rfc6962");
const haveVectors = existsSync(path.join(vectorsDir, "inclusion"));
if (!haveVectors) {
  console.warn(`RFC 6962 conformance vectors not found at ${vectorsDir}: conformance tests SKIPPED`);
}

const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);

const hex = (h: Uint8Array): string => Buffer.from(h).toString("hex");
const b64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "base64"));

function listJson(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) out.push(...listJson(p));
    else if (name.endsWith(".json")) out.push(p);
  }
  return out;
}

/** JSON.parse rounds 64-bit integers such as 18446744073709551615: keep big ones as bigint. */
function readVector(file: string): Record<string, unknown> {
  const text = readFileSync(file, "utf8").replace(/(:\s*)(\d{16,})/g, '$1"#big:$2"');
  return JSON.parse(text, (_k, v) =>
    typeof v === "string" && v.startsWith("#big:") ? BigInt(v.slice(5)) : v,
  ) as Record<string, unknown>;
}

const proofOf = (v: unknown): Uint8Array[] | null => (v === null ? null : (v as string[]).map(b64));
const sizeOf = (v: unknown): number | bigint => v as number | bigint;

/** The leaves behind the public vectors (transparency-dev/merkle testonly.LeafInputs). */
const referenceLeaves = [
  "",
  "00",
  "10",
  "2021",
  "3031",
  "40414243",
  "5051525354555657",
  "606162636465666768696a6b6c6d6e6f",
].map((h) => new Uint8Array(Buffer.from(h, "hex")));

/** Textbook recursive MTH, written independently of merkle.ts's range arithmetic. */
function naiveRoot(leaves: readonly Uint8Array[]): Uint8Array {
  if (leaves.length === 0) return new Uint8Array(createHash("sha256").digest());
  if (leaves.length === 1) return hashLeaf(leaves[0]!);
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return hashChildren(naiveRoot(leaves.slice(0, k)), naiveRoot(leaves.slice(k)));
}

function expectMerkleRefusal(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    expect(isPspError(e, "PSP_ERR_MERKLE_PROOF")).toBe(true);
    return;
  }
  throw new Error("expected the proof to be refused");
}

describe.skipIf(!haveVectors)("RFC 6962 public vectors (transparency-dev/merkle)", () => {
  const inclusionFiles = haveVectors ? listJson(path.join(vectorsDir, "inclusion")) : [];
  const consistencyFiles = haveVectors ? listJson(path.join(vectorsDir, "consistency")) : [];

  it("has the vector files", () => {
    expect(inclusionFiles.length).toBeGreaterThan(50);
    expect(consistencyFiles.length).toBeGreaterThan(50);
  });

  it("verifies every inclusion happy path and refuses every wantErr case", () => {
    let ok = 0;
    let refused = 0;
    for (const file of inclusionFiles) {
      const v = readVector(file);
      const run = () =>
        verifyInclusion(
          sizeOf(v.leafIdx),
          sizeOf(v.treeSize),
          b64(v.leafHash as string),
          proofOf(v.proof),
          b64(v.root as string),
        );
      if (v.wantErr === true) {
        expectMerkleRefusal(run);
        refused++;
      } else {
        expect(run, path.relative(vectorsDir, file)).not.toThrow();
        ok++;
      }
    }
    expect(ok).toBeGreaterThan(0);
    expect(refused).toBeGreaterThan(0);
  });

  it("verifies every consistency happy path and refuses every wantErr case", () => {
    let ok = 0;
    let refused = 0;
    for (const file of consistencyFiles) {
      const v = readVector(file);
      const run = () =>
        verifyConsistency(
          sizeOf(v.size1),
          sizeOf(v.size2),
          proofOf(v.proof),
          b64(v.root1 as string),
          b64(v.root2 as string),
        );
      if (v.wantErr === true) {
        expectMerkleRefusal(run);
        refused++;
      } else {
        expect(run, path.relative(vectorsDir, file)).not.toThrow();
        ok++;
      }
    }
    expect(ok).toBeGreaterThan(0);
    expect(refused).toBeGreaterThan(0);
  });

  it("generates exactly the proofs of the happy paths from the reference leaves", () => {
    const tree = MerkleTree.fromLeaves(referenceLeaves);
    let compared = 0;
    for (const file of inclusionFiles.filter((f) => f.endsWith("happy-path.json"))) {
      const v = readVector(file);
      const size = Number(v.treeSize);
      const index = Number(v.leafIdx);
      expect(hex(tree.leafHash(index))).toBe(hex(b64(v.leafHash as string)));
      expect(hex(tree.root(size))).toBe(hex(b64(v.root as string)));
      expect(tree.inclusionProof(index, size).map(hex)).toEqual((proofOf(v.proof) ?? []).map(hex));
      compared++;
    }
    for (const file of consistencyFiles.filter((f) => f.endsWith("happy-path.json"))) {
      const v = readVector(file);
      const size1 = Number(v.size1);
      const size2 = Number(v.size2);
      expect(hex(tree.root(size1))).toBe(hex(b64(v.root1 as string)));
      expect(hex(tree.root(size2))).toBe(hex(b64(v.root2 as string)));
      expect(tree.consistencyProof(size1, size2).map(hex)).toEqual((proofOf(v.proof) ?? []).map(hex));
      compared++;
    }
    expect(compared).toBeGreaterThan(5);
  });
});

describe("merkle tree hash", () => {
  it("hashes the empty tree, a leaf and a node with RFC 6962 prefixes", () => {
    expect(hex(emptyRoot())).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(hex(hashLeaf(new Uint8Array()))).toBe(
      "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    );
    expect(hex(MerkleTree.fromLeaves(referenceLeaves).root())).toBe(
      "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    );
    expect(hex(treeRoot(() => new Uint8Array(32), 0))).toBe(hex(emptyRoot()));
  });

  it("agrees with a naive MTH, through a bare accessor and through stored nodes", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 8 }), { maxLength: 70 }), (leaves) => {
        const want = hex(naiveRoot(leaves));
        const tree = MerkleTree.fromLeaves(leaves);
        expect(hex(tree.root())).toBe(want);
        const hashes = leaves.map(hashLeaf);
        expect(hex(treeRoot((i) => hashes[i]!, leaves.length))).toBe(want);
      }),
      { seed, numRuns: 200 },
    );
  });
});

describe("proof generation and verification", () => {
  it("every generated inclusion proof verifies, and a tampered one is refused", () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 1, max: 300 })
          .chain((n) =>
            fc.tuple(fc.constant(n), fc.integer({ min: 0, max: n - 1 }), fc.integer({ min: 0, max: 31 })),
          ),
        ([n, index, byte]) => {
          const hashes = Array.from({ length: n }, (_, i) => hashLeaf(Uint8Array.of(i & 0xff, i >> 8)));
          const tree = new MerkleTree(hashes);
          const root = tree.root();
          const proof = inclusionProof((i) => hashes[i]!, index, n);
          expect(proof.map(hex)).toEqual(tree.inclusionProof(index).map(hex));
          verifyInclusion(index, n, hashes[index]!, proof, root);
          expect(hex(rootFromInclusionProof(index, n, hashes[index]!, proof))).toBe(hex(root));
          if (n > 1)
            expectMerkleRefusal(() => verifyInclusion((index + 1) % n, n, hashes[index]!, proof, root));
          if (proof.length > 0) {
            const bad = proof.map((p) => p.slice());
            const which = byte % bad.length;
            bad[which]![byte] = bad[which]![byte]! ^ 1;
            expectMerkleRefusal(() => verifyInclusion(index, n, hashes[index]!, bad, root));
            expectMerkleRefusal(() => verifyInclusion(index, n, hashes[index]!, proof.slice(1), root));
          }
          expectMerkleRefusal(() => verifyInclusion(index, n, hashes[index]!, [...proof, root], root));
        },
      ),
      { seed, numRuns: 300 },
    );
  });

  it("every generated consistency proof verifies, and a tampered one is refused", () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 1, max: 300 })
          .chain((n) => fc.tuple(fc.constant(n), fc.integer({ min: 1, max: n }), fc.nat())),
        ([n, m, pick]) => {
          const hashes = Array.from({ length: n }, (_, i) => hashLeaf(Uint8Array.of(i & 0xff, i >> 8, 7)));
          const tree = new MerkleTree(hashes);
          const proof = consistencyProof((i) => hashes[i]!, m, n);
          expect(proof.map(hex)).toEqual(tree.consistencyProof(m, n).map(hex));
          const r1 = tree.root(m);
          const r2 = tree.root(n);
          verifyConsistency(m, n, proof, r1, r2);
          if (m < n) {
            expectMerkleRefusal(() => verifyConsistency(m, n, proof, r2, r1));
            const bad = proof.map((p) => p.slice());
            const which = pick % bad.length;
            bad[which]![pick % 32] = bad[which]![pick % 32]! ^ 0x80;
            expectMerkleRefusal(() => verifyConsistency(m, n, bad, r1, r2));
            expectMerkleRefusal(() => verifyConsistency(m, n, proof.slice(0, -1), r1, r2));
            expectMerkleRefusal(() => verifyConsistency(m, n, [], r1, r2));
            if (m + 1 < n) expectMerkleRefusal(() => verifyConsistency(m + 1, n, proof, r1, r2));
          }
        },
      ),
      { seed, numRuns: 300 },
    );
  });

  it("refuses out-of-range generation with PSP_ERR_MERKLE_RANGE", () => {
    const tree = MerkleTree.fromLeaves(referenceLeaves);
    for (const fn of [
      () => tree.inclusionProof(8),
      () => tree.inclusionProof(0, 9),
      () => tree.consistencyProof(0, 8),
      () => tree.consistencyProof(5, 4),
      () => inclusionProof(() => new Uint8Array(3), 0, 2),
    ]) {
      expect(fn).toThrow(expect.objectContaining({ code: "PSP_ERR_MERKLE_RANGE" }));
    }
  });

  it("works for trees beyond 2^32 leaves (53-bit index arithmetic)", () => {
    // A synthetic tree: every leaf equal except one marked leaf, so the hash of any perfect
    // subtree is known in O(level) and proofs cost O(log n) through nodeHash.
    const plain = hashLeaf(Uint8Array.of(1));
    const marked = hashLeaf(Uint8Array.of(2));
    const plainAt: Uint8Array[] = [plain];
    for (let l = 1; l <= 53; l++) plainAt.push(hashChildren(plainAt[l - 1]!, plainAt[l - 1]!));
    const readerWithMark = (mark: number): TreeReader => {
      const markedAt: Uint8Array[] = [marked];
      for (let l = 1; l <= 53; l++) {
        const below = markedAt[l - 1]!;
        const odd = Math.floor(mark / 2 ** (l - 1)) % 2 === 1;
        markedAt.push(odd ? hashChildren(plainAt[l - 1]!, below) : hashChildren(below, plainAt[l - 1]!));
      }
      const nodeHash = (l: number, i: number) =>
        i === Math.floor(mark / 2 ** l) ? markedAt[l]! : plainAt[l]!;
      return { leafHash: (i) => nodeHash(0, i), nodeHash };
    };
    const size = 2 ** 41 + 2 ** 33 + 12_345;
    for (const index of [0, 2 ** 32 - 1, 2 ** 32, 2 ** 41 + 7, size - 1]) {
      const reader = readerWithMark(index);
      const root = treeRoot(reader, size);
      const proof = inclusionProof(reader, index, size);
      verifyInclusion(index, size, marked, proof, root);
      verifyInclusion(BigInt(index), BigInt(size), marked, proof, root);
      expectMerkleRefusal(() => verifyInclusion(index, size, plain, proof, root));
      if (index > 0) expectMerkleRefusal(() => verifyInclusion(index - 1, size, marked, proof, root));
      for (const old of [1, 2 ** 32 + 3, 2 ** 41, size - 1]) {
        const p = consistencyProof(reader, old, size);
        verifyConsistency(old, size, p, treeRoot(reader, old), root);
        expectMerkleRefusal(() => verifyConsistency(old, size, p, hashLeaf(Uint8Array.of(9)), root));
      }
    }
    expectMerkleRefusal(() => verifyInclusion(2n ** 64n - 1n, 1, plain, [], plain));
  });
});

describe("CompactRange", () => {
  it("tracks the root, reports completed nodes, and restores from stored nodes", () => {
    const hashes = Array.from({ length: 200 }, (_, i) => hashLeaf(Uint8Array.of(i)));
    const tree = new MerkleTree(hashes);
    const range = new CompactRange();
    const stored = new Map<string, Uint8Array>();
    expect(hex(range.root())).toBe(hex(emptyRoot()));
    for (let i = 0; i < hashes.length; i++) {
      for (const node of range.append(hashes[i]!)) {
        expect(hex(node.hash)).toBe(hex(tree.nodeHash(node.level, node.index)!));
        stored.set(`${node.level}/${node.index}`, node.hash);
      }
      expect(range.size).toBe(i + 1);
      expect(hex(range.root())).toBe(hex(tree.root(i + 1)));
      expect(range.frontier().map((n) => ({ level: n.level, index: n.index }))).toEqual(
        frontierPositions(i + 1),
      );
    }
    // Every perfect subtree is reported exactly once: n leaves give 2n − popcount(n) nodes.
    expect(stored.size).toBe(2 * 200 - 3);
    const restored = CompactRange.restore(137, (l, i) => stored.get(`${l}/${i}`)!);
    expect(hex(restored.root())).toBe(hex(tree.root(137)));
    restored.append(hashes[137]!);
    expect(hex(restored.root())).toBe(hex(tree.root(138)));
  });
});
