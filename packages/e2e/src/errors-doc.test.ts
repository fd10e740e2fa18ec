import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";

// Every stable error code used anywhere in the programs must be documented in docs/errors.md,
// and the document must not list codes that no longer exist.
const root = resolve(import.meta.dirname, "..", "..", "..");
// A code ends in a letter or digit; "PSP_ERR_CAP_" in `code.startsWith("PSP_ERR_CAP_")` is a prefix.
const CODE = /\b(?:PSP|TOTEBOX|ORCH|CONSOLE|UI|BENCH)_ERR_[A-Z0-9_]*[A-Z0-9]\b(?!_)/g;

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else if (/\.tsx?$/.test(name) && !/\.test\.tsx?$/.test(name)) out.push(p);
  }
  return out;
}

describe("docs/errors.md", () => {
  const used = new Set<string>();
  // Every package's sources, the dashboard's (packages/console/ui/src) and the benches'.
  const roots = [
    ...readdirSync(join(root, "packages")).map((pkg) => join(root, "packages", pkg, "src")),
    join(root, "packages", "console", "ui", "src"),
    join(root, "bench"),
  ];
  for (const src of roots) {
    try {
      statSync(src);
    } catch {
      continue;
    }
    for (const f of sources(src)) for (const m of readFileSync(f, "utf8").matchAll(CODE)) used.add(m[0]);
  }
  const documented = new Set(
    [...readFileSync(join(root, "docs", "errors.md"), "utf8").matchAll(/`([A-Z]+_ERR_[A-Z0-9_]+)`/g)].map(
      (m) => m[1]!,
    ),
  );

  it("lists every code the sources use", () => {
    const missing = [...used].filter((c) => !documented.has(c)).sort();
    expect(missing).toEqual([]);
    expect(used.size).toBeGreaterThan(40);
  });

  it("lists no code the sources no longer use", () => {
    const stale = [...documented].filter((c) => !used.has(c)).sort();
    expect(stale).toEqual([]);
  });
});
