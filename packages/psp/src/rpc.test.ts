import { RpcTarget } from "capnweb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createIdentity, type Identity } from "./identity.ts";
import type { PspLink } from "./link.ts";
import { decodeResult, encodeResult } from "./result.ts";
import { openCommander, serveSubject } from "./rpc.ts";
import { connectPsp, listenPsp, type PspServer } from "./tls.ts";

// A miniature subject with the shape the Totebox has: authorize → view → read.
let executed = 0;
class View extends RpcTarget {
  readonly #name: string;
  constructor(name: string) {
    super();
    this.#name = name;
  }
  read(cap: Uint8Array) {
    executed++;
    return {
      view: this.#name,
      capBytes: cap.byteLength,
      arrow: encodeResult(
        [
          { name: "k", type: "string" },
          { name: "v", type: "integer" },
        ],
        [
          ["a", 1],
          ["b", 2],
        ],
      ),
    };
  }
}
class Session extends RpcTarget {
  view(name: string) {
    return new View(name);
  }
}
class Main extends RpcTarget {
  authorize(grant: Uint8Array) {
    if (grant.byteLength === 0)
      throw Object.assign(new Error("empty grant"), { code: "PSP_ERR_CAP_MALFORMED" });
    return new Session();
  }
  fail() {
    throw Object.assign(new Error("boom with secret path /etc/x"), {
      cause: new Error("sql: SELECT secret"),
    });
  }
}

interface MainApi {
  authorize(grant: Uint8Array): SessionApi;
  fail(): Promise<void>;
}
interface SessionApi {
  view(name: string): ViewApi;
}
interface ViewApi {
  read(cap: Uint8Array): { view: string; capBytes: number; arrow: Uint8Array };
}

describe("capnweb over PSP links", () => {
  let subjectId: Identity;
  let commanderId: Identity;
  let server: PspServer;
  const serverLinks: PspLink[] = [];

  beforeAll(async () => {
    [subjectId, commanderId] = await Promise.all([
      createIdentity({ name: "subject" }),
      createIdentity({ name: "commander" }),
    ]);
    server = await listenPsp({
      identity: subjectId,
      role: "subject",
      authorize: (p) =>
        p.fingerprint === commanderId.fingerprint
          ? { ok: true, label: "commander" }
          : { ok: false, code: "PSP_ERR_PEER_UNKNOWN", reason: "unknown" },
      onLink: (link) => {
        serverLinks.push(link);
        serveSubject(link, new Main());
      },
    });
  });
  afterAll(async () => {
    await server.close();
  });

  const connect = () =>
    connectPsp({
      identity: commanderId,
      role: "commander",
      host: "127.0.0.1",
      port: server.address.port,
      expect: subjectId.fingerprint,
    });

  it("a chain of three dependent calls costs one round trip", async () => {
    const link = await connect();
    const api = openCommander<MainApi>(link);
    // Record the order in which frames cross the link, as seen from the commander.
    const trace: string[] = [];
    link.on("frame-out", (kind, _bytes, n) => trace.push(`out:${kind}:${n}`));
    link.on("frame-in", (f) => trace.push(`in:${f.kind}`));

    const before = executed;
    const result = await api
      .authorize(new Uint8Array([1, 2, 3]))
      .view("position")
      .read(new Uint8Array(64));
    expect(result.view).toBe("position");
    expect(executed).toBe(before + 1);

    // Everything the commander needed to send left in ONE frame before anything came back, and
    // one frame came back with the answer: one round trip.
    const firstIn = trace.findIndex((t) => t.startsWith("in:"));
    const outBeforeAnswer = trace.slice(0, firstIn).filter((t) => t.startsWith("out:"));
    // push, push, push and pull all left before anything came back (capnweb sends the pull one
    // microtask after the pushes, so they may straddle two frames; neither waited on the peer).
    const sent = outBeforeAnswer.reduce((n, t) => n + Number(t.split(":")[2]), 0);
    expect(sent).toBe(4);
    expect(outBeforeAnswer.length).toBeLessThanOrEqual(2);
    // Exactly one frame came back, carrying the answer.
    expect(trace.filter((t) => t.startsWith("in:"))).toEqual(["in:1"]);
    const decoded = decodeResult(result.arrow);
    expect(decoded.rows()).toEqual([
      { k: "a", v: 1 },
      { k: "b", v: 2 },
    ]);
    link.close();
  });

  it("sequential calls cost one round trip each", async () => {
    const link = await connect();
    const api = openCommander<MainApi>(link);
    let roundTrips = 0;
    let waiting = false;
    link.on("frame-out", () => {
      waiting = true;
    });
    link.on("frame-in", () => {
      if (waiting) roundTrips++;
      waiting = false;
    });
    const session = await api.authorize(new Uint8Array([1]));
    const view = await session.view("position");
    await view.read(new Uint8Array(1));
    expect(roundTrips).toBe(3);
    link.close();
  });

  it("errors cross the link with their code and nothing else", async () => {
    const link = await connect();
    const api = openCommander<MainApi>(link);
    await expect(api.authorize(new Uint8Array(0))).rejects.toMatchObject({ code: "PSP_ERR_CAP_MALFORMED" });
    const err = (await api.fail().then(
      () => undefined,
      (e: unknown) => e,
    )) as Error & { code?: string };
    expect(err.code).toBe("PSP_ERR_INTERNAL");
    expect(String(err.message)).not.toContain("/etc/x");
    expect(JSON.stringify(err)).not.toContain("SELECT");
    expect(err.cause).toBeUndefined();
    link.close();
  });
});
