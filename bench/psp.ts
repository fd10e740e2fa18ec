import { RpcTarget } from "capnweb";
import {
  connectPsp,
  createIdentity,
  listenPsp,
  openCommander,
  serveSubject,
} from "../packages/psp/src/index.ts";
import type { BenchRow } from "./report.ts";

class Api extends RpcTarget {
  ping(n: number) {
    return n;
  }
  self() {
    return this;
  }
}
interface ApiT {
  ping(n: number): number;
  self(): ApiT;
}

/** Round trips per second over one real TLS link: sequential calls, then pipelined batches. */
export async function benchRoundTrips(): Promise<BenchRow[]> {
  const [s, c] = await Promise.all([createIdentity({ name: "s" }), createIdentity({ name: "c" })]);
  const server = await listenPsp({
    identity: s,
    role: "subject",
    authorize: () => ({ ok: true, label: "c" }),
    onLink: (l) => serveSubject(l, new Api()),
    limits: { maxCallsInFlight: 1024 },
  });
  const link = await connectPsp({
    identity: c,
    role: "commander",
    host: "127.0.0.1",
    port: server.address.port,
    expect: s.fingerprint,
  });
  const api = openCommander<ApiT>(link);
  for (let i = 0; i < 500; i++) await api.ping(i); // warm-up

  const N = 3000;
  let t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await api.ping(i);
  const seqSec = Number(process.hrtime.bigint() - t) / 1e9;
  const sequential = N / seqSec;

  const BATCH = 100;
  t = process.hrtime.bigint();
  for (let i = 0; i < N / BATCH; i++) {
    await Promise.all(Array.from({ length: BATCH }, (_, j) => api.ping(j)));
  }
  const pipSec = Number(process.hrtime.bigint() - t) / 1e9;
  const pipelined = N / pipSec;
  link.close();
  await server.close();
  return [
    { section: "psp", name: "calls/s, one link, sequential", value: sequential, unit: "calls/s" },
    {
      section: "psp",
      name: `calls/s, one link, ${BATCH} in flight`,
      value: pipelined,
      unit: "calls/s",
      ratio: `${(pipelined / sequential).toFixed(1)}× sequential`,
    },
  ];
}
