import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  columnDecimals,
  currencyCode,
  formatAgo,
  formatAmount,
  formatCell,
  formatDetail,
  formatInteger,
  formatPercent,
  humanise,
  isAmountColumn,
  isRatioColumn,
  shortFingerprint,
  toBigInt,
} from "./format.ts";

const SEED = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log(`format.test.ts fast-check seed ${SEED} (rerun with FC_SEED=${SEED})`);

describe("amount columns", () => {
  it("are integer columns named in the brief, by name or prefix", () => {
    for (const n of [
      "cash",
      "assets",
      "liabilities",
      "equity",
      "debt",
      "net_value",
      "income",
      "expenses",
      "net",
      "balance",
      "balance_a",
      "balance_b",
      "difference",
      "monthly_rent",
      "monthly_rent_roll",
      "average_rent",
      "total_abs_difference",
    ]) {
      expect(isAmountColumn(n, "integer"), n).toBe(true);
    }
    // Not money: counts, ratios, and amount names with a non-integer type.
    for (const n of ["units", "toteboxes", "amount", "pairs", "lines", "rowCount"]) {
      expect(isAmountColumn(n, "integer"), n).toBe(false);
    }
    expect(isAmountColumn("cash", "number")).toBe(false);
    expect(isRatioColumn("occupancy_ratio", "number")).toBe(true);
  });
});

describe("formatAmount", () => {
  it("divides minor units by 100 with cents below 10,000 and none above", () => {
    expect(formatAmount(123456, "USD")).toBe("$1,234.56");
    expect(formatAmount(-5, "USD")).toBe("-$0.05");
    expect(formatAmount(0, "USD")).toBe("$0.00");
    expect(formatAmount(999_999, null)).toBe("9,999.99");
    expect(formatAmount(1_000_000, null)).toBe("10,000");
    expect(formatAmount(10_054_790_024, "USD")).toBe("$100,547,900");
    expect(formatAmount(2_50_00, "EUR")).toBe("€250.00");
  });

  it("rounds half away from zero when it drops the cents", () => {
    expect(formatAmount(1_000_050, null)).toBe("10,001");
    expect(formatAmount(-1_000_050, null)).toBe("-10,001");
    expect(formatAmount(1_000_049, null)).toBe("10,000");
    expect(formatAmount(765_050, null, 0)).toBe("7,651");
  });

  it("is exact for digit strings beyond 2^53 (the aggregator sends those as strings)", () => {
    expect(formatAmount("123456789012345678901", "USD")).toBe("$1,234,567,890,123,456,789");
    expect(formatAmount("-900719925474099312", null)).toBe("-9,007,199,254,740,993");
  });

  it("shows unknown currencies (MIXED, garbage) as plain figures, and non-numbers as they are", () => {
    expect(currencyCode("MIXED")).toBeNull();
    expect(currencyCode("usd")).toBeNull();
    expect(formatAmount(123456, "MIXED")).toBe("1,234.56");
    expect(formatAmount(null, "USD")).toBe("—");
    expect(formatAmount("12.5", "USD")).toBe("12.5");
  });

  it("keeps every digit of any integer (property)", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(10n ** 30n), max: 10n ** 30n }), (cents) => {
        const text = formatAmount(cents.toString(), null, 0);
        const shown = BigInt(text.replace(/[^0-9-]/g, ""));
        const abs = cents < 0n ? -cents : cents;
        const major = (abs + 50n) / 100n;
        expect(shown).toBe(cents < 0n ? -major : major);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });

  it("uses one decimals rule per column", () => {
    expect(columnDecimals([100, 5_000, null])).toBe("auto");
    expect(columnDecimals([100, -1_000_000])).toBe(0);
    expect(columnDecimals(["99999999999999999999"])).toBe(0);
  });
});

describe("other cells", () => {
  it("formats ratios, counts and cells by column type", () => {
    expect(formatPercent(0.8971)).toBe("89.7%");
    expect(formatInteger("12345678901234567890")).toBe("12,345,678,901,234,567,890");
    expect(formatCell({ name: "net_value", type: "integer" }, 12345)).toEqual({
      text: "123.45",
      numeric: true,
      raw: "12345",
    });
    expect(formatCell({ name: "units", type: "integer" }, 1200).text).toBe("1,200");
    expect(formatCell({ name: "occupancy_ratio", type: "number" }, 0.5).text).toBe("50.0%");
    expect(formatCell({ name: "ok", type: "boolean" }, false).text).toBe("no");
    expect(formatCell({ name: "grp", type: "string" }, null).text).toBe("—");
  });

  it("rewrites raw minor units in intercompany exception details only", () => {
    expect(
      formatDetail(
        "intercompany-mismatch",
        "with b: a records -47235000, b records 48000000, difference 765000",
        "USD",
      ),
    ).toBe("with b: a records -$472,350, b records $480,000, difference $7,650.00");
    expect(formatDetail("pending-staged", "3 staged entries awaiting the owner")).toBe(
      "3 staged entries awaiting the owner",
    );
  });

  it("labels, times and fingerprints", () => {
    expect(humanise("net_value")).toBe("Net value");
    expect(humanise("monthly_rent_roll")).toBe("Monthly rent roll");
    expect(formatAgo(null, 0)).toBe("never");
    expect(formatAgo(1_000, 31_000)).toBe("30 s ago");
    expect(formatAgo(0, 7_200_000)).toBe("2 h ago");
    expect(shortFingerprint("3f9a1c07d2e4b58a9c61f0e2d7b34a5c8e9f01b2c3d4e5f60718293a4b5c6d7e")).toBe(
      "3f9a1c07…4b5c6d7e",
    );
    expect(shortFingerprint("AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89")).toBe("ABCDEF01…23456789");
    expect(toBigInt(1.5)).toBeNull();
  });
});
