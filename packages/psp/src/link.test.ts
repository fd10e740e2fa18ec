import net from "node:net";
import { RpcTarget } from "capnweb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeFrame, FrameKind } from "./frame-codec.ts";
import { createIdentity, type Identity } from "./identity.ts";
import type { PspLimits } from "./limits.ts";
import type { PspLink } from "./link.ts";
import { openCommander, serveSubject } from "./rpc.ts";
import { ManualScheduler } from "./scheduler.ts";
import { closedWith, rawConnect } from "./test-peers.ts";
import { connectPsp, listenPsp, type PspServer } from "./tls.ts";

class Api extends RpcTarget {
  echo(x: unknown) {
    return x;
  }
  self() {
    return this;
  }
  hang() {
    return new Promise(() => {});
  }
}
interface ApiT {
  echo(x: unknown): Promise<unknown>;
  self(): ApiT;
  hang(): Promise<void>;
  // (remote calls return promises)
}

async function nextTurns(n = 50) {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

let subjectId: Identity;
let commanderId: Identity;
beforeAll(async () => {
  [subjectId, commanderId] = await Promise.all([
    createIdentity({ name: "s" }),
    createIdentity({ name: "c" }),
  ]);
});

async function subjectServer(limits: Partial<PspLimits>, scheduler?: ManualScheduler) {
  const links: PspLink[] = [];
  const server = await listenPsp({
    identity: subjectId,
    role: "subject",
    limits,
    ...(scheduler ? { scheduler } : {}),
    authorize: () => ({ ok: true, label: "c" }),
    onLink: (l) => {
      links.push(l);
      serveSubject(l, new Api());
    },
  });
  const nextLink = async (before: number) => {
    for (let i = 0; i < 1_000_000 && links.length <= before; i++) await new Promise((r) => setImmediate(r));
    return links[links.length - 1]!;
  };
  return { server, links, nextLink };
}

/** A commander link to a test subject server (real TLS on loopback), with optional link settings. */
function commanderTo(port: number, extra: Partial<Parameters<typeof connectPsp>[0]> = {}): Promise<PspLink> {
  return connectPsp({
    identity: commanderId,
    role: "commander",
    host: "127.0.0.1",
    port,
    expect: subjectId.fingerprint,
    ...extra,
  });
}

describe("limits break only the offending link", () => {
  let s: Awaited<ReturnType<typeof subjectServer>>;
  beforeAll(async () => {
    s = await subjectServer({ maxFrameBytes: 64 * 1024, maxCallsInFlight: 8, maxPipelineDepth: 3 });
  });
  afterAll(() => s.server.close());

  /** Connects a commander and returns its link along with the server's end of it. */
  const goodCommander = async () => {
    const before = s.links.length;
    const link = await commanderTo(s.server.address.port);
    const serverLink = await s.nextLink(before);
    return { link, api: openCommander<ApiT>(link), serverLink };
  };

  it("an oversized frame closes that link with PSP_ERR_FRAME_TOO_LARGE; a neighbour keeps working", async () => {
    const good = await goodCommander();
    const before = s.links.length;
    const peer = await rawConnect(commanderId, s.server.address.port);
    const link = await s.nextLink(before);
    peer.sendMessages([["push", ["pipeline", 0, ["echo"], [["bytes", new Uint8Array(100 * 1024)]]]]]);
    expect((await closedWith(link))?.code).toBe("PSP_ERR_FRAME_TOO_LARGE");
    expect(await good.api.echo("still here")).toBe("still here");
    good.link.close();
  });

  it("too many calls in flight closes the link with PSP_ERR_CALLS_IN_FLIGHT", async () => {
    const { link: cl, api, serverLink: link } = await goodCommander();
    const pending = Array.from({ length: 9 }, () => api.hang());
    for (const p of pending) (p as Promise<void>).catch(() => {});
    expect((await closedWith(link))?.code).toBe("PSP_ERR_CALLS_IN_FLIGHT");
    cl.close();
  });

  it("a pipelined chain deeper than the limit closes the link with PSP_ERR_PIPELINE_DEPTH", async () => {
    const { link: cl, api, serverLink: link } = await goodCommander();
    // depth 3 is allowed
    expect(await api.self().self().echo(1)).toBe(1);
    const p = api.self().self().self().echo(1);
    p.catch(() => {});
    expect((await closedWith(link))?.code).toBe("PSP_ERR_PIPELINE_DEPTH");
    cl.close();
  });

  it("released calls no longer count as in flight", async () => {
    const { link: cl, api, serverLink: link } = await goodCommander();
    for (let i = 0; i < 40; i++) expect(await api.echo(i)).toBe(i);
    await nextTurns();
    expect(link.closed).toBe(false);
    expect(link.callsInFlight).toBeLessThanOrEqual(1);
    cl.close();
  });
});

describe("idle timeout (driven by a manual clock, no sleeping)", () => {
  it("a peer that trickles bytes without completing a frame is closed with PSP_ERR_IDLE_TIMEOUT", async () => {
    const clock = new ManualScheduler();
    const s = await subjectServer({ idleTimeoutMs: 30_000 }, clock);
    const before = s.links.length;
    const peer = await rawConnect(commanderId, s.server.address.port);
    const link = await s.nextLink(before);
    const frame = Buffer.concat(encodeFrame(FrameKind.Ping));
    peer.sendRaw(frame.subarray(0, 3)); // a frame that never completes
    await nextTurns();
    clock.advance(29_000);
    expect(link.closed).toBe(false);
    peer.sendRaw(frame.subarray(3, 5)); // more trickled bytes do not count as activity
    await nextTurns();
    clock.advance(1_000);
    const err = await closedWith(link);
    expect(err?.code).toBe("PSP_ERR_IDLE_TIMEOUT");
    expect(err?.detail?.midFrame).toBe(true);
    await s.server.close();
  });

  it("a commander pings a quiet link and the subject's pong keeps it open", async () => {
    const clock = new ManualScheduler();
    const s = await subjectServer({ idleTimeoutMs: 30_000, pingIntervalMs: 10_000 }, clock);
    const link = await commanderTo(s.server.address.port, {
      limits: { idleTimeoutMs: 30_000, pingIntervalMs: 10_000 },
      scheduler: clock,
    });
    for (let i = 0; i < 10; i++) {
      const framesIn = link.stats.framesIn;
      // Wait on the event itself (the pong arriving), not on a number of loop turns.
      const pong = new Promise((r) => link.once("frame-in", r));
      clock.advance(10_000);
      await pong;
      expect(link.stats.framesIn).toBe(framesIn + 1);
    }
    expect(link.closed).toBe(false);
    expect(s.links[0]!.closed).toBe(false);
    link.close();
    await s.server.close();
  });
});

describe("idle timeout", () => {
  it("closes a link exactly idleTimeoutMs after its last complete frame, however often frames came", async () => {
    const clock = new ManualScheduler();
    const s = await subjectServer({ idleTimeoutMs: 45_000 }, clock);
    const before = s.links.length;
    // The commander keeps real time (it would ping only after 15 s of real silence).
    const link = await commanderTo(s.server.address.port);
    const server = await s.nextLink(before);
    const api = openCommander<ApiT>(link);
    clock.advance(20_000);
    expect(await api.echo(1)).toBe(1); // the subject's last frame in arrives at t = 20 s
    const closed = closedWith(server);
    clock.advance(25_000); // t = 45 s: the link's first timer fires, 25 s after that frame
    expect(server.closed).toBe(false);
    clock.advance(19_999); // t = 64.999 s
    expect(server.closed).toBe(false);
    clock.advance(1); // t = 65 s = last frame + 45 s
    expect((await closed)?.code).toBe("PSP_ERR_IDLE_TIMEOUT");
    link.close();
    await s.server.close();
  });
});

describe("TLS and pinning", () => {
  let server: PspServer;
  const refusals: { code: string; reason: string }[] = [];
  let stranger: Identity;
  beforeAll(async () => {
    stranger = await createIdentity({ name: "stranger" });
    server = await listenPsp({
      identity: subjectId,
      role: "subject",
      authorize: (p) =>
        p.fingerprint === commanderId.fingerprint
          ? { ok: true, label: "c" }
          : {
              ok: false,
              code: "PSP_ERR_PEER_UNKNOWN",
              reason: "certificate is not paired with this Totebox",
            },
      onLink: (l) => serveSubject(l, new Api()),
      onRefused: (e) => refusals.push(e),
      limits: { handshakeTimeoutMs: 300 },
    });
  });
  afterAll(() => server.close());

  it("an unknown client certificate is refused and the server logs why", async () => {
    const n = refusals.length;
    const link = await connectPsp({
      identity: stranger,
      role: "commander",
      host: "127.0.0.1",
      port: server.address.port,
      expect: subjectId.fingerprint,
    });
    await closedWith(link);
    expect(refusals[n]).toMatchObject({ code: "PSP_ERR_PEER_UNKNOWN" });
    expect(refusals[n]!.reason).toContain("not paired");
  });

  it("a client pinning another fingerprint refuses the server before any application byte", async () => {
    const clientRefusals: { code: string }[] = [];
    await expect(
      connectPsp({
        identity: commanderId,
        role: "commander",
        host: "127.0.0.1",
        port: server.address.port,
        expect: stranger.fingerprint,
        onRefused: (e) => clientRefusals.push(e),
      }),
    ).rejects.toMatchObject({ code: "PSP_ERR_PEER_PIN" });
    expect(clientRefusals[0]?.code).toBe("PSP_ERR_PEER_PIN");
  });

  it("a client without a certificate is refused with PSP_ERR_PEER_NO_CERT", async () => {
    const n = refusals.length;
    const tls = await import("node:tls");
    const sock = tls.connect({ host: "127.0.0.1", port: server.address.port, rejectUnauthorized: false });
    await new Promise<void>((r) => {
      sock.on("close", () => r());
      sock.on("error", () => r());
    });
    expect(refusals.slice(n), JSON.stringify(refusals.slice(n))).toContainEqual(
      expect.objectContaining({ code: "PSP_ERR_PEER_NO_CERT" }),
    );
  });

  it("a TLS 1.2-only client is refused during the handshake", async () => {
    const n = refusals.length;
    const tls = await import("node:tls");
    const sock = tls.connect({
      host: "127.0.0.1",
      port: server.address.port,
      key: commanderId.keyPem,
      cert: commanderId.certPem,
      rejectUnauthorized: false,
      maxVersion: "TLSv1.2",
    });
    const err = await new Promise<Error | undefined>((r) => {
      sock.on("secureConnect", () => r(undefined));
      sock.on("error", (e) => r(e));
    });
    expect(err).toBeDefined();
    expect(refusals[n]).toMatchObject({ code: "PSP_ERR_TLS_HANDSHAKE" });
  });

  it("a client that never completes the handshake is dropped with PSP_ERR_TLS_TIMEOUT", async () => {
    const n = refusals.length;
    const sock = net.connect(server.address.port, "127.0.0.1");
    await new Promise<void>((r) => sock.on("close", () => r()));
    expect(refusals[n]).toMatchObject({ code: "PSP_ERR_TLS_TIMEOUT" });
  });
});

describe("the sender splits batches to fit the receiver's limits", () => {
  it("200 calls carrying attachments in one turn travel in several frames, none over the segment limit", async () => {
    const s = await subjectServer({});
    const link = await commanderTo(s.server.address.port);
    const api = openCommander<ApiT>(link);
    let frames = 0;
    link.on("frame-out", () => frames++);
    const payload = new Uint8Array(1024).fill(3);
    const answers = await Promise.all(Array.from({ length: 200 }, () => api.echo(payload)));
    expect(answers).toHaveLength(200);
    expect((answers[199] as Uint8Array).byteLength).toBe(1024);
    expect(frames).toBeGreaterThanOrEqual(4); // 200 attachments / 63 per frame
    expect(link.closed).toBe(false);
    link.close();
    await s.server.close();
  });
});

describe("a flush that throws (a bug on our own side)", () => {
  it("closes only its own link with PSP_ERR_INTERNAL; a link flushed in the same turn still sends", async () => {
    const s = await subjectServer({});
    const bad = await commanderTo(s.server.address.port);
    const good = await commanderTo(s.server.address.port);
    const api = openCommander<ApiT>(good);
    // Passes the Diode check (a pull's body is only read when it is a number) but throws while
    // the frame is being built: the encoder reads the property.
    const poison = Object.defineProperty({}, "x", {
      enumerable: true,
      get() {
        throw new Error("boom");
      },
    });
    bad.send(["pull", poison]); // queued first in the shared flush...
    const answer = api.echo("after"); // ...and this one after it, in the same turn
    expect((await closedWith(bad))?.code).toBe("PSP_ERR_INTERNAL");
    expect(await answer).toBe("after");
    expect(good.closed).toBe(false);
    good.close();
    await s.server.close();
  });
});

describe("release-only frames wait for company", () => {
  it("a release rides with the next call, or leaves alone after releaseDelayMs", async () => {
    const s = await subjectServer({});
    const sched = new ManualScheduler();
    const before = s.links.length;
    const link = await commanderTo(s.server.address.port, {
      scheduler: sched,
      limits: { releaseDelayMs: 1_000 },
    });
    const server = await s.nextLink(before);
    const api = openCommander<ApiT>(link);
    const kinds: number[] = [];
    link.on("frame-out", (_k, _b, messages) => kinds.push(messages));

    // A pipelined stub whose answer has been used: disposing it queues capnweb `release`s.
    const self = api.self();
    expect(await self.echo(1)).toBe(1);
    (self as unknown as Disposable)[Symbol.dispose]();
    await nextTurns();
    const framesAfterAnswer = kinds.length;
    // Nothing left yet: the subject still counts the pipelined call as in flight.
    expect(server.callsInFlight).toBeGreaterThan(0);

    // The next call carries the waiting releases in its own frame.
    expect(await api.echo(2)).toBe(2);
    expect(kinds.length).toBe(framesAfterAnswer + 1);
    expect(kinds[kinds.length - 1]).toBeGreaterThan(2); // push + pull + the releases
    await nextTurns();

    // With no call to ride along, the releases leave on their own once the delay is over.
    const again = api.self();
    expect(await again.echo(3)).toBe(3);
    (again as unknown as Disposable)[Symbol.dispose]();
    await nextTurns();
    const waiting = kinds.length;
    sched.advance(999);
    await nextTurns();
    expect(kinds.length).toBe(waiting);
    sched.advance(1);
    await nextTurns();
    expect(kinds.length).toBe(waiting + 1);
    for (let i = 0; i < 1_000 && server.callsInFlight > 0; i++) await nextTurns(1);
    expect(server.callsInFlight).toBe(0);
    link.close();
    await s.server.close();
  });
});
