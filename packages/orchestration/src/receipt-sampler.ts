/**
 * Which Totebox receipts the aggregator checks the Ed25519 signature of.
 *
 * Every answer's receipt is always bound to its request, at no measurable cost: the signer's key
 * id must be the key pinned for the link the answer came over, and the capability id, request
 * hash, Arrow digest and Totebox id must be this request's (`verifyReceipt`, checkSignature off).
 * The signature adds nothing the aggregator relies on: the answer arrived over mutual TLS
 * authenticated by that same Totebox key, so whoever could sign wrongly here holds the key and
 * could as well sign a wrong answer correctly. The aggregator uses the receipt's row counts and
 * forwards it; the party that relies on its signature, the operator's console, verifies every one
 * before it calls a figure verified. Checking all of them here anyway cost one Ed25519
 * verification per Totebox per query: 150-330 µs on this loaded 2-core machine (bench psp: raw
 * verify; in isolation verifyReceipt took 326 µs with the signature, 27 µs without), more than
 * the whole per-Totebox cost of a bare TLS fan-out (bench/fanout.ts, ~80 µs), and about a third
 * of the aggregator's CPU per fan-out.
 *
 * So the aggregator checks a sample, as an early alarm for a Totebox that signs wrongly: the first
 * answer on every link, then each later one with probability 1/every, drawn from randomness of
 * its own (by default node:crypto; tests inject it) so a Totebox cannot tell which answers will
 * be checked.
 * A failure cuts the link and is counted, exactly as when every answer was checked.
 */
export class ReceiptSampler {
  /** 1 checks every receipt. */
  readonly every: number;
  readonly #random: () => number;
  readonly #seen = new WeakSet<object>();
  #checked = 0;
  #forwarded = 0;

  constructor(options: { every: number; random: () => number }) {
    if (!Number.isInteger(options.every) || options.every < 1) {
      throw new RangeError("receipt signature sampling must be a whole number ≥ 1");
    }
    this.every = options.every;
    this.#random = options.random;
  }

  /** Whether to check the signature of this answer, which arrived over `link`. */
  shouldCheck(link: object): boolean {
    let check: boolean;
    if (this.every === 1) check = true;
    else if (!this.#seen.has(link)) {
      this.#seen.add(link);
      check = true;
    } else check = this.#random() * this.every < 1;
    if (check) this.#checked++;
    else this.#forwarded++;
    return check;
  }

  /** Receipts whose signature was checked here, and those forwarded with their binding checked. */
  get counts(): { checked: number; forwarded: number } {
    return { checked: this.#checked, forwarded: this.#forwarded };
  }
}
