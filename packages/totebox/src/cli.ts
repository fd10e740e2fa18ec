import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

type ParseArgsOptionConfig = NonNullable<NonNullable<Parameters<typeof parseArgs>[0]>["options"]>[string];

import { sign as edSign, X509Certificate } from "node:crypto";
import { certFingerprint, formatDeviceId, newPairingCode, publicKeyFromRaw } from "@os-orchestration/psp";
import { initArchive, openArchive } from "./archive.ts";
import { AuditLog } from "./audit-log.ts";
import { decideStaged, listStaged } from "./commands.ts";
import { generateDemoData } from "./demo-data.ts";
import { ToteboxError } from "./errors.ts";
import { type ImportKind, importFile } from "./import.ts";
import { verifyChain } from "./ledger.ts";
import { listPeers, revokePeer, trustPeer } from "./peers.ts";
import { readState, writeState } from "./runtime-schema.ts";
import { ENTITY_KINDS, type EntityKind, missingGuards } from "./schema.ts";
import { ToteboxServer } from "./server.ts";

const USAGE = `os-totebox — one entity's sovereign archive

  os-totebox init --dir D --id ID --kind property|company|project|fund|household --name NAME [--tag k=v]... [--currency USD]
  os-totebox serve --dir D [--host 127.0.0.1] [--port 0]
  os-totebox demo-data --dir D --seed N [--scale N] [--peer id=name]... [--as-of YYYY-MM-DD]
  os-totebox import --dir D --kind journal|units|leases FILE
  os-totebox verify --dir D
  os-totebox id --dir D
  os-totebox pair --dir D --as aggregator|operator --label L [--tenant T]... [--role R]... [--ttl-seconds 600]
  os-totebox trust --dir D --as aggregator|operator --label L (--cert FILE | --public-key HEX) [--tenant T]...
  os-totebox peers --dir D
  os-totebox revoke --dir D PEER        (alias: unpair)
  os-totebox state --dir D [active|suspended]
  os-totebox staged --dir D
  os-totebox approve --dir D ID   |   os-totebox reject --dir D ID
  os-totebox audit --dir D [--entries FROM:COUNT] [--inclusion INDEX:SIZE] [--consistency OLD:NEW]

Exit codes: 0 ok, 1 refused or failed (the reason is printed), 2 usage.`;

const [command, ...rest] = process.argv.slice(2);

const BASE = { dir: { type: "string" }, json: { type: "boolean" } } as const;

function opts<const T extends Record<string, ParseArgsOptionConfig>>(extra?: T) {
  return parseArgs({ args: rest, allowPositionals: true, options: { ...BASE, ...(extra ?? ({} as T)) } });
}

function need(v: string | undefined, name: string): string {
  if (!v) usage(`missing --${name}`);
  return v as string;
}

function usage(msg?: string): never {
  if (msg) console.error(`os-totebox: ${msg}`);
  console.error(USAGE);
  process.exit(2);
}

function tags(list: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of list ?? []) {
    const i = t.indexOf("=");
    if (i < 1) usage(`tag must be key=value: ${t}`);
    out[t.slice(0, i)] = t.slice(i + 1);
  }
  return out;
}

const print = (json: boolean | undefined, human: string, data: unknown) =>
  console.log(json ? JSON.stringify(data, (_k, v) => (typeof v === "bigint" ? v.toString() : v)) : human);

async function main(): Promise<void> {
  switch (command) {
    case "init": {
      const { values } = opts({
        id: { type: "string" },
        kind: { type: "string" },
        name: { type: "string" },
        tag: { type: "string", multiple: true },
        currency: { type: "string" },
      });
      const kind = need(values.kind, "kind");
      if (!(ENTITY_KINDS as readonly string[]).includes(kind))
        usage(`kind must be one of ${ENTITY_KINDS.join(", ")}`);
      const { entity, identity } = await initArchive({
        dir: need(values.dir, "dir"),
        id: need(values.id, "id"),
        kind: kind as EntityKind,
        name: need(values.name, "name"),
        tags: tags(values.tag),
        ...(values.currency ? { currency: values.currency } : {}),
      });
      print(
        values.json,
        `created archive for ${entity.name} (${entity.kind})\ndevice ID ${formatDeviceId(identity.fingerprint)}`,
        {
          entity,
          deviceId: identity.fingerprint,
        },
      );
      return;
    }
    case "serve": {
      const { values } = opts({ host: { type: "string" }, port: { type: "string" } });
      const server = await ToteboxServer.start({
        dir: need(values.dir, "dir"),
        host: values.host ?? "127.0.0.1",
        port: Number(values.port ?? 0),
      });
      // One machine-readable line on stdout when ready: supervisors and tests wait for it.
      console.log(
        JSON.stringify({
          event: "listening",
          ...server.address,
          totebox: server.entity.id,
          deviceId: server.identity.fingerprint,
        }),
      );
      const stop = async () => {
        await server.close();
        process.exit(0);
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      return;
    }
    case "demo-data": {
      const { values } = opts({
        seed: { type: "string" },
        scale: { type: "string" },
        peer: { type: "string", multiple: true },
        "as-of": { type: "string" },
      });
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const summary = generateDemoData(a.db, {
          kind: a.entity.kind,
          seed: Number(need(values.seed, "seed")),
          scale: Number(values.scale ?? 1),
          entityId: a.entity.id,
          peers: Object.entries(tags(values.peer)).map(([entityId, name]) => ({ entityId, name })),
          asOf: values["as-of"] ?? new Date().toISOString().slice(0, 10),
        });
        print(
          values.json,
          `${summary.transactions} transactions, ${summary.lines} lines, ${summary.units} units`,
          summary,
        );
      } finally {
        a.db.close();
      }
      return;
    }
    case "import": {
      const { values, positionals } = opts({ kind: { type: "string" } });
      const file = positionals[0] ?? usage("missing FILE");
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const r = importFile(a.db, file, { kind: need(values.kind, "kind") as ImportKind });
        print(values.json, `imported ${r.rows} rows (${r.transactions} transactions, ${r.lines} lines)`, r);
      } finally {
        a.db.close();
      }
      return;
    }
    case "verify": {
      const { values } = opts();
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const chain = verifyChain(a.db);
        const guards = missingGuards(a.db);
        const audit = new AuditLog(a.db, {
          sign: (b) => edSign(null, b, a.identity.privateKey),
        }).verifyStored();
        const ok = chain.ok && guards.length === 0;
        print(
          values.json,
          chain.ok
            ? `journal intact: ${chain.entries} entries, ${chain.lines} lines, head ${chain.head}${guards.length ? `\nMISSING GUARDS: ${guards.join(", ")}` : ""}`
            : `JOURNAL BROKEN at entry ${chain.firstBrokenSeq}: ${chain.reason}`,
          { chain, missingGuards: guards, audit },
        );
        if (!ok) process.exitCode = 1;
      } finally {
        a.db.close();
      }
      return;
    }
    case "id": {
      const { values } = opts();
      const a = await openArchive(need(values.dir, "dir"));
      a.db.close();
      print(
        values.json,
        `${a.entity.name} (${a.entity.id}, ${a.entity.kind})\ndevice ID ${formatDeviceId(a.identity.fingerprint)}\nkey id    ${a.identity.keyId}`,
        {
          entity: a.entity,
          deviceId: a.identity.fingerprint,
          keyId: a.identity.keyId,
          certPem: a.identity.certPem,
        },
      );
      return;
    }
    case "pair": {
      const { values } = opts({
        as: { type: "string" },
        label: { type: "string" },
        tenant: { type: "string", multiple: true },
        role: { type: "string", multiple: true },
        "ttl-seconds": { type: "string" },
      });
      const kind = need(values.as, "as");
      if (kind !== "aggregator" && kind !== "operator") usage("--as must be aggregator or operator");
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const code = newPairingCode();
        const now = Date.now();
        const ttl = Math.min(3600, Math.max(30, Number(values["ttl-seconds"] ?? 600)));
        a.db
          .prepare(
            "INSERT INTO pairing_offers (code, kind, label, tenants, roles, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
          )
          .run(
            code,
            kind,
            need(values.label, "label"),
            JSON.stringify(values.tenant ?? []),
            JSON.stringify(values.role ?? []),
            now,
            now + ttl * 1000,
          );
        print(
          values.json,
          `Pairing ${kind} "${values.label}" with ${a.entity.name}.\n\n  device ID  ${formatDeviceId(a.identity.fingerprint)}\n  code       ${code}\n\nRead both to the person pairing. The code works once, for ${ttl} s, while os-totebox serve runs.`,
          { deviceId: a.identity.fingerprint, code, expiresAt: now + ttl * 1000 },
        );
      } finally {
        a.db.close();
      }
      return;
    }
    case "trust": {
      const { values } = opts({
        as: { type: "string" },
        label: { type: "string" },
        cert: { type: "string" },
        "public-key": { type: "string" },
        tenant: { type: "string", multiple: true },
        role: { type: "string", multiple: true },
      });
      const kind = need(values.as, "as");
      if (kind !== "aggregator" && kind !== "operator") usage("--as must be aggregator or operator");
      let publicKey: ReturnType<typeof publicKeyFromRaw>;
      let fingerprint: string | undefined;
      if (values.cert) {
        const cert = new X509Certificate(readFileSync(values.cert));
        publicKey = cert.publicKey;
        fingerprint = certFingerprint(cert);
      } else if (values["public-key"]) {
        publicKey = publicKeyFromRaw(Buffer.from(values["public-key"], "hex"));
      } else usage("give --cert FILE or --public-key HEX");
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const p = trustPeer(a.db, {
          kind,
          label: need(values.label, "label"),
          publicKey,
          ...(fingerprint ? { fingerprint } : {}),
          tenants: values.tenant ?? [],
          roles: values.role ?? [],
          now: Date.now(),
        });
        print(values.json, `trusted ${p.kind} ${p.label} (${p.id})`, {
          id: p.id,
          kind: p.kind,
          label: p.label,
        });
      } finally {
        a.db.close();
      }
      return;
    }
    case "peers": {
      const { values } = opts();
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const peers = listPeers(a.db).map((p) => ({
          id: p.id,
          kind: p.kind,
          label: p.label,
          tenants: p.tenants,
          roles: p.roles,
          pairedAt: new Date(p.pairedAt).toISOString(),
          revokedAt: p.revokedAt ? new Date(p.revokedAt).toISOString() : null,
        }));
        print(
          values.json,
          peers
            .map(
              (p) =>
                `${p.kind.padEnd(10)} ${p.label.padEnd(20)} ${p.revokedAt ? "revoked" : "active "} ${p.id}`,
            )
            .join("\n"),
          peers,
        );
      } finally {
        a.db.close();
      }
      return;
    }
    case "revoke":
    case "unpair": {
      const { values, positionals } = opts();
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const p = revokePeer(a.db, positionals[0] ?? usage("missing PEER"), Date.now());
        print(values.json, `revoked ${p.kind} ${p.label}: a running server closes its links at once`, {
          id: p.id,
        });
      } finally {
        a.db.close();
      }
      return;
    }
    case "state": {
      const { values, positionals } = opts();
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const want = positionals[0];
        if (want === "active" || want === "suspended") writeState(a.db, want);
        else if (want) usage("state is active or suspended");
        print(values.json, readState(a.db), { state: readState(a.db) });
      } finally {
        a.db.close();
      }
      return;
    }
    case "staged": {
      const { values } = opts();
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const s = listStaged(a.db);
        print(
          values.json,
          s
            .map((e) => `${e.id}  ${e.status.padEnd(8)} ${e.stagedAt}  by ${e.proposedBy.slice(0, 12)}`)
            .join("\n") || "nothing staged",
          s,
        );
      } finally {
        a.db.close();
      }
      return;
    }
    case "approve":
    case "reject": {
      const { values, positionals } = opts();
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const r = decideStaged(a.db, positionals[0] ?? usage("missing ID"), command, "owner", Date.now());
        print(values.json, command === "approve" ? `applied as journal entry ${r.seq}` : "rejected", r);
      } finally {
        a.db.close();
      }
      return;
    }
    case "audit": {
      const { values } = opts({
        entries: { type: "string" },
        inclusion: { type: "string" },
        consistency: { type: "string" },
      });
      const a = await openArchive(need(values.dir, "dir"));
      try {
        const log = new AuditLog(a.db, {
          sign: (b) => edSign(null, b, a.identity.privateKey),
          origin: `os-totebox/${a.entity.id}`,
        });
        const pair = (s: string) => s.split(":").map(Number) as [number, number];
        const out: Record<string, unknown> = { checkpoint: log.checkpoint() };
        if (values.entries) out.entries = log.entries(...pair(values.entries));
        if (values.inclusion) out.inclusion = log.inclusionProof(...pair(values.inclusion));
        if (values.consistency) out.consistency = log.consistencyProof(...pair(values.consistency));
        console.log(
          JSON.stringify(out, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v), 2),
        );
      } finally {
        a.db.close();
      }
      return;
    }
    case undefined:
    case "help":
    case "--help":
      console.log(USAGE);
      return;
    default:
      usage(`unknown command ${command}`);
  }
}

main().catch((e: unknown) => {
  const code = (e as { code?: unknown }).code;
  if (e instanceof ToteboxError || (typeof code === "string" && /_ERR_/.test(code))) {
    const detail = (e as { detail?: unknown }).detail;
    console.error(
      `os-totebox: ${String(code)}: ${(e as Error).message}${detail ? ` ${JSON.stringify(detail)}` : ""}`,
    );
  } else {
    console.error(`os-totebox: ${(e as Error)?.stack ?? String(e)}`);
  }
  process.exit(1);
});
