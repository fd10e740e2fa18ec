import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { decodeUiResult, type UiResult } from "./api.ts";
import { describeBar, describePie } from "./charts.ts";
import { parseHash } from "./routes.ts";
import { sideRows } from "./sections.ts";
import { coverageOf, unverifiedReason } from "./verification.ts";

function load(name: string): UiResult {
  const raw = JSON.parse(readFileSync(new URL(`../dev-fixtures/${name}`, import.meta.url), "utf8"));
  return decodeUiResult(raw, name);
}

describe("verification texts", () => {
  const base = load("executive-summary.json");

  it("a verified result has no reason; each way of not being verified says why", () => {
    expect(unverifiedReason(base)).toBe("");
    const some: UiResult = {
      ...base,
      verification: { receipts: "some", recomputed: true, verified: false },
      outcomes: base.outcomes.map((o) =>
        o.totebox === "tb-ops" ? { ...o, verified: false, verifyCode: "PSP_ERR_RECEIPT_MISMATCH" } : o,
      ),
    };
    expect(unverifiedReason(some)).toBe("Receipts not verified for tb-ops (PSP_ERR_RECEIPT_MISMATCH)");
    expect(
      unverifiedReason({ ...base, verification: { receipts: "all", recomputed: false, verified: false } }),
    ).toBe("The console's own recomputation gave different figures");
    expect(
      unverifiedReason({ ...base, verification: { receipts: "none", recomputed: null, verified: false } }),
    ).toBe("No Totebox receipt could be verified; the combine step was not recomputed");
  });

  it("the banner shows whenever anything is missing, even if the server's flag says otherwise", () => {
    const c = coverageOf(base);
    expect(c.partial).toBe(true);
    expect(c.missing.map((o) => `${o.totebox}:${o.status}`)).toEqual(["tb-dev:timeout"]);
    // A server claiming completeness while an outcome is missing is still shown as partial.
    expect(coverageOf({ ...base, partial: false }).partial).toBe(true);
    // Fewer outcomes than targeted: partial, even with nothing listed as missing.
    const ok = base.outcomes.filter((o) => o.status === "ok");
    expect(coverageOf({ ...base, partial: false, outcomes: ok, answered: 7, targeted: 8 }).partial).toBe(
      true,
    );
    expect(coverageOf({ ...base, partial: false, outcomes: ok, answered: 7, targeted: 7 }).partial).toBe(
      false,
    );
  });
});

describe("chart text alternatives", () => {
  it("say what a bar chart shows, bounded to twelve categories", () => {
    expect(
      describeBar("net value by region", {
        categories: ["east", "north"],
        series: [{ name: "Net value", values: [17_895_270.24, null] }],
        kind: "amount",
        currency: "USD",
      }),
    ).toBe("Bar chart, net value by region: east $17.9M; north no data.");
    const many = Array.from({ length: 15 }, (_, i) => `g${i}`);
    const text = describeBar("x", {
      categories: many,
      series: [
        { name: "Income", values: many.map(() => 1000) },
        { name: "Net", values: many.map(() => -5) },
      ],
      kind: "amount",
    });
    expect(text).toContain("(income and net)");
    expect(text).toContain("g0: income 1K, net -5");
    expect(text).toMatch(/; and 3 more\.$/);
  });

  it("say what a pie shows, leaving out empty slices", () => {
    expect(
      describePie("Toteboxes by answer status", [
        { name: "ok", value: 7 },
        { name: "timeout", value: 1 },
        { name: "error", value: 0 },
      ]),
    ).toBe("Pie chart, Toteboxes by answer status: ok 7 of 8; timeout 1 of 8.");
  });
});

describe("routes and drill-down rows", () => {
  it("parses only known hash routes", () => {
    expect(parseHash("#/portfolio")).toBe("portfolio");
    expect(parseHash("#/nope")).toBeNull();
    expect(parseHash("#main")).toBeNull();
    expect(parseHash("")).toBeNull();
  });

  it("keeps a side's own rows for the counterparty in question", () => {
    const hold = load("read-intercompany-tb-hold.json");
    const [s] = sideRows(hold, "tb-hold", "tb-harbour");
    expect(s?.total).toBe(4);
    expect(s?.rows).toEqual([["tb-hold", "tb-harbour", "Harbour Point Apartments", 48_000_000, 7]]);
    expect(sideRows(hold, "tb-other", "tb-harbour")[0]?.rows).toEqual([]);
  });
});
