import { RpcTarget } from "capnweb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PspError } from "./errors.ts";
import { encodeFrame, FrameKind } from "./frame-codec.ts";
import { createIdentity, type Identity } from "./identity.ts";
import type { PspLink } from "./link.ts";
import { openCommander, serveSubject } from "./rpc.ts";
import { closedWith, hostileSubjectLink, type RawPeer, rawConnect } from "./test-peers.ts";
import { connectPsp, listenPsp, type PspServer } from "./tls.ts";

class Echo extends RpcTarget {
  echo(x: unknown) {
    return x;
  }
  session() {
    return new Echo();
  }
}
interface EchoApi {
  echo(x: unknown): unknown;
  session(): EchoApi;
}

let subjectId: Identity;
let commanderId: Identity;
beforeAll(async () => {
  [subjectId, commanderId] = await Promise.all([
    createIdentity({ name: "s" }),
    createIdentity({ name: "c" }),
  ]);
});

/** Resolves with the error a link closed with. */

describe("Diode: a subject that tries to command is cut off", () => {
  // A scripted hostile Totebox: completes TLS properly, then plays `script` to the commander.
  const hostileSubject = (script: (peer: RawPeer) => void | Promise<void>) =>
    hostileSubjectLink({ subject: subjectId, commander: commanderId, script });

  it.each([
    ["sends a call (push)", [["push", ["pipeline", 0, ["steal"], []]]]],
    ["sends a pull", [["pull", 1]]],
    ["answers a call it was never sent", [["resolve", 1, "forged answer"]]],
    ["rejects a call it was never sent", [["reject", 7, ["error", "Error", "x"]]]],
    ["releases something it was never given", [["release", 0, 1]]],
    ["opens a stream toward the commander", [["stream", ["pipeline", 0, ["w"], []]]]],
    ["opens a pipe", [["pipe"]]],
  ])("%s", async (_name, messages) => {
    const h = await hostileSubject((peer) => peer.sendMessages(messages as unknown[]));
    const err = await closedWith(h.link);
    expect(err?.code).toBe("PSP_ERR_DIODE");
    expect(h.violations).toHaveLength(1);
    expect(h.violations[0]?.detail?.offender).toBe("peer");
    await h.close();
  });

  it("sends an unsolicited ping", async () => {
    const h = await hostileSubject((peer) => peer.sendFrameParts(encodeFrame(FrameKind.Ping)));
    expect((await closedWith(h.link))?.code).toBe("PSP_ERR_DIODE");
    await h.close();
  });

  it("answers a real call twice", async () => {
    const h = await hostileSubject(async (peer) => {
      // Wait for the commander's push + pull, answer it, then answer it again.
      let pulled: number | undefined;
      while (pulled === undefined) {
        const f = await peer.nextFrame();
        for (const m of f.messages as unknown[][]) if (m[0] === "pull") pulled = m[1] as number;
      }
      peer.sendMessages([["resolve", pulled, "one"]]);
      peer.sendMessages([["resolve", pulled, "two"]]);
    });
    const api = openCommander<EchoApi>(h.link);
    expect(await api.echo("hi")).toBe("one");
    expect((await closedWith(h.link))?.code).toBe("PSP_ERR_DIODE");
    await h.close();
  });

  it("answers with a reference into the commander's (empty) export table", async () => {
    const h = await hostileSubject(async (peer) => {
      const f = await peer.nextFrame();
      const pull = (f.messages as unknown[][]).find((m) => m[0] === "pull") ?? [undefined, 1];
      peer.sendMessages([["resolve", pull[1], ["import", 0]]]);
    });
    const api = openCommander<EchoApi>(h.link);
    await expect(api.echo("hi")).rejects.toBeDefined();
    expect((await closedWith(h.link))?.code).toBe("PSP_ERR_DIODE");
    await h.close();
  });
});

describe("Diode: a commander that hands the subject something callable is cut off", () => {
  let server: PspServer;
  const serverLinks: PspLink[] = [];
  const violations: PspError[] = [];
  beforeAll(async () => {
    server = await listenPsp({
      identity: subjectId,
      role: "subject",
      authorize: () => ({ ok: true, label: "any" }),
      onLink: (link) => {
        serverLinks.push(link);
        link.on("violation", (e) => violations.push(e));
        serveSubject(link, new Echo());
      },
    });
  });
  afterAll(() => server.close());

  const lastServerLink = () => serverLinks[serverLinks.length - 1]!;

  it.each([
    ["a function or RpcTarget (export)", ["push", ["pipeline", 0, ["echo"], [["export", -1]]]]],
    ["a promise of its own", ["push", ["pipeline", 0, ["echo"], [["promise", -1]]]]],
    ["a writable stream", ["push", ["pipeline", 0, ["echo"], [["writable", -1]]]]],
    ["a callable nested in a map", ["push", ["pipeline", 0, ["echo"], [{ a: [[{ b: ["export", -2] }]] }]]]],
    ["a callable in an escaped array", ["push", ["pipeline", 0, ["echo"], [[[1, ["export", -3]]]]]]],
    ["a remap (map() captures can export)", ["push", ["remap", 0, [], [["export", -1]], []]]],
    ["an answer to something never asked", ["resolve", 1, "x"]],
    ["a stream", ["stream", ["pipeline", 0, ["echo"], [1]]]],
  ])("%s", async (_name, message) => {
    const before = violations.length;
    const linksBefore = serverLinks.length;
    const peer = await rawConnect(commanderId, server.address.port);
    const link = await waitFor(() => (serverLinks.length > linksBefore ? lastServerLink() : undefined));
    peer.sendMessages([message]);
    expect((await closedWith(link))?.code).toBe("PSP_ERR_DIODE");
    await peer.closed;
    expect(violations.length).toBe(before + 1);
  });

  it("an unsolicited pong", async () => {
    const linksBefore = serverLinks.length;
    const peer = await rawConnect(commanderId, server.address.port);
    const link = await waitFor(() => (serverLinks.length > linksBefore ? lastServerLink() : undefined));
    peer.sendFrameParts(encodeFrame(FrameKind.Pong));
    expect((await closedWith(link))?.code).toBe("PSP_ERR_DIODE");
  });

  it("our own commander refuses to send a callable, before it reaches the wire", async () => {
    const link = await connectPsp({
      identity: commanderId,
      role: "commander",
      host: "127.0.0.1",
      port: server.address.port,
      expect: subjectId.fingerprint,
    });
    const ownViolations: PspError[] = [];
    link.on("violation", (e) => ownViolations.push(e));
    const api = openCommander<EchoApi>(link);
    const framesBefore = link.stats.framesOut;
    const p = api.echo(() => "callback");
    await expect(p).rejects.toBeDefined();
    expect(ownViolations[0]?.detail?.offender).toBe("self");
    expect(link.stats.framesOut).toBe(framesBefore);
  });

  it("a well-behaved commander is served, and may call objects the subject returns", async () => {
    const link = await connectPsp({
      identity: commanderId,
      role: "commander",
      host: "127.0.0.1",
      port: server.address.port,
      expect: subjectId.fingerprint,
    });
    const api = openCommander<EchoApi>(link);
    expect(await api.session().echo({ n: 1, b: new Uint8Array([1, 2]) })).toEqual({
      n: 1,
      b: new Uint8Array([1, 2]),
    });
    link.close();
  });
});

/** Polls a synchronous condition across event-loop turns (no timers): for state set by I/O callbacks. */
async function waitFor<T>(get: () => T | undefined): Promise<T> {
  for (let i = 0; i < 1_000_000; i++) {
    const v = get();
    if (v !== undefined) return v;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error("condition never held");
}
