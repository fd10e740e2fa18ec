import { readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  connectPsp,
  type Endpoint,
  formatDeviceId,
  loadIdentity,
  loadOrCreateIdentity,
  normalizeFingerprint,
  openCommander,
  pairingProof,
  parseEndpoint,
  rawEd25519PublicKey,
  verifyPairingProof,
} from "@os-orchestration/psp";
import type { ToteboxRemote } from "@os-orchestration/totebox";
import { isMap, isSeq, parseDocument } from "yaml";
import { OrchError } from "./errors.ts";
import { applyHeapGrowth, DEFAULT_HEAP_GROWTH_PERCENT, MAX_HEAP_GROWTH_PERCENT } from "./heap-growth.ts";
import { pairOperator } from "./operator-pairing.ts";
import { loadRegistry } from "./registry.ts";
import { loadViewports, OrchestrationServer } from "./server.ts";

const USAGE = `os-orchestration — the fleet aggregator

  os-orchestration init --identity DIR                 create the aggregator's identity (key + certificate)
  os-orchestration id --identity DIR                   print its device id, fingerprint and public key
  os-orchestration check --config fleet.yaml           validate a configuration (registry and viewports)
  os-orchestration serve --config fleet.yaml --identity DIR [--listen HOST:PORT] [--http HOST:PORT|off]
                         [--heap-growth PERCENT]
      --heap-growth: how far the JS heap may grow past its live size between full collections
      (default ${DEFAULT_HEAP_GROWTH_PERCENT}, or node's own --heap-growing-percent if given; 0 leaves it
      to V8): more memory, less CPU spent collecting
  os-orchestration pair-operator --identity DIR --config fleet.yaml --id ID --tenant T [--role viewer|manager]
                                 [--listen HOST:PORT]
      offer a one-time code to an operator's console (os-console pair); on success the operator's
      key is added to fleet.yaml, which a running aggregator reloads
  os-orchestration pair-totebox --identity DIR --address HOST:PORT --device-id ID --code CODE
                                [--config fleet.yaml --tag k=v... --tenant T...]
      prove a pairing code the Totebox's owner read out; with --config, add the Totebox to it

serve prints one JSON line {"event":"listening",...} on stdout when ready; logs are JSON on stderr.
Exit codes: 0 ok, 1 refused or failed (the reason is printed), 2 usage.`;

const [command, ...rest] = process.argv.slice(2);

function usage(msg?: string): never {
  if (msg) console.error(`os-orchestration: ${msg}`);
  console.error(USAGE);
  process.exit(2);
}

function need(v: string | undefined, name: string): string {
  if (!v) usage(`missing --${name}`);
  return v;
}

/** A listener may ask for port 0 (the system picks one); a peer's address may not. */
function hostPort(v: string, what: string, options: { allowPortZero?: boolean } = {}): Endpoint {
  const p = parseEndpoint(v, options);
  if (!p.ok) usage(`${what}: ${p.reason}`);
  return { host: p.host, port: p.port };
}

async function main(): Promise<void> {
  switch (command) {
    case "init":
    case "id": {
      const { values } = parseArgs({
        args: rest,
        options: { identity: { type: "string" }, json: { type: "boolean" } },
      });
      const dir = resolve(need(values.identity, "identity"));
      const id =
        command === "init" ? await loadOrCreateIdentity(dir, "os-orchestration") : await loadIdentity(dir);
      const info = {
        deviceId: formatDeviceId(id.fingerprint),
        fingerprint: id.fingerprint,
        keyId: id.keyId,
        publicKey: Buffer.from(rawEd25519PublicKey(id.publicKey)).toString("hex"),
      };
      if (values.json) console.log(JSON.stringify(info));
      else
        console.log(
          `aggregator identity in ${dir}\n  device ID    ${info.deviceId}\n  fingerprint  ${info.fingerprint}\n  public key   ${info.publicKey}`,
        );
      return;
    }
    case "check": {
      const { values } = parseArgs({ args: rest, options: { config: { type: "string" } } });
      const reg = await loadRegistry(need(values.config, "config"));
      // As `serve` loads them: a config viewport that would replace a built-in is refused here too.
      const viewports = await loadViewports(reg);
      console.log(
        `ok: ${reg.toteboxes.length} Toteboxes, ${reg.tenants.size} tenants, ${reg.operators.length} operators, ${viewports.size} viewports`,
      );
      return;
    }
    case "serve": {
      const { values } = parseArgs({
        args: rest,
        options: {
          config: { type: "string" },
          identity: { type: "string" },
          listen: { type: "string" },
          http: { type: "string" },
          "heap-growth": { type: "string" },
        },
      });
      // Before anything is loaded. Digits only: Number() would also take "1e2", " 5" or "0x10";
      // the range is setHeapGrowth's to check.
      const growth = values["heap-growth"];
      try {
        applyHeapGrowth(
          growth === undefined ? undefined : /^\d+$/.test(growth) ? Number(growth) : Number.NaN,
        );
      } catch (e) {
        if (!(e instanceof RangeError)) throw e;
        usage(`--heap-growth: a whole percentage from 0 to ${MAX_HEAP_GROWTH_PERCENT}`);
      }
      const identity = await loadIdentity(resolve(need(values.identity, "identity")));
      const listen = values.listen ? hostPort(values.listen, "--listen", { allowPortZero: true }) : undefined;
      const http =
        values.http === "off"
          ? false
          : values.http
            ? hostPort(values.http, "--http", { allowPortZero: true })
            : undefined;
      const server = await OrchestrationServer.start({
        configPath: resolve(need(values.config, "config")),
        identity,
        ...(listen ? { host: listen.host, port: listen.port } : {}),
        ...(http !== undefined ? { http } : {}),
      });
      const h = server.httpAddress;
      console.log(
        JSON.stringify({
          event: "listening",
          host: server.address.host,
          port: server.address.port,
          http: h ? `http://${h.host}:${h.port}` : null,
          fingerprint: identity.fingerprint,
          deviceId: formatDeviceId(identity.fingerprint),
          toteboxes: server.registry.toteboxes.length,
        }),
      );
      let stopping = false;
      const stop = async () => {
        if (stopping) return;
        stopping = true;
        await server.close();
        process.exit(0);
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      return;
    }
    case "pair-operator": {
      const { values } = parseArgs({
        args: rest,
        options: {
          identity: { type: "string" },
          config: { type: "string" },
          id: { type: "string" },
          tenant: { type: "string" },
          role: { type: "string" },
          listen: { type: "string" },
        },
      });
      const identity = await loadIdentity(resolve(need(values.identity, "identity")));
      const role = values.role ?? "viewer";
      if (role !== "viewer" && role !== "manager") usage("--role must be viewer or manager");
      const at = hostPort(values.listen ?? "127.0.0.1:0", "--listen", { allowPortZero: true });
      const config = resolve(need(values.config, "config"));
      await loadRegistry(config); // refuse to pair against a broken configuration
      const { keyId } = await pairOperator({
        identity,
        configPath: config,
        host: at.host,
        port: at.port,
        operator: { id: need(values.id, "id"), tenant: need(values.tenant, "tenant"), role },
        onOffer: (o) =>
          console.log(
            `Pairing operator "${values.id}" (tenant ${values.tenant}, ${role}).\n\n  address    ${o.host}:${o.port}\n  device ID  ${o.deviceId}\n  code       ${o.code}\n\nOn the operator's machine: os-console pair --address ${o.host}:${o.port} --device-id <device ID> --code <code>`,
          ),
      });
      console.log(`paired: operator ${values.id} (key ${keyId.slice(0, 16)}…) added to ${values.config}`);
      return;
    }
    case "pair-totebox": {
      const { values } = parseArgs({
        args: rest,
        options: {
          identity: { type: "string" },
          address: { type: "string" },
          "device-id": { type: "string" },
          code: { type: "string" },
          config: { type: "string" },
          tag: { type: "string", multiple: true },
          tenant: { type: "string", multiple: true },
        },
      });
      const identity = await loadIdentity(resolve(need(values.identity, "identity")));
      const addr = hostPort(need(values.address, "address"), "--address");
      const fingerprint = normalizeFingerprint(need(values["device-id"], "device-id"));
      const code = need(values.code, "code");
      // The pin is the device id the owner read out: a different Totebox cannot answer here.
      const link = await connectPsp({ identity, role: "commander", ...addr, expect: fingerprint });
      try {
        const tb = openCommander<ToteboxRemote>(link);
        const input = { code, initiatorFingerprint: identity.fingerprint, responderFingerprint: fingerprint };
        const answer = await tb.pair(pairingProof({ ...input, side: "initiator" }));
        if (!verifyPairingProof({ ...input, side: "responder" }, answer.proof)) {
          throw new OrchError(
            "ORCH_ERR_CONFIG_INVALID",
            "the Totebox's pairing proof does not match the code",
          );
        }
        const hello = await tb.hello();
        const tags: Record<string, string> = { ...hello.tags };
        for (const t of values.tag ?? []) {
          const i = t.indexOf("=");
          if (i < 1) usage(`tag must be key=value: ${t}`);
          tags[t.slice(0, i)] = t.slice(i + 1);
        }
        const entry = {
          id: answer.totebox,
          name: hello.name,
          address: `${addr.host.includes(":") ? `[${addr.host}]` : addr.host}:${addr.port}`,
          fingerprint,
          tags,
          state: "active",
          tenants: values.tenant ?? [],
        };
        if (values.config) {
          addToConfig(resolve(values.config), entry);
          await loadRegistry(resolve(values.config)); // the file must still be valid
          console.log(`paired ${entry.id} and added it to ${values.config}`);
        } else {
          console.log(`paired ${entry.id}; add this to fleet.yaml under toteboxes:\n`);
          console.log(`  - ${JSON.stringify(entry)}`);
        }
      } finally {
        link.close();
      }
      return;
    }
    default:
      usage(command ? `unknown command ${command}` : undefined);
  }
}

/** Appends a Totebox entry to fleet.yaml, keeping the file's comments and layout. */
function addToConfig(path: string, entry: Record<string, unknown>): void {
  const doc = parseDocument(readFileSync(path, "utf8"));
  let list = doc.get("toteboxes");
  if (!isSeq(list)) {
    doc.set("toteboxes", doc.createNode([]));
    list = doc.get("toteboxes");
  }
  if (!isSeq(list) || !isMap(doc.contents))
    throw new OrchError("ORCH_ERR_CONFIG_INVALID", "toteboxes must be a list");
  list.add(doc.createNode(entry));
  writeFileSync(path, doc.toString());
}

main().catch((e: unknown) => {
  const err = e as { code?: string; message?: string; detail?: unknown };
  const where = err.detail ? ` ${JSON.stringify(err.detail)}` : "";
  console.error(`os-orchestration: ${err.code ?? "error"}: ${err.message ?? String(e)}${where}`);
  process.exit(1);
});
