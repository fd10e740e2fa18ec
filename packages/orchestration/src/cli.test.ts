import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const BIN = fileURLToPath(new URL("../bin/os-orchestration.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "os-orch-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let configs = 0;

/** Runs `os-orchestration check` on a fleet.yaml whose viewports are `viewports` (YAML text). */
function check(viewports: string): { status: number | null; out: string; err: string } {
  const config = join(dir, `fleet-${++configs}.yaml`);
  writeFileSync(
    config,
    `version: 1\ntenants:\n  t1: {}\ntoteboxes: []\noperators: []\nviewports:\n${viewports}`,
  );
  const r = spawnSync(process.execPath, [BIN, "check", "--config", config], {
    encoding: "utf8",
    timeout: 60_000,
  });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

const SECTION = `    reads: [{ view: position }]
    sections:
      - name: s
        sql: SELECT count(*) AS n FROM position
        columns: { n: integer }
`;

describe("os-orchestration check", () => {
  it("counts the built-in viewports and the config's own", () => {
    const r = check(`  mine:\n${SECTION}`);
    expect(r.err).toBe("");
    expect(r.status).toBe(0);
    expect(r.out).toMatch(/^ok: 0 Toteboxes, 1 tenants, 0 operators, 4 viewports/);
  });

  it("refuses a config viewport that would replace a built-in one, as serve does", () => {
    const r = check(`  portfolio:\n${SECTION}`);
    expect(r.status).toBe(1);
    expect(r.out).toBe("");
    expect(r.err).toContain("ORCH_ERR_VIEWPORT_INVALID");
    expect(r.err).toContain("viewport portfolio would replace a built-in one");
  });
});

describe("os-orchestration serve --heap-growth", () => {
  const serve = (growth: string) =>
    spawnSync(
      process.execPath,
      [
        BIN,
        "serve",
        "--config",
        join(dir, "none.yaml"),
        "--identity",
        join(dir, "no-identity"),
        `--heap-growth=${growth}`,
      ],
      { encoding: "utf8", timeout: 60_000 },
    );

  it("refuses a value that is not a whole percentage from 0 to 300, before starting anything", () => {
    for (const bad of ["301", "-5", "lots"]) {
      const r = serve(bad);
      expect(r.status, bad).toBe(2);
      expect(r.stderr, bad).toContain("--heap-growth: a whole percentage from 0 to 300");
    }
  });

  it("accepts one, and goes on to start (here failing later, on the missing identity)", () => {
    const r = serve("007");
    expect(r.status).toBe(1);
    expect(r.stderr).not.toContain("--heap-growth");
    expect(r.stderr).toMatch(/PSP_ERR_|identity/i);
  });
});
