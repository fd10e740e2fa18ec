import { readFileSync, writeFileSync } from "node:fs";
import {
  formatDeviceId,
  type Identity,
  listenPsp,
  newPairingCode,
  type PspLink,
  pairingProof,
  rawEd25519PublicKey,
  serveSubject,
  verifyPairingProof,
} from "@os-orchestration/psp";
import { RpcTarget } from "capnweb";
import { isSeq, parseDocument } from "yaml";
import { OrchError } from "./errors.ts";
import { parseRegistry } from "./registry.ts";

/**
 * Pairing an operator's console with the aggregator: the short-code ceremony.
 *
 * The aggregator's owner runs `os-orchestration pair-operator`, which opens a one-shot pairing
 * listener (the serving aggregator is not involved and keeps no state) and prints the device ID
 * and a one-time code. The operator types both into `os-console pair`: the console pins the
 * device ID, proves the code (a proof bound to both certificates: a listener that is not the
 * aggregator, or a console in the middle, cannot use it) and checks the aggregator's proof in turn.
 * On success the operator's key is written to fleet.yaml, which the running aggregator reloads.
 * A wrong proof ends the ceremony: one guess per printed code.
 */
export interface OperatorPairingOptions {
  readonly identity: Identity;
  readonly configPath: string;
  readonly host: string;
  readonly port: number;
  readonly operator: { readonly id: string; readonly tenant: string; readonly role: "viewer" | "manager" };
  /** How long the code is valid, ms. Default 10 minutes. */
  readonly ttlMs?: number;
  /** Called once the listener is up, with what to read out to the operator. */
  readonly onOffer: (offer: { deviceId: string; code: string; host: string; port: number }) => void;
}

export interface PairingAnswer {
  readonly proof: Uint8Array;
  readonly operator: string;
  readonly tenant: string;
  readonly role: string;
  readonly deviceId: string;
}

class PairingMain extends RpcTarget {
  readonly #link: PspLink;
  readonly #try: (link: PspLink, proof: unknown) => PairingAnswer;

  constructor(link: PspLink, attempt: (link: PspLink, proof: unknown) => PairingAnswer) {
    super();
    this.#link = link;
    this.#try = attempt;
  }

  pair(proof: unknown): PairingAnswer {
    return this.#try(this.#link, proof);
  }
}

/** Runs one ceremony; resolves with the paired operator's key id once fleet.yaml holds it. */
export async function pairOperator(o: OperatorPairingOptions): Promise<{ keyId: string }> {
  const code = newPairingCode();
  let finish!: (v: { keyId: string }) => void;
  let fail!: (e: Error) => void;
  const done = new Promise<{ keyId: string }>((res, rej) => {
    finish = res;
    fail = rej;
  });
  let used = false;
  const attempt = (link: PspLink, proof: unknown): PairingAnswer => {
    if (used) throw new OrchError("ORCH_ERR_REQUEST_INVALID", "this pairing code was already used");
    used = true;
    const input = {
      code,
      initiatorFingerprint: link.peer.fingerprint,
      responderFingerprint: o.identity.fingerprint,
    };
    if (!(proof instanceof Uint8Array) || !verifyPairingProof({ ...input, side: "initiator" }, proof)) {
      fail(new OrchError("ORCH_ERR_REQUEST_INVALID", "wrong pairing proof: the code is burned"));
      throw new OrchError("ORCH_ERR_REQUEST_INVALID", "pairing proof refused; the code is no longer valid");
    }
    if (!link.peer.publicKey) throw new OrchError("ORCH_ERR_REQUEST_INVALID", "console has no Ed25519 key");
    addOperator(o.configPath, {
      id: o.operator.id,
      public_key: Buffer.from(rawEd25519PublicKey(link.peer.publicKey)).toString("hex"),
      tenant: o.operator.tenant,
      role: o.operator.role,
    });
    const keyId = link.peer.keyId;
    // Answer first, then finish: the console must receive our proof before the listener closes.
    link.once("frame-out", () => setImmediate(() => finish({ keyId })));
    return {
      proof: pairingProof({ ...input, side: "responder" }),
      operator: o.operator.id,
      tenant: o.operator.tenant,
      role: o.operator.role,
      deviceId: o.identity.fingerprint,
    };
  };
  const server = await listenPsp({
    identity: o.identity,
    role: "subject",
    host: o.host,
    port: o.port,
    // Anyone may try once: the code is the secret, and the proof binds the console's certificate.
    authorize: () => ({ ok: true, label: "pairing" }),
    onLink: (link) => serveSubject(link, new PairingMain(link, attempt)),
  });
  const timer = setTimeout(
    () => fail(new OrchError("ORCH_ERR_REQUEST_INVALID", "pairing code expired")),
    o.ttlMs ?? 600_000,
  );
  o.onOffer({ deviceId: formatDeviceId(o.identity.fingerprint), code, ...server.address });
  try {
    return await done;
  } finally {
    clearTimeout(timer);
    await server.close();
  }
}

/** Adds (or replaces, by id) an operator in fleet.yaml, keeping comments and layout; revalidates. */
export function addOperator(
  path: string,
  entry: { id: string; public_key: string; tenant: string; role: string },
): void {
  const doc = parseDocument(readFileSync(path, "utf8"));
  let list = doc.get("operators");
  if (!isSeq(list)) {
    doc.set("operators", doc.createNode([]));
    list = doc.get("operators");
  }
  if (!isSeq(list)) throw new OrchError("ORCH_ERR_CONFIG_INVALID", "operators must be a list");
  list.items = list.items.filter((it) => (it as { get?: (k: string) => unknown }).get?.("id") !== entry.id);
  list.add(doc.createNode(entry));
  const after = doc.toString();
  // A pairing must never leave the aggregator with a configuration it refuses: check first.
  parseRegistry(after, { source: path });
  writeFileSync(path, after);
}
