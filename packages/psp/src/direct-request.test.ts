import { RpcTarget } from "capnweb";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { PspError } from "./errors.ts";
import { encodeFrame, FrameKind } from "./frame-codec.ts";
import { createIdentity, type Identity } from "./identity.ts";
import type { PspLimits } from "./limits.ts";
import type { DirectRequestHandler, PspLink, ReplySink } from "./link.ts";
import { decodeValue, encodeValue } from "./message-codec.ts";
import { openCommander, serveSubject } from "./rpc.ts";
import { closedWith, hostileSubjectLink, type RawPeer, rawConnect, rawListen } from "./test-peers.ts";
import { connectPsp, listenPsp, type PspServer } from "./tls.ts";

/**
 * Direct requests (link.ts `request` / `serveRequests`, FrameKind.Request / Reply): one call and
 * its answer outside capnweb, fenced by the same Diode. Real TLS links on loopback; hostile peers
 * are scripted raw peers that send exactly the frames an attacker would.
 */

class Api extends RpcTarget {
  echo(x: unknown) {
    return x;
  }
  hang() {
    return new Promise(() => {});
  }
}
interface ApiT {
  echo(x: unknown): Promise<unknown>;
  hang(): Promise<void>;
}

let subjectId: Identity;
let commanderId: Identity;
beforeAll(async () => {
  [subjectId, commanderId] = await Promise.all([
    createIdentity({ name: "s" }),
    createIdentity({ name: "c" }),
  ]);
});

/** 0..n-1 shuffled by a seeded xorshift32 (Fisher-Yates): the same order on every run. */
function seededOrder(n: number, seed: number): number[] {
  let x = seed;
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const j = (x >>> 0) % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/** A request's rejection, as the caller sees it. */
async function rejectionOf(p: Promise<unknown>): Promise<Error & { code?: string; detail?: unknown }> {
  try {
    await p;
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error("expected the request to be refused");
}

/** A subject server whose links serve `handler` (none: no handler registered). */
async function subjectServer(handler: DirectRequestHandler | undefined, limits: Partial<PspLimits> = {}) {
  const links: PspLink[] = [];
  const server = await listenPsp({
    identity: subjectId,
    role: "subject",
    limits,
    authorize: () => ({ ok: true, label: "c" }),
    onLink: (l) => {
      links.push(l);
      serveSubject(l, new Api());
      if (handler) l.serveRequests(handler);
    },
  });
  const connect = () =>
    connectPsp({
      identity: commanderId,
      role: "commander",
      host: "127.0.0.1",
      port: server.address.port,
      expect: subjectId.fingerprint,
    });
  return { server, links, connect };
}

function head(id: number, word: number): Uint8Array {
  const h = new Uint8Array(8);
  const v = new DataView(h.buffer);
  v.setUint32(0, id);
  v.setUint32(4, word);
  return h;
}

describe("direct requests between an honest commander and subject", () => {
  let servers: PspServer[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()));
    servers = [];
  });

  it("carry a method and payload down and the reply's segments back, 8-byte aligned", async () => {
    const seen: Array<{ method: number; payload: number[][] }> = [];
    const s = await subjectServer(async (method, payload) => {
      seen.push({ method, payload: payload.map((p) => [...p]) });
      return [new Uint8Array([1, 2, 3]), new Uint8Array(1000).fill(7), new Uint8Array(0)];
    });
    servers.push(s.server);
    const link = await s.connect();
    const reply = await link.request(42, [new Uint8Array([9, 8]), new Uint8Array([5])]);
    expect(seen).toEqual([{ method: 42, payload: [[9, 8], [5]] }]);
    expect(reply.map((r) => r.byteLength)).toEqual([3, 1000, 0]);
    expect([...reply[0]!]).toEqual([1, 2, 3]);
    expect(reply[1]!.every((b) => b === 7)).toBe(true);
    for (const r of reply) expect(r.byteOffset % 8).toBe(0);
    expect(link.stats.messagesOut).toBeGreaterThanOrEqual(1);
    link.close();
  });

  it("an error reply carries only the code, message and flat detail; the link stays up", async () => {
    let n = 0;
    const s = await subjectServer(async () => {
      n++;
      if (n === 1) {
        const e = new PspError("PSP_ERR_CAP_EXPIRED", "capability expired", { limit: 3 });
        throw e;
      }
      if (n === 2) throw new Error("SELECT secret FROM accounts failed at /srv/archive.db");
      if (n === 3) {
        // A handler that throws instead of rejecting.
        return (() => {
          throw new Error("sync boom");
        })();
      }
      return [new Uint8Array([n])];
    });
    servers.push(s.server);
    const link = await s.connect();
    const e1 = await rejectionOf(link.request(1, []));
    expect(e1.name).toBe("PspRemoteError");
    expect(e1.code).toBe("PSP_ERR_CAP_EXPIRED");
    expect(e1.message).toBe("capability expired");
    expect(e1.detail).toEqual({ limit: 3 });
    const e2 = await rejectionOf(link.request(1, []));
    expect(e2.code).toBe("PSP_ERR_INTERNAL");
    expect(e2.message).toBe("internal error");
    expect(JSON.stringify(e2)).not.toContain("secret");
    const e3 = await rejectionOf(link.request(1, []));
    expect(e3.code).toBe("PSP_ERR_INTERNAL");
    const ok = await link.request(1, []);
    expect([...ok[0]!]).toEqual([4]);
    expect(link.closed).toBe(false);
    link.close();
  });

  it("an honest subject's long error (an enum's whole list, say) is cut to the bounds, never costing its link", async () => {
    const s = await subjectServer(async () => {
      throw new PspError("PSP_ERR_CAP_SCOPE", `must be one of: ${"value, ".repeat(500)}`, {
        reason: "r".repeat(5000),
      });
    });
    servers.push(s.server);
    const link = await s.connect();
    const e = await rejectionOf(link.request(1, []));
    expect(e.code).toBe("PSP_ERR_CAP_SCOPE");
    expect(e.message).toHaveLength(1024);
    expect((e.detail as Record<string, string>).reason).toHaveLength(1024);
    expect(link.closed).toBe(false);
    link.close();
  });

  it("an answer larger than the frame limit is refused as that request's error; the link serves on", async () => {
    // A one-segment reply frame is 8 (header) + 8 (table) + 8 (head) + the segment: at a 16 KiB
    // limit, 16,360 bytes is the largest answer that fits.
    const s = await subjectServer(
      async (_m, payload) => [
        new Uint8Array(new DataView(payload[0]!.buffer, payload[0]!.byteOffset).getUint32(0)),
      ],
      {
        maxFrameBytes: 16 * 1024,
      },
    );
    servers.push(s.server);
    const link = await s.connect();
    const size = (n: number) => {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setUint32(0, n);
      return [b];
    };
    expect((await rejectionOf(link.request(1, size(16_368)))).code).toBe("PSP_ERR_FRAME_TOO_LARGE");
    expect((await link.request(1, size(16_360)))[0]!.byteLength).toBe(16_360);
    expect(s.links[0]!.closed).toBe(false);
    link.close();
  });

  it("a request whose queued capnweb messages cannot be sent fails with that reason instead of hanging", async () => {
    const s = await subjectServer(async () => []);
    servers.push(s.server);
    const link = await connectPsp({
      identity: commanderId,
      role: "commander",
      host: "127.0.0.1",
      port: s.server.address.port,
      expect: subjectId.fingerprint,
      limits: { maxFrameBytes: 16 * 1024 },
    });
    const api = openCommander<ApiT>(link);
    void api.echo(new Uint8Array(20 * 1024)).catch(() => {}); // queued: too large for one frame
    expect((await rejectionOf(link.request(1, []))).code).toBe("PSP_ERR_FRAME_TOO_LARGE");
    expect(link.closed).toBe(true);
  });

  it("an error reply leaves within bounds: long text cut, a body still too large cut to its code and message", async () => {
    const s = await subjectServer(async (_m, payload) => {
      const detail =
        payload[0]![0] === 1
          ? Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${i}`, "v".repeat(3000)]))
          : {};
      throw new PspError("PSP_ERR_CAP_SCOPE", "m".repeat(5000), detail as Record<string, string>);
    });
    servers.push(s.server);
    const peer = await rawConnect(commanderId, s.server.address.port);
    const replyTo = async (id: number, which: number) => {
      peer.sendFrameParts(encodeFrame(FrameKind.Request, [head(id, 1), new Uint8Array([which])]));
      for (;;) {
        const f = await peer.nextFrame();
        if (f.kind === FrameKind.Reply) return f.segments;
      }
    };
    const long = decodeValue((await replyTo(1, 0))[1]!, 4) as { code: string; message: string };
    expect(long.code).toBe("PSP_ERR_CAP_SCOPE");
    expect(long.message).toHaveLength(1024);
    const huge = await replyTo(2, 1);
    expect(huge[1]!.byteLength).toBeLessThanOrEqual(8 * 1024);
    const body = decodeValue(huge[1]!, 4) as Record<string, unknown>;
    expect(Object.keys(body).sort()).toEqual(["code", "message"]);
    expect(body.code).toBe("PSP_ERR_CAP_SCOPE");
    peer.socket.destroy();
  });

  it("a subject serving no direct requests refuses each with PSP_ERR_METHOD_UNKNOWN and keeps the link", async () => {
    const s = await subjectServer(undefined);
    servers.push(s.server);
    const link = await s.connect();
    const e = await rejectionOf(link.request(7, [new Uint8Array([1])]));
    expect(e.code).toBe("PSP_ERR_METHOD_UNKNOWN");
    const api = openCommander<ApiT>(link);
    expect(await api.echo("still up")).toBe("still up");
    link.close();
  });

  it("requests open at the subject count as calls in flight, together with capnweb calls", async () => {
    const never: DirectRequestHandler = () => new Promise(() => {});
    const s = await subjectServer(never, { maxCallsInFlight: 3 });
    servers.push(s.server);
    const link = await s.connect();
    const api = openCommander<ApiT>(link);
    void api.hang().catch(() => {});
    const pending = [link.request(1, []), link.request(1, [])];
    for (const p of pending) p.catch(() => {});
    // Three open: one capnweb call and two direct requests. The fourth is one too many.
    const fourth = link.request(1, []);
    fourth.catch(() => {});
    // The subject cuts the link and says why in its own log; the commander sees it close.
    await closedWith(link);
    expect((await closedWith(s.links[0]!))?.code).toBe("PSP_ERR_CALLS_IN_FLIGHT");
    // Every pending request fails with the close, none is left hanging.
    for (const p of [...pending, fourth]) expect((await rejectionOf(p)).code).toBe("PSP_ERR_LINK_CLOSED");
  });

  it("answered requests stop counting: many more requests than the limit, in turn, all succeed", async () => {
    const s = await subjectServer(async (_m, payload) => [payload[0]!], { maxCallsInFlight: 2 });
    servers.push(s.server);
    const link = await s.connect();
    for (let i = 0; i < 20; i++) {
      const r = await link.request(1, [new Uint8Array([i])]);
      expect(r[0]![0]).toBe(i);
    }
    expect(s.links[0]!.callsInFlight).toBe(0);
    link.close();
  });

  it("a request never overtakes capnweb messages queued before it", async () => {
    const frames: number[] = [];
    const server = await rawListen(subjectId, (peer) => {
      void (async () => {
        for (;;) {
          const f = await peer.nextFrame();
          frames.push(f.kind);
          if (f.kind === FrameKind.Request) break;
        }
      })();
    });
    const link = await connectPsp({
      identity: commanderId,
      role: "commander",
      host: "127.0.0.1",
      port: server.port,
      expect: subjectId.fingerprint,
    });
    const api = openCommander<ApiT>(link);
    void api.echo(1).catch(() => {}); // queued in the outbox until the end of this turn
    void link.request(1, []).catch(() => {});
    await new Promise<void>((r) => {
      const poll = () => (frames.length >= 2 ? r() : setImmediate(poll));
      poll();
    });
    expect(frames).toEqual([FrameKind.Messages, FrameKind.Request]);
    link.close();
    await server.close();
  });

  it("a request on a closed link is refused with the close error; pending ones fail when the link closes", async () => {
    const s = await subjectServer(() => new Promise(() => {}));
    servers.push(s.server);
    const link = await s.connect();
    const pending = link.request(1, []);
    pending.catch(() => {});
    link.close();
    expect((await rejectionOf(pending)).code).toBe("PSP_ERR_LINK_CLOSED");
    expect((await rejectionOf(link.request(1, []))).code).toBe("PSP_ERR_LINK_CLOSED");
  });

  it("a subject cannot send requests, and a commander cannot serve them", async () => {
    const s = await subjectServer(async () => []);
    servers.push(s.server);
    const link = await s.connect();
    expect(() => link.serveRequests(async () => [])).toThrow(RangeError);
    await link.request(1, []); // the subject's link now exists
    const subjectLink = s.links[0]!;
    const e = await rejectionOf(subjectLink.request(1, []));
    expect((e as PspError).code).toBe("PSP_ERR_DIODE");
    link.close();
  });
});

describe("Diode: a hostile subject's direct frames are refused and cut its link", () => {
  const hostileSubject = (script: (peer: RawPeer) => void | Promise<void>, limits: Partial<PspLimits> = {}) =>
    hostileSubjectLink({ subject: subjectId, commander: commanderId, script, limits });

  it("a subject that sends a request up (tries to call its commander) is cut with PSP_ERR_DIODE", async () => {
    const h = await hostileSubject((peer) =>
      peer.sendFrameParts(encodeFrame(FrameKind.Request, [head(1, 1)])),
    );
    expect((await closedWith(h.link))?.code).toBe("PSP_ERR_DIODE");
    expect(h.violations).toHaveLength(1);
    await h.close();
  });

  it.each([
    ["answers a request never made", (_id: number) => [head(99, 0)], "PSP_ERR_DIODE"],
    [
      "answers with a header that is not 8 bytes",
      (id: number) => [head(id, 0).subarray(0, 4)],
      "PSP_ERR_MESSAGE_MALFORMED",
    ],
    ["answers with an unknown status", (id: number) => [head(id, 2)], "PSP_ERR_MESSAGE_MALFORMED"],
    ["answers an error without a body", (id: number) => [head(id, 1)], "PSP_ERR_MESSAGE_MALFORMED"],
    [
      "answers an error whose code is not a code",
      (id: number) => [head(id, 1), encodeValue({ code: "x; DROP", message: "m" })],
      "PSP_ERR_MESSAGE_MALFORMED",
    ],
    [
      "answers an error with extra fields",
      (id: number) => [head(id, 1), encodeValue({ code: "PSP_ERR_INTERNAL", message: "m", stack: "at x" })],
      "PSP_ERR_MESSAGE_MALFORMED",
    ],
    [
      "answers an error with nested detail",
      (id: number) => [
        head(id, 1),
        encodeValue({ code: "PSP_ERR_INTERNAL", message: "m", detail: { a: { b: 1 } } }),
      ],
      "PSP_ERR_MESSAGE_MALFORMED",
    ],
    [
      "answers an error whose code is too long",
      (id: number) => [head(id, 1), encodeValue({ code: `PSP_ERR_${"X".repeat(60)}`, message: "m" })],
      "PSP_ERR_MESSAGE_MALFORMED",
    ],
    [
      "answers an error that is not CBOR",
      (id: number) => [head(id, 1), new Uint8Array([0xff, 0xff])],
      "PSP_ERR_MESSAGE_MALFORMED",
    ],
  ])("a subject that %s is cut, and the request fails with the reason", async (_name, reply, code) => {
    const h = await hostileSubject(async (peer) => {
      const f = await peer.nextFrame();
      const id = new DataView(f.segments[0]!.buffer, f.segments[0]!.byteOffset, 8).getUint32(0);
      peer.sendFrameParts(encodeFrame(FrameKind.Reply, reply(id)));
    });
    const p = h.link.request(1, []);
    p.catch(() => {});
    const err = await closedWith(h.link);
    expect(err?.code).toBe(code);
    expect(h.violations).toHaveLength(code === "PSP_ERR_DIODE" ? 1 : 0);
    expect((await rejectionOf(p)).code).toBe(code);
    await h.close();
  });

  it("a Request with a broken head from a subject is still a Diode violation", async () => {
    const h = await hostileSubject((peer) =>
      peer.sendFrameParts(encodeFrame(FrameKind.Request, [head(1, 1).subarray(0, 3)])),
    );
    expect((await closedWith(h.link))?.code).toBe("PSP_ERR_DIODE");
    expect(h.violations).toHaveLength(1);
    await h.close();
  });

  it("an error reply with text past the bounds is cut to size, not refused: the link stays up", async () => {
    const h = await hostileSubject(async (peer) => {
      for (;;) {
        const f = await peer.nextFrame();
        if (f.kind !== FrameKind.Request) continue;
        const id = new DataView(f.segments[0]!.buffer, f.segments[0]!.byteOffset, 8).getUint32(0);
        const detail = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${i}`, "v".repeat(3000)]));
        peer.sendFrameParts(
          encodeFrame(FrameKind.Reply, [
            head(id, 1),
            encodeValue({ code: "TOTEBOX_ERR_PARAM", message: "m".repeat(5000), detail }),
          ]),
        );
      }
    });
    const e = await rejectionOf(h.link.request(1, []));
    expect(e.code).toBe("TOTEBOX_ERR_PARAM");
    expect(e.message).toHaveLength(1024);
    const d = e.detail as Record<string, string>;
    expect(Object.keys(d)).toHaveLength(32);
    expect(d.k0).toHaveLength(1024);
    expect(h.link.closed).toBe(false);
    h.link.close();
    await h.close();
  });

  it("replies in any order reach their own requests; abandoned ones drop their reply; the rest fail on close", async () => {
    const N = 40;
    let peerRef: RawPeer | undefined;
    const ids: number[] = [];
    const h = await hostileSubject(async (peer) => {
      peerRef = peer;
      for (;;) {
        const f = await peer.nextFrame();
        if (f.kind === FrameKind.Request) {
          ids.push(new DataView(f.segments[0]!.buffer, f.segments[0]!.byteOffset, 8).getUint32(0));
        }
      }
    });
    const tickets = Array.from({ length: N }, () => ({ id: 0 }));
    const pending = tickets.map((t) => h.link.request(1, [], t));
    const settled = pending.map((p) =>
      p.then(
        (segments) => ({ ok: segments[0]![0]! }),
        (e: { code?: string }) => ({ code: e.code }),
      ),
    );
    while (ids.length < N) await new Promise((r) => setImmediate(r));
    // A seeded order over the first 30; every fifth of them abandoned first.
    const order = seededOrder(30, 0x9e3779b9);
    for (let i = 0; i < 30; i += 5) h.link.abandon(tickets[i]!.id);
    for (const i of order) {
      peerRef!.sendFrameParts(encodeFrame(FrameKind.Reply, [head(tickets[i]!.id, 0), Uint8Array.of(i)]));
    }
    const answered = await Promise.all(settled.slice(0, 30));
    answered.forEach((a, i) => {
      expect(a).toEqual(i % 5 === 0 ? { code: "PSP_ERR_ABANDONED" } : { ok: i });
    });
    expect(h.link.closed).toBe(false);
    expect(h.violations).toHaveLength(0);
    h.link.close();
    for (const a of await Promise.all(settled.slice(30))) expect(a).toEqual({ code: "PSP_ERR_LINK_CLOSED" });
    await h.close();
  });

  it("a subject that stops replying gets no more requests than the bound; abandoned ones count until it replies", async () => {
    let peerRef: RawPeer | undefined;
    const ids: number[] = [];
    const h = await hostileSubject(
      async (peer) => {
        peerRef = peer;
        for (;;) {
          const f = await peer.nextFrame();
          if (f.kind === FrameKind.Request) {
            ids.push(new DataView(f.segments[0]!.buffer, f.segments[0]!.byteOffset, 8).getUint32(0));
          }
        }
      },
      { maxCallsInFlight: 3 },
    );
    const tickets = [{ id: 0 }, { id: 0 }, { id: 0 }];
    const pending = tickets.map((t) => h.link.request(1, [], t));
    for (const p of pending) p.catch(() => {});
    // The fourth is refused here, without a frame; the link stays up.
    expect((await rejectionOf(h.link.request(1, []))).code).toBe("PSP_ERR_CALLS_IN_FLIGHT");
    // Abandoned: its caller is released at once...
    h.link.abandon(tickets[0]!.id);
    expect((await rejectionOf(pending[0]!)).code).toBe("PSP_ERR_ABANDONED");
    // ...but it still counts until the subject answers it.
    expect((await rejectionOf(h.link.request(1, []))).code).toBe("PSP_ERR_CALLS_IN_FLIGHT");
    while (ids.length < 3) await new Promise((r) => setImmediate(r));
    // The late reply to the abandoned request is dropped, not a violation, and frees its place.
    peerRef!.sendFrameParts(encodeFrame(FrameKind.Reply, [head(tickets[0]!.id, 0), new Uint8Array([1])]));
    for (let i = 0; i < 1000; i++) {
      const r = h.link.request(1, []);
      r.catch(() => {});
      const e = await Promise.race([
        r.then(
          () => null,
          (x: { code?: string }) => x,
        ),
        new Promise((res) => setImmediate(() => res("sent"))),
      ]);
      if (e === "sent") break;
      expect((e as { code?: string }).code).toBe("PSP_ERR_CALLS_IN_FLIGHT");
    }
    expect(h.link.closed).toBe(false);
    expect(h.violations).toHaveLength(0);
    h.link.close();
    await h.close();
  });

  it("a subject that answers the same request twice is cut at the second answer", async () => {
    const h = await hostileSubject(async (peer) => {
      const f = await peer.nextFrame();
      const id = new DataView(f.segments[0]!.buffer, f.segments[0]!.byteOffset, 8).getUint32(0);
      peer.sendFrameParts(encodeFrame(FrameKind.Reply, [head(id, 0), new Uint8Array([1])]));
      peer.sendFrameParts(encodeFrame(FrameKind.Reply, [head(id, 0), new Uint8Array([2])]));
    });
    const r = await h.link.request(1, []);
    expect([...r[0]!]).toEqual([1]);
    expect((await closedWith(h.link))?.code).toBe("PSP_ERR_DIODE");
    await h.close();
  });
});

describe("requestWith: a direct request's outcome to a sink, with no promise per request", () => {
  const scriptedSubject = (limits: Partial<PspLimits> = {}) => {
    const ids: number[] = [];
    let peerRef: RawPeer | undefined;
    const ready = hostileSubjectLink({
      subject: subjectId,
      commander: commanderId,
      limits,
      script: async (peer) => {
        peerRef = peer;
        for (;;) {
          const f = await peer.nextFrame();
          if (f.kind === FrameKind.Request) {
            ids.push(new DataView(f.segments[0]!.buffer, f.segments[0]!.byteOffset, 8).getUint32(0));
          }
        }
      },
    });
    const reply = (id: number, status: number, body: Uint8Array) =>
      peerRef!.sendFrameParts(encodeFrame(FrameKind.Reply, [head(id, status), body]));
    return { ready, ids, reply };
  };

  /** A sink that records every call, in order, and whether it came from inside requestWith. */
  const recordingSink = () => {
    const calls: Array<{ tag: number; ok?: number; code?: string; inside: boolean }> = [];
    let inside = false;
    const sink: ReplySink = {
      reply: (tag, payload) => calls.push({ tag, ok: payload[0]![0]!, inside }),
      fail: (tag, e) => calls.push({ tag, code: (e as { code?: string }).code, inside }),
    };
    const send = (link: PspLink, tag: number) => {
      inside = true;
      try {
        return link.requestWith(1, [Uint8Array.of(tag)], sink, tag);
      } finally {
        inside = false;
      }
    };
    return { calls, send };
  };

  it("each reply or error reaches the sink once with its own tag; abandon fails at once; close fails the rest in order", async () => {
    const s = scriptedSubject();
    const h = await s.ready;
    const r = recordingSink();
    const N = 24;
    // Tags chosen apart from ids, so a mix-up of the two shows.
    const ids = Array.from({ length: N }, (_, i) => r.send(h.link, 1000 + i));
    expect(r.calls).toEqual([]);
    while (s.ids.length < N) await new Promise((res) => setImmediate(res));
    expect(s.ids).toEqual(ids);
    // A seeded order over the first 16: every fourth abandoned, every third refused.
    const order = seededOrder(16, 0x2545f491);
    for (let i = 0; i < 16; i += 4) h.link.abandon(ids[i]!);
    expect(r.calls.map((c) => c.tag)).toEqual([1000, 1004, 1008, 1012]);
    for (const i of order) {
      if (i % 3 === 0) s.reply(ids[i]!, 1, encodeValue({ code: "TOTEBOX_ERR_PARAM", message: "no" }));
      else s.reply(ids[i]!, 0, Uint8Array.of(i));
    }
    while (r.calls.length < 16) await new Promise((res) => setImmediate(res));
    const byTag = new Map(r.calls.map((c) => [c.tag, c]));
    expect(byTag.size).toBe(16);
    for (let i = 0; i < 16; i++) {
      const c = byTag.get(1000 + i)!;
      if (i % 4 === 0) expect(c.code).toBe("PSP_ERR_ABANDONED");
      else if (i % 3 === 0) expect(c.code).toBe("TOTEBOX_ERR_PARAM");
      else expect(c.ok).toBe(i);
    }
    expect(h.link.closed).toBe(false);
    expect(h.violations).toHaveLength(0);
    h.link.close();
    // A microtask later, the open ones in the order sent.
    expect(r.calls).toHaveLength(16);
    await Promise.resolve();
    expect(r.calls.slice(16)).toEqual(
      Array.from({ length: 8 }, (_, i) => ({ tag: 1016 + i, code: "PSP_ERR_LINK_CLOSED", inside: false })),
    );
    expect(r.calls.every((c) => !c.inside)).toBe(true);
    await h.close();
  });

  it("a request that is not sent throws and never reaches the sink", async () => {
    const s = scriptedSubject({ maxCallsInFlight: 2 });
    const h = await s.ready;
    const r = recordingSink();
    r.send(h.link, 1);
    r.send(h.link, 2);
    expect(() => r.send(h.link, 3)).toThrow(expect.objectContaining({ code: "PSP_ERR_CALLS_IN_FLIGHT" }));
    expect(() => h.link.requestWith(-1, [], { reply() {}, fail() {} }, 0)).toThrow(RangeError);
    h.link.close();
    expect(() => r.send(h.link, 4)).toThrow(expect.objectContaining({ code: "PSP_ERR_LINK_CLOSED" }));
    await Promise.resolve();
    expect(r.calls.map((c) => [c.tag, c.code])).toEqual([
      [1, "PSP_ERR_LINK_CLOSED"],
      [2, "PSP_ERR_LINK_CLOSED"],
    ]);
    await h.close();
  });

  it("a request too large for a frame closes the link inside requestWith; its sink fails once, after, and request() rejects", async () => {
    const s = scriptedSubject({ maxFrameBytes: 16 * 1024 });
    const h = await s.ready;
    const r = recordingSink();
    const earlier = r.send(h.link, 1);
    const big = new Uint8Array(20 * 1024);
    let id = 0;
    const calls = r.calls;
    id = h.link.requestWith(
      1,
      [big],
      {
        reply: () => calls.push({ tag: 2, ok: 0, inside: false }),
        fail: (t, e) => calls.push({ tag: t, code: (e as { code?: string }).code, inside: id === 0 }),
      },
      2,
    );
    expect(id).toBeGreaterThan(earlier);
    expect(h.link.closed).toBe(true);
    expect(calls).toEqual([]);
    await Promise.resolve();
    expect(calls).toEqual([
      { tag: 1, code: "PSP_ERR_FRAME_TOO_LARGE", inside: false },
      { tag: 2, code: "PSP_ERR_FRAME_TOO_LARGE", inside: false },
    ]);
    await new Promise((res) => setImmediate(res));
    expect(calls).toHaveLength(2);
    await h.close();
    const t = scriptedSubject({ maxFrameBytes: 16 * 1024 });
    const h2 = await t.ready;
    expect((await rejectionOf(h2.link.request(1, [big]))).code).toBe("PSP_ERR_FRAME_TOO_LARGE");
    await h2.close();
  });

  it("a payload that cannot be framed throws before anything is recorded: no sink call, the link stays up", async () => {
    const s = scriptedSubject();
    const h = await s.ready;
    const r = recordingSink();
    const segments = Array.from({ length: 0xffff }, () => new Uint8Array(0));
    expect(() => h.link.requestWith(1, segments, { reply() {}, fail() {} }, 9)).toThrow(RangeError);
    expect((await rejectionOf(h.link.request(1, segments))).name).toBe("RangeError");
    expect(h.link.closed).toBe(false);
    // Nothing of them counts against the bound or reaches a sink; the next request goes out.
    const id = r.send(h.link, 3);
    while (s.ids.length < 1) await new Promise((res) => setImmediate(res));
    expect(s.ids).toEqual([id]);
    s.reply(id, 0, Uint8Array.of(3));
    while (r.calls.length < 1) await new Promise((res) => setImmediate(res));
    expect(r.calls).toEqual([{ tag: 3, ok: 3, inside: false }]);
    h.link.close();
    await h.close();
  });

  it("a sink that throws is the caller's bug, not the peer's: the link stays up and the error surfaces", async () => {
    const s = scriptedSubject();
    const h = await s.ready;
    const surfaced: unknown[] = [];
    const original = globalThis.queueMicrotask;
    // What the link rethrows would be an uncaught exception: caught here instead.
    vi.stubGlobal("queueMicrotask", (cb: () => void) =>
      original(() => {
        try {
          cb();
        } catch (e) {
          surfaced.push(e);
        }
      }),
    );
    try {
      const bug = new Error("sink bug");
      let replied = 0;
      const id = h.link.requestWith(
        1,
        [],
        {
          reply: () => {
            replied++;
            throw bug;
          },
          fail: () => {},
        },
        0,
      );
      while (s.ids.length < 1) await new Promise((res) => setImmediate(res));
      s.reply(id, 0, Uint8Array.of(7));
      while (surfaced.length < 1 && !h.link.closed) await new Promise((res) => setImmediate(res));
      expect(surfaced).toEqual([bug]);
      expect(replied).toBe(1);
      expect(h.link.closed).toBe(false);
      expect(h.violations).toHaveLength(0);
      // The link still carries requests.
      const next = h.link.request(1, []);
      while (s.ids.length < 2) await new Promise((res) => setImmediate(res));
      s.reply(s.ids[1]!, 0, Uint8Array.of(8));
      expect([...(await next)[0]!]).toEqual([8]);
    } finally {
      vi.unstubAllGlobals();
      h.link.close();
      await h.close();
    }
  });
});

describe("a hostile commander's direct frames close its own link only", () => {
  it.each([
    ["reuses a request id", [head(5, 1), head(5, 1)], "PSP_ERR_MESSAGE_MALFORMED"],
    ["sends ids that go down", [head(5, 1), head(4, 1)], "PSP_ERR_MESSAGE_MALFORMED"],
    ["sends a request header that is not 8 bytes", [head(1, 1).subarray(0, 6)], "PSP_ERR_MESSAGE_MALFORMED"],
    ["sends request id 0 (ids start at 1)", [head(0, 1)], "PSP_ERR_MESSAGE_MALFORMED"],
    ["answers the subject (sends a reply down)", [head(1, 0)], "PSP_ERR_DIODE"],
    ["answers the subject with a broken head", [head(1, 0).subarray(0, 2)], "PSP_ERR_DIODE"],
  ])("a commander that %s is cut; a neighbour keeps working", async (name, heads, code) => {
    const s = await subjectServer(() => new Promise(() => {}));
    try {
      const neighbour = await s.connect();
      const peer = await rawConnect(commanderId, s.server.address.port);
      const kind = name.startsWith("answers") ? FrameKind.Reply : FrameKind.Request;
      for (const h of heads) peer.sendFrameParts(encodeFrame(kind, [h]));
      await peer.closed;
      const cut = s.links.find((l) => l.closed);
      expect(cut?.closeError?.code).toBe(code);
      const api = openCommander<ApiT>(neighbour);
      expect(await api.echo("fine")).toBe("fine");
      neighbour.close();
    } finally {
      await s.server.close();
    }
  });
});
