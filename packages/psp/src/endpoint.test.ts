import { describe, expect, it } from "vitest";
import { isValidHost, parseEndpoint } from "./endpoint.ts";

describe("parseEndpoint", () => {
  it("reads host names, IPv4 and bracketed IPv6 with their port", () => {
    expect(parseEndpoint("127.0.0.1:7801")).toEqual({ ok: true, host: "127.0.0.1", port: 7801 });
    expect(parseEndpoint("tote-7.example.com:65535")).toEqual({
      ok: true,
      host: "tote-7.example.com",
      port: 65535,
    });
    expect(parseEndpoint("[::1]:7802")).toEqual({ ok: true, host: "::1", port: 7802 });
  });

  it("port 0 only where the caller allows it (a listener), never for a peer's address", () => {
    expect(parseEndpoint("127.0.0.1:0")).toEqual({ ok: false, reason: "the port must be 1..65535" });
    expect(parseEndpoint("127.0.0.1:0", { allowPortZero: true })).toEqual({
      ok: true,
      host: "127.0.0.1",
      port: 0,
    });
  });

  it("refuses each kind of mistake with its own reason", () => {
    const reason = (t: string) => {
      const r = parseEndpoint(t);
      return r.ok ? "accepted" : r.reason;
    };
    expect(reason("127.0.0.1")).toBe("must be host:port");
    expect(reason("::1:7801")).toBe("must be host:port (IPv6 addresses go in brackets: [::1]:7801)");
    expect(reason("[not-v6]:7801")).toBe("the address in brackets is not an IPv6 address");
    expect(reason("300.1.1.1:7801")).toBe("the host is not a host name or IPv4 address");
    expect(reason("-bad-.example:7801")).toBe("the host is not a host name or IPv4 address");
    expect(reason("127.0.0.1:70000")).toBe("the port must be 1..65535");
    expect(reason("127.0.0.1:0080")).toBe("the port must be 1..65535");
    expect(reason("127.0.0.1:")).toBe("must be host:port");
    expect(reason("")).toBe("must be host:port");
  });

  it("isValidHost: names and addresses, not dotted typos", () => {
    expect(isValidHost("example.com")).toBe(true);
    expect(isValidHost("10.0.0.1")).toBe(true);
    expect(isValidHost("fe80::1")).toBe(true);
    expect(isValidHost("10.0.0.256")).toBe(false);
    expect(isValidHost("a_b")).toBe(false);
  });
});
