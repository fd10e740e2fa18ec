import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { heapGrowthGivenToNode, MAX_HEAP_GROWTH_PERCENT, setHeapGrowth } from "./heap-growth.ts";

const MODULE = fileURLToPath(new URL("./heap-growth.ts", import.meta.url));

/**
 * V8 does not throw on a flag it does not know: it prints "unrecognized flag" on the process's
 * own stderr and carries on. So whether the flag still exists is asked of a child process.
 */
function inChild(code: string): { status: number | null; err: string } {
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
    encoding: "utf8",
    timeout: 60_000,
  });
  return { status: r.status, err: r.stderr };
}

describe("setHeapGrowth", () => {
  it("refuses what is not a whole percentage in range, before touching V8", () => {
    for (const bad of [-1, MAX_HEAP_GROWTH_PERCENT + 1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => setHeapGrowth(bad), String(bad)).toThrow(RangeError);
    }
  });

  it("sets a flag this V8 knows (a renamed flag would be ignored with a warning)", () => {
    const ok = inChild(
      `import { setHeapGrowth } from ${JSON.stringify(MODULE)}; setHeapGrowth(100); setHeapGrowth(0);`,
    );
    expect(ok.err).toBe("");
    expect(ok.status).toBe(0);
    // The check above can see a flag V8 does not know.
    const unknown = inChild(
      `import { setFlagsFromString } from "node:v8"; setFlagsFromString("--heap-growing-pct=100");`,
    );
    expect(unknown.err).toMatch(/unrecognized flag/);
  });

  it("knows when node was given V8's own flag, so that serve leaves it as given", () => {
    expect(heapGrowthGivenToNode(["--heap-growing-percent=200"], undefined)).toBe(true);
    expect(heapGrowthGivenToNode(["--heap_growing_percent=200"], undefined)).toBe(true);
    expect(
      heapGrowthGivenToNode(["--import", "tsx"], "--max-old-space-size=4096 --heap-growing-percent=20"),
    ).toBe(true);
    expect(heapGrowthGivenToNode(["--import", "tsx"], "--max-old-space-size=4096")).toBe(false);
    expect(heapGrowthGivenToNode([], undefined)).toBe(false);
    // Only that flag: not one whose name merely starts the same way.
    expect(heapGrowthGivenToNode(["--heap-growing-percentage=5"], undefined)).toBe(false);
  });
});
