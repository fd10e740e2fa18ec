import { isIPv4, isIPv6 } from "node:net";

/**
 * Where a PSP peer listens, as people write it: `host:port` or `[ipv6]:port`. One parser for the
 * registry (fleet.yaml addresses, reported with line and column) and the command lines
 * (`--listen`, `--address`), so that what one accepts the other does too.
 */
export interface Endpoint {
  readonly host: string;
  readonly port: number;
}

export type EndpointParse =
  | ({ readonly ok: true } & Endpoint)
  | { readonly ok: false; readonly reason: string };

const DNS_NAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
/** Decimal without leading zeros: "0080" is a typo, not port 80. */
const PORT = /^(?:0|[1-9][0-9]{0,4})$/;

/** A DNS name, an IPv4 or an IPv6 address (bare, without brackets). */
export function isValidHost(host: string): boolean {
  if (isIPv4(host) || isIPv6(host)) return true;
  // Something that looks like a dotted number but is not a valid IPv4 address is a typo, not a name.
  if (/^[0-9.]+$/.test(host)) return false;
  return DNS_NAME.test(host);
}

/**
 * Parses `host:port` or `[ipv6]:port`; the reason, when it is not one, is written for a person.
 * `allowPortZero`: port 0 means "the system picks one", which a listener may ask for and a peer's
 * address may not.
 */
export function parseEndpoint(
  text: string,
  options: { readonly allowPortZero?: boolean } = {},
): EndpointParse {
  let host: string;
  let portText: string;
  const v6 = /^\[([^\]]{1,64})\]:([0-9]{1,5})$/.exec(text);
  if (v6 !== null) {
    host = v6[1]!;
    portText = v6[2]!;
    if (!isIPv6(host)) return { ok: false, reason: "the address in brackets is not an IPv6 address" };
  } else {
    const plain = /^([^:[\]]{1,253}):([0-9]{1,5})$/.exec(text);
    if (plain === null) {
      const hint = isIPv6(text.replace(/:[0-9]{1,5}$/, ""))
        ? " (IPv6 addresses go in brackets: [::1]:7801)"
        : "";
      return { ok: false, reason: `must be host:port${hint}` };
    }
    host = plain[1]!;
    portText = plain[2]!;
    if (!isValidHost(host)) return { ok: false, reason: "the host is not a host name or IPv4 address" };
  }
  const port = Number(portText);
  const min = options.allowPortZero ? 0 : 1;
  if (!PORT.test(portText) || port < min || port > 65535) {
    return { ok: false, reason: `the port must be ${min}..65535` };
  }
  return { ok: true, host, port };
}
