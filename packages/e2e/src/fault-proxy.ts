/**
 * A TCP fault-injection proxy for the end-to-end tests: it sits between the aggregator and a real
 * Totebox port and forwards bytes untouched (TLS passes through end to end, so the pins still name
 * the Totebox), unless told to misbehave:
 *
 *   setDelay(ms)     each chunk, in both directions, is held `ms` before it is written (order kept)
 *   holdDown(true)   bytes from the Totebox are queued and not written until holdDown(false): the
 *                    Totebox has answered, the aggregator has not heard it yet
 *   drop()           closes both sides of every open connection (FIN, pending bytes discarded)
 *   reset()          resets both sides of every open connection (RST: `resetAndDestroy`)
 *   setMode("blackhole")  new connections are accepted and never forwarded: a peer that swallows
 *                    the TLS ClientHello, so the handshake can only time out
 *
 * The delay timers are the fault being injected, not synchronisation: tests wait on `waitFor`,
 * which re-checks its condition on every change of the proxy's counters.
 */
import { EventEmitter } from "node:events";
import { createConnection, createServer, type Server, type Socket } from "node:net";

export type ProxyMode = "forward" | "blackhole";

export interface ProxyStats {
  /** Connections accepted since start. */
  readonly accepted: number;
  /** Connections open now (blackholed ones included). */
  readonly open: number;
  /** Bytes received from clients (the aggregator) / written to the Totebox. */
  readonly bytesUpIn: number;
  readonly bytesUpOut: number;
  /** Bytes received from the Totebox / written to clients. */
  readonly bytesDownIn: number;
  readonly bytesDownOut: number;
  /** Bytes queued now (delayed or held), both directions. */
  readonly queued: number;
  /** Connections closed by drop() / reset(). */
  readonly dropped: number;
  readonly reset: number;
}

/**
 * Bytes one connection may have queued (delayed or held) before the proxy gives up on it: the
 * proxy is a test fixture, but a stalled direction must not grow without bound either.
 */
const MAX_QUEUED_BYTES = 64 * 1024 * 1024;

/** One direction of one connection: chunks in arrival order, each written at its due time. */
class Pipe {
  readonly #queue: { due: number; chunk: Buffer }[] = [];
  #timer: NodeJS.Timeout | undefined;
  #lastDue = 0;
  queuedBytes = 0;
  readonly out: () => Socket | undefined;
  readonly proxy: FaultProxy;
  readonly direction: "up" | "down";
  readonly onOverflow: () => void;

  constructor(
    out: () => Socket | undefined,
    proxy: FaultProxy,
    direction: "up" | "down",
    onOverflow: () => void,
  ) {
    this.out = out;
    this.proxy = proxy;
    this.direction = direction;
    this.onOverflow = onOverflow;
  }

  push(chunk: Buffer): void {
    const delay = this.proxy.delayMs;
    const held = this.direction === "down" && this.proxy.downHeld;
    if (delay === 0 && !held && this.#queue.length === 0) {
      this.#write(chunk);
      return;
    }
    // Due times never go backwards, so a delay changed mid-stream cannot reorder bytes.
    const due = Math.max(Date.now() + delay, this.#lastDue);
    this.#lastDue = due;
    this.#queue.push({ due, chunk });
    this.queuedBytes += chunk.byteLength;
    if (this.queuedBytes > MAX_QUEUED_BYTES) {
      this.onOverflow();
      return;
    }
    this.pump();
  }

  /** Writes every chunk that is due (and not held); re-arms the timer for the next one. */
  pump(): void {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (this.direction === "down" && this.proxy.downHeld) return;
    const now = Date.now();
    while (this.#queue.length > 0 && this.#queue[0]!.due <= now) {
      const { chunk } = this.#queue.shift()!;
      this.queuedBytes -= chunk.byteLength;
      this.#write(chunk);
    }
    if (this.#queue.length > 0) {
      this.#timer = setTimeout(() => this.pump(), Math.max(0, this.#queue[0]!.due - now));
    }
    this.proxy.changed();
  }

  #write(chunk: Buffer): void {
    const s = this.out();
    if (!s || s.destroyed) return;
    s.write(chunk);
    this.proxy.count(this.direction === "up" ? "bytesUpOut" : "bytesDownOut", chunk.byteLength);
  }

  clear(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#queue.length = 0;
    this.queuedBytes = 0;
  }
}

interface Conn {
  readonly client: Socket;
  upstream: Socket | undefined;
  readonly up: Pipe;
  readonly down: Pipe;
}

type Counter = "bytesUpIn" | "bytesUpOut" | "bytesDownIn" | "bytesDownOut";

export class FaultProxy {
  readonly target: { readonly host: string; readonly port: number };
  readonly #server: Server;
  readonly #conns = new Set<Conn>();
  readonly #events = new EventEmitter();
  #mode: ProxyMode = "forward";
  #delayMs = 0;
  #downHeld = false;
  readonly #stats = {
    accepted: 0,
    bytesUpIn: 0,
    bytesUpOut: 0,
    bytesDownIn: 0,
    bytesDownOut: 0,
    dropped: 0,
    reset: 0,
  };

  private constructor(target: { host: string; port: number }, server: Server) {
    this.target = target;
    this.#server = server;
    this.#events.setMaxListeners(1000);
  }

  /** Listens on `host` (default 127.0.0.1), ephemeral port, forwarding to `target`. */
  static async start(target: { host: string; port: number }, host = "127.0.0.1"): Promise<FaultProxy> {
    let proxy: FaultProxy | undefined;
    const server = createServer((client) => proxy!.#accept(client));
    proxy = new FaultProxy({ host: target.host, port: target.port }, server);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, host, () => resolve());
    });
    return proxy;
  }

  get address(): { host: string; port: number } {
    const a = this.#server.address();
    if (a === null || typeof a === "string") throw new Error("proxy is not listening");
    return { host: a.address, port: a.port };
  }

  get mode(): ProxyMode {
    return this.#mode;
  }

  get delayMs(): number {
    return this.#delayMs;
  }

  get downHeld(): boolean {
    return this.#downHeld;
  }

  get stats(): ProxyStats {
    let queued = 0;
    for (const c of this.#conns) queued += c.up.queuedBytes + c.down.queuedBytes;
    return { ...this.#stats, open: this.#conns.size, queued };
  }

  /** New connections are forwarded ("forward") or swallowed ("blackhole"); open ones are left alone. */
  setMode(mode: ProxyMode): void {
    this.#mode = mode;
    this.changed();
  }

  /** Delay, in ms, applied to every chunk from now on (0: straight through once the queue drains). */
  setDelay(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0 || ms > 600_000) throw new RangeError("delay must be 0..600000 ms");
    this.#delayMs = ms;
  }

  /** Holds (true) or releases (false) every byte coming back from the Totebox. */
  holdDown(on: boolean): void {
    this.#downHeld = on;
    if (!on) for (const c of this.#conns) c.down.pump();
    this.changed();
  }

  /** Closes both sides of every open connection. Returns how many were open. */
  drop(): number {
    return this.#closeAll("dropped", (s) => s.destroy());
  }

  /** Resets (RST) both sides of every open connection. Returns how many were open. */
  reset(): number {
    return this.#closeAll("reset", (s) => {
      if (!s.destroyed) s.resetAndDestroy();
    });
  }

  /** Resolves once `cond(stats)` holds, re-checked on every change; rejects after `timeoutMs`. */
  waitFor(cond: (s: ProxyStats) => boolean, timeoutMs = 20_000): Promise<ProxyStats> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const s = this.stats;
        if (!cond(s)) return;
        cleanup();
        resolve(s);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`proxy to :${this.target.port}: condition not met in ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.#events.off("change", check);
      };
      this.#events.on("change", check);
      check();
    });
  }

  async close(): Promise<void> {
    for (const c of [...this.#conns]) this.#teardown(c, (s) => s.destroy());
    await new Promise<void>((r) => this.#server.close(() => r()));
  }

  // ---- internals (used by Pipe) ----------------------------------------------------------

  /** @internal */
  changed(): void {
    this.#events.emit("change");
  }

  /** @internal */
  count(which: Counter, n: number): void {
    this.#stats[which] += n;
    this.changed();
  }

  #accept(client: Socket): void {
    this.#stats.accepted++;
    client.setNoDelay(true);
    const conn: Conn = {
      client,
      upstream: undefined,
      up: new Pipe(
        () => conn.upstream,
        this,
        "up",
        () => this.#teardown(conn, (s) => s.destroy()),
      ),
      down: new Pipe(
        () => conn.client,
        this,
        "down",
        () => this.#teardown(conn, (s) => s.destroy()),
      ),
    };
    this.#conns.add(conn);
    // Whatever happens to one side, the other goes too; errors are the expected outcome of faults.
    client.on("error", () => {});
    client.on("close", () => this.#teardown(conn, (s) => s.destroy()));
    if (this.#mode === "blackhole") {
      // Read and discard: the peer sees an open connection that never says anything.
      client.on("data", (chunk: Buffer) => this.count("bytesUpIn", chunk.byteLength));
      this.changed();
      return;
    }
    const upstream = createConnection({ host: this.target.host, port: this.target.port });
    upstream.setNoDelay(true);
    conn.upstream = upstream;
    upstream.on("error", () => {});
    upstream.on("close", () => this.#teardown(conn, (s) => s.destroy()));
    client.on("data", (chunk: Buffer) => {
      this.count("bytesUpIn", chunk.byteLength);
      conn.up.push(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      this.count("bytesDownIn", chunk.byteLength);
      conn.down.push(chunk);
    });
    this.changed();
  }

  #closeAll(kind: "dropped" | "reset", how: (s: Socket) => void): number {
    const n = this.#conns.size;
    for (const c of [...this.#conns]) {
      this.#stats[kind]++;
      this.#teardown(c, how);
    }
    this.changed();
    return n;
  }

  #teardown(c: Conn, how: (s: Socket) => void): void {
    if (!this.#conns.delete(c)) return;
    c.up.clear();
    c.down.clear();
    how(c.client);
    if (c.upstream) how(c.upstream);
    this.changed();
  }
}
