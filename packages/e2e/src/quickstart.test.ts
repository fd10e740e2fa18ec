/**
 * The README's quick start, tried as a new user would: a clean clone, `npm start`, open the printed
 * address, and the executive summary covers every Totebox; Ctrl-C leaves no process behind.
 *
 * The install step (`npm ci`) is what CI itself runs on a clean clone before this test; here the
 * clone gets the installed third-party packages by symlink (with its own workspace packages linked
 * to the clone, not to this checkout), so that the test costs the start, not a second install.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, describe, expect, it } from "vitest";

const repo = resolve(import.meta.dirname, "..", "..", "..");
const isGitCheckout = existsSync(join(repo, ".git"));
if (!isGitCheckout)
  console.warn("quickstart test skipped: this checkout is not a git repository (nothing to clone)");

let work: string | undefined;
let npmStart: ChildProcess | undefined;

afterAll(() => {
  if (npmStart?.pid && npmStart.exitCode === null) {
    try {
      process.kill(-npmStart.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Every process whose command line mentions `needle` (our children carry the clone's path). */
function processesMentioning(needle: string): string[] {
  const out = execFileSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" });
  return out
    .split("\n")
    .filter((l) => l.includes(needle) && !l.includes("ps -eo"))
    .map((l) => l.trim());
}

describe.skipIf(!isGitCheckout)("quick start from a clean clone", () => {
  it("npm start brings the estate up, the address answers, the summary covers every Totebox, Ctrl-C stops all", async () => {
    work = mkdtempSync(join(tmpdir(), "os-orch-quickstart-"));
    const clone = join(work, "clone");
    execFileSync("git", ["clone", "--quiet", "--no-hardlinks", repo, clone]);
    // Installed packages, minus our own workspaces, which must be the clone's.
    mkdirSync(join(clone, "node_modules"));
    for (const name of readdirSync(join(repo, "node_modules"))) {
      if (name === "@os-orchestration" || name === ".bin") continue;
      symlinkSync(join(repo, "node_modules", name), join(clone, "node_modules", name));
    }
    mkdirSync(join(clone, "node_modules", "@os-orchestration"));
    for (const pkg of ["psp", "totebox", "orchestration", "console", "e2e"]) {
      symlinkSync(join(clone, "packages", pkg), join(clone, "node_modules", "@os-orchestration", pkg));
    }
    mkdirSync(join(clone, "node_modules", ".bin"));
    symlinkSync(
      join(repo, "node_modules", "tsx", "dist", "cli.mjs"),
      join(clone, "node_modules", ".bin", "tsx"),
    );

    // `npm start`, in its own process group so that "Ctrl-C" reaches all of it, as in a terminal.
    npmStart = spawn("npm", ["start", "--", "--toteboxes", "24"], {
      cwd: clone,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, npm_config_update_notifier: "false" },
    });
    let stderr = "";
    npmStart.stderr!.on("data", (d) => {
      stderr += String(d);
    });
    const url = await new Promise<string>((resolveUrl, reject) => {
      createInterface({ input: npmStart!.stdout! }).on("line", (line) => {
        const m = /Dashboard \(tenant atlas\): (http:\/\/127\.0\.0\.1:\d+\/login\?token=\S+)/.exec(line);
        if (m) resolveUrl(m[1]!);
      });
      npmStart!.once("exit", (code) => reject(new Error(`npm start exited ${code}: ${stderr.slice(-3000)}`)));
    });

    // The printed address answers: it logs the browser in and serves the dashboard.
    const login = await fetch(url, { redirect: "manual" });
    expect(login.status).toBe(302);
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
    const page = await fetch(new URL("/", url));
    expect(page.status).toBe(200);
    expect(await page.text()).toMatch(/<div id="app"|<main|<script/);

    // The executive summary covers every Totebox (Atlas oversees the whole estate).
    const started = await fetch(new URL("/api/fanouts", url), {
      method: "POST",
      headers: { cookie, "content-type": "application/json" },
      body: JSON.stringify({ kind: "viewport", name: "executive-summary" }),
    });
    expect(started.status).toBe(200);
    const { id } = (await started.json()) as { id: string };
    const result = (await (
      await fetch(new URL(`/api/fanouts/${id}`, url), { headers: { cookie } })
    ).json()) as {
      targeted: number;
      answered: number;
      outcomes: { status: string }[];
      verification: { verified: boolean };
    };
    expect(result.targeted).toBe(24);
    expect(result.answered).toBe(24);
    expect(result.outcomes.every((o) => o.status === "ok")).toBe(true);
    expect(result.verification.verified).toBe(true);

    expect(processesMentioning(clone).length).toBeGreaterThan(0);
    const exited = new Promise<number | null>((r) => npmStart!.once("exit", (code) => r(code)));
    process.kill(-npmStart.pid!, "SIGINT");
    await exited;
    // Nothing of ours is left running: no Totebox, aggregator, dashboard or npm.
    const deadline = Date.now() + 15_000;
    let left = processesMentioning(clone);
    while (left.length > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      left = processesMentioning(clone);
    }
    expect(left).toEqual([]);
  }, 420_000);
});
