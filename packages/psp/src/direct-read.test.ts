import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  DIRECT_READ_LIMITS,
  decodeDirectReadReply,
  decodeDirectReadRequest,
  directReadPayload,
  encodeDirectReadBody,
  encodeDirectReadReply,
} from "./direct-read.ts";
import { encodeValue } from "./message-codec.ts";

/** The direct read's payloads (direct-read.ts): what a hostile commander may put in a request. */

const HASH = new Uint8Array(32).fill(3);
const CAP = new Uint8Array(200).fill(1);
const code = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return "accepted";
};

describe("direct read request", () => {
  it("round-trips the capability, grant hash, view, params and row", () => {
    const body = encodeDirectReadBody({
      grantHash: HASH,
      view: "position",
      params: { as_of: "2026-10-31", n: 3, flag: true, list: [1, "a"] },
      row: "acct-1",
    });
    const r = decodeDirectReadRequest(directReadPayload(CAP, body));
    expect([...r.capability]).toEqual([...CAP]);
    expect([...r.grantHash]).toEqual([...HASH]);
    expect(r.view).toBe("position");
    expect(r.params).toEqual({ as_of: "2026-10-31", n: 3, flag: true, list: [1, "a"] });
    expect(r.row).toBe("acct-1");
    expect(
      decodeDirectReadRequest([
        CAP,
        encodeDirectReadBody({ grantHash: HASH, view: "v", params: {}, row: null }),
      ]).row,
    ).toBeNull();
  });

  it.each([
    ["one segment", () => [CAP]],
    ["three segments", () => [CAP, encodeValue([HASH, "v", {}, null]), CAP]],
    ["an empty capability", () => [new Uint8Array(0), encodeValue([HASH, "v", {}, null])]],
    [
      "a capability over 8 KiB",
      () => [new Uint8Array(DIRECT_READ_LIMITS.maxCapabilityBytes + 1), encodeValue([HASH, "v", {}, null])],
    ],
    [
      "a body over 16 KiB",
      () => [CAP, encodeValue([HASH, "v", { p: "x".repeat(DIRECT_READ_LIMITS.maxBodyBytes) }, null])],
    ],
    [
      "a body nested deeper than 16",
      () => {
        let deep: unknown = 1;
        for (let i = 0; i < 20; i++) deep = [deep];
        return [CAP, encodeValue([HASH, "v", { deep }, null])];
      },
    ],
    ["a body that is not an array", () => [CAP, encodeValue({ grantHash: HASH })]],
    ["a body of three items", () => [CAP, encodeValue([HASH, "v", {}])]],
    ["a grant hash of 31 bytes", () => [CAP, encodeValue([HASH.subarray(0, 31), "v", {}, null])]],
    ["a grant hash that is text", () => [CAP, encodeValue(["h".repeat(32), "v", {}, null])]],
    ["an empty view name", () => [CAP, encodeValue([HASH, "", {}, null])]],
    ["a view name of 129 characters", () => [CAP, encodeValue([HASH, "v".repeat(129), {}, null])]],
    ["params that are an array", () => [CAP, encodeValue([HASH, "v", [1], null])]],
    ["params that are bytes", () => [CAP, encodeValue([HASH, "v", new Uint8Array(3), null])]],
    ["a row that is a number", () => [CAP, encodeValue([HASH, "v", {}, 7])]],
    ["a body that is not CBOR", () => [CAP, new Uint8Array([0xff, 0x00])]],
    ["a body with a Date", () => [CAP, encodeValue([HASH, "v", { d: new Date(0) }, null])]],
  ])("refuses %s with PSP_ERR_MESSAGE_MALFORMED", (_name, payload) => {
    expect(code(() => decodeDirectReadRequest(payload()))).toBe("PSP_ERR_MESSAGE_MALFORMED");
  });

  it("never throws anything but a typed refusal on arbitrary bytes (property)", () => {
    const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
    console.log(`fast-check seed ${seed} (set FC_SEED to replay)`);
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 300 }),
        fc.uint8Array({ minLength: 1, maxLength: 64 }),
        (body, cap) => {
          const c = code(() => decodeDirectReadRequest([cap, body]));
          expect(["accepted", "PSP_ERR_MESSAGE_MALFORMED"]).toContain(c);
        },
      ),
      { seed, numRuns: 3000 },
    );
  });
});

describe("direct read reply", () => {
  it("is exactly the Arrow stream and the receipt", () => {
    const arrow = new Uint8Array([1, 2]);
    const receipt = new Uint8Array([3]);
    expect(decodeDirectReadReply(encodeDirectReadReply({ arrow, receipt }))).toEqual({ arrow, receipt });
    expect(code(() => decodeDirectReadReply([arrow]))).toBe("PSP_ERR_MESSAGE_MALFORMED");
    expect(code(() => decodeDirectReadReply([arrow, receipt, arrow]))).toBe("PSP_ERR_MESSAGE_MALFORMED");
  });
});
