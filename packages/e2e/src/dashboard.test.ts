/**
 * The dashboard in a real browser: Debian's Chromium driven by playwright-core, against a real
 * estate on loopback (Toteboxes, the aggregator and `os-console ui` as in `npm start`). The
 * dashboard's figures must equal the CLI's; a Totebox stopped during the test shows up as missing
 * with its reason; every page is usable from the keyboard; a screenshot of each page is written to
 * test-output/screenshots (kept by CI with the test report).
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import pino from "pino";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildEstate,
  CONSOLE_BIN,
  type Estate,
  ensureUiBuilt,
  fleetYaml,
  type RunningTotebox,
  startAggregatorProcess,
  startConsoleUi,
  startToteboxesInProcess,
  stopAllChildren,
  writeConsoleHomes,
  writeFleet,
} from "./estate.ts";

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  console.warn(
    "dashboard browser tests SKIPPED: /usr/bin/chromium is not installed (apt-get install chromium)",
  );
}
const SHOTS = resolve(import.meta.dirname, "..", "..", "..", "test-output", "screenshots");
const AS_OF = "2026-10-31";
const run = promisify(execFile);

let root: string;
let estate: Estate;
let toteboxes: Map<string, RunningTotebox>;
let home: string;
let url: string;
let browser: Browser;
let page: Page;

async function cli(args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [CONSOLE_BIN, ...args, "--home", home], {
    maxBuffer: 64 * 1024 * 1024,
  });
  return stdout;
}

interface CliResult {
  sections: { name: string; columns: { name: string }[]; rows: unknown[][] }[];
}
function rowsOf(r: CliResult, name: string): Record<string, unknown>[] {
  const s = r.sections.find((x) => x.name === name)!;
  return s.rows.map((row) => Object.fromEntries(s.columns.map((c, i) => [c.name, row[i]])));
}

async function open(route: string): Promise<void> {
  await page.goto(new URL(`/#/${route}`, url).toString());
  await page.waitForSelector('main[data-ready="true"]', { timeout: 60_000 });
}

async function setAsOf(): Promise<void> {
  const input = page.getByLabel(/as of/i).first();
  if ((await input.count()) === 0) return;
  await input.fill(AS_OF);
  await input.press("Enter");
  const refresh = page.getByRole("button", { name: /refresh/i }).first();
  if ((await refresh.count()) > 0) await refresh.click();
  await page.waitForSelector('main[data-ready="true"]', { timeout: 60_000 });
}

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

describe.skipIf(!haveChromium)("the dashboard in Chromium", () => {
  beforeAll(async () => {
    mkdirSync(SHOTS, { recursive: true });
    ensureUiBuilt();
    root = mkdtempSync(join(tmpdir(), "os-orch-dashboard-"));
    estate = await buildEstate({ root, count: 12 });
    toteboxes = await startToteboxesInProcess(estate, pino({ level: "silent" }));
    const config = join(root, "fleet.yaml");
    writeFleet(config, fleetYaml(estate, toteboxes));
    const agg = await startAggregatorProcess({ config, identityDir: join(root, "aggregator", "identity") });
    const homes = await writeConsoleHomes(estate, { host: "127.0.0.1", port: agg.port });
    home = homes.get("atlas")!;
    await cli(["grant"]);
    url = (await startConsoleUi({ home })).url;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(url); // the one-time login link sets the session cookie
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    await stopAllChildren();
    for (const t of toteboxes?.values() ?? []) await t.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it("overview: the key figures equal the CLI's executive summary, and are verified", async () => {
    await open("overview");
    await setAsOf();
    const cliSummary = JSON.parse(
      await cli(["viewport", "executive-summary", "--param", `as_of=${AS_OF}`, "--json"]),
    ) as CliResult;
    const figures = rowsOf(cliSummary, "figures")[0]!;
    for (const [tile, column] of [
      ["tile-net_value", "net_value"],
      ["tile-cash", "cash"],
      ["tile-debt", "debt"],
    ] as const) {
      const raw = await page.getByTestId(tile).getAttribute("data-value");
      expect(Number(raw), tile).toBe(Number(figures[column]));
    }
    expect(await page.getByTestId("verified").count()).toBeGreaterThan(0);
    expect(await page.getByTestId("unverified").count()).toBe(0);
    await shot("overview");
  });

  it("portfolio: grouping by any tag, rows equal the CLI's rollup", async () => {
    await open("portfolio");
    await setAsOf();
    await page.getByTestId("group-by").selectOption("portfolio");
    await page.waitForSelector('main[data-ready="true"]', { timeout: 60_000 });
    const cliRollup = rowsOf(
      JSON.parse(
        await cli([
          "viewport",
          "portfolio",
          "--param",
          "group_by=portfolio",
          "--param",
          `as_of=${AS_OF}`,
          "--json",
        ]),
      ) as CliResult,
      "rollup",
    );
    for (const r of cliRollup.filter((x) => x.level === "subtotal")) {
      const row = page.locator(
        `[data-testid="rollup-table"] tr[data-level="subtotal"][data-grp="${String(r.grp)}"]`,
      );
      const cell = row.locator('[data-col="net_value"]');
      expect(Number(await cell.getAttribute("data-value")), String(r.grp)).toBe(Number(r.net_value));
    }
    const total = cliRollup.find((x) => x.level === "total")!;
    const totalCell = page.locator(
      '[data-testid="rollup-table"] tr[data-level="total"] [data-col="net_value"]',
    );
    expect(Number(await totalCell.getAttribute("data-value"))).toBe(Number(total.net_value));
    await shot("portfolio");
  });

  it("reconciliation: exceptions first, drill-down shows both sides", async () => {
    await open("reconciliation");
    await setAsOf();
    const cliPairs = rowsOf(
      JSON.parse(
        await cli(["viewport", "reconciliation", "--param", `as_of=${AS_OF}`, "--json"]),
      ) as CliResult,
      "pairs",
    );
    const rows = page.locator('[data-testid="pairs-table"] tbody tr[data-status]');
    expect(await rows.count()).toBe(cliPairs.length);
    const mismatched = cliPairs.filter((p) => p.status === "mismatched").length;
    expect(mismatched).toBeGreaterThan(0);
    expect(await rows.first().getAttribute("data-status")).toBe("mismatched");
    await rows.first().getByRole("button").first().click();
    const drill = page.getByTestId("drilldown");
    await drill.waitFor({ timeout: 60_000 });
    await page.waitForSelector('main[data-ready="true"]', { timeout: 60_000 });
    await expect.poll(async () => (await drill.textContent()) ?? "", { timeout: 60_000 }).toMatch(/co-\d{3}/);
    await shot("reconciliation");
  });

  it("executive summary and coverage pages render with every section", async () => {
    await open("summary");
    await setAsOf();
    for (const id of ["windows-table", "exceptions-table", "coverage-summary-table"]) {
      expect(await page.getByTestId(id).count(), id).toBe(1);
    }
    await shot("summary");
    await open("coverage");
    const rows = page.locator('[data-testid="coverage-table"] tr[data-totebox]');
    expect(await rows.count()).toBe(estate.entities.filter((e) => e.tenants.includes("atlas")).length);
    await shot("coverage");
  });

  it("a Totebox stopped during the test shows up as missing, with its reason", async () => {
    const victim = estate.entities.find((e) => e.kind === "property")!.id;
    await toteboxes.get(victim)!.stop();
    // Ask the estate again (the overview's Refresh re-runs the executive summary), then look at coverage.
    await open("overview");
    await page
      .getByRole("button", { name: /^refresh$/i })
      .first()
      .click();
    await page.waitForSelector('main[data-ready="true"]', { timeout: 60_000 });
    await open("coverage");
    const row = page.locator(`[data-testid="coverage-table"] tr[data-totebox="${victim}"]`);
    await expect.poll(() => row.getAttribute("data-status"), { timeout: 60_000 }).toBe("offline");
    expect(await row.textContent()).toMatch(/ORCH_ERR_TOTEBOX_OFFLINE|PSP_ERR_LINK_CLOSED|offline/);
    const banner = page.getByTestId("partial-banner");
    expect(await banner.count()).toBeGreaterThan(0);
    expect(await banner.first().textContent()).toContain(victim);
    // The fleet table says the link is down too.
    await page.getByRole("button", { name: /refresh fleet/i }).click();
    const fleetRow = page.locator(`[data-testid="fleet-table"] tr[data-totebox="${victim}"]`);
    await expect.poll(() => fleetRow.getAttribute("data-online"), { timeout: 30_000 }).toBe("false");
    await shot("coverage-missing");
  });

  it("is usable from the keyboard: the navigation is reachable and works with Enter", async () => {
    await open("overview");
    // Tab from the top of the page until the portfolio link has focus, then press Enter.
    await page.locator("body").focus();
    let found = false;
    for (let i = 0; i < 30 && !found; i++) {
      await page.keyboard.press("Tab");
      // Evaluated in the page (the e2e package is typed for Node, not the DOM).
      found =
        (await page.evaluate("document.activeElement?.getAttribute('data-testid')")) === "nav-portfolio";
    }
    expect(found).toBe(true);
    await page.keyboard.press("Enter");
    await page.waitForSelector('main[data-ready="true"]', { timeout: 60_000 });
    expect(page.url()).toContain("#/portfolio");
    // The grouping picker has an accessible label.
    expect(await page.getByLabel(/group/i).count()).toBeGreaterThan(0);
  });
});
