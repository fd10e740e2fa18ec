/**
 * Believable, deterministic sample books for one archive.
 *
 * `generateDemoData` fills an archive for its kind over the 36 calendar months ending with the
 * month of `asOf` (nothing is dated after `asOf`):
 *
 * - property: properties, units and leases (a rent roll; occupancy at `asOf` is a seeded
 *   85-98 %), monthly rent charges and receipts (a few tenants pay late, so receivables exist),
 *   operating expenses, property tax, insurance, capex, a mortgage per property with monthly
 *   interest and principal, quarterly owner distributions.
 * - company: customers invoiced every month (revenue with seasonality and growth, cost of goods,
 *   collections after payment terms), suppliers, payroll and overheads, a term loan.
 * - project: a development with a budget per cost account, land, contractor progress invoices
 *   following an S-curve, paid after 30 days, funded by sponsor equity then construction loan
 *   draws, capitalised interest.
 * - fund: investors' capital calls, portfolio investments, quarterly valuations, income, exits
 *   and distributions, management fees.
 * - household: salaries, card spending, a home mortgage, savings and investments.
 *
 * Every kind also gets intercompany balances with `peers` (see "The intercompany rule" below)
 * and a revolving credit line drawn at a month end when cash falls under a floor (so cash never
 * ends a month negative) and repaid when cash is ample.
 *
 * Determinism: every random choice comes from mulberry32 streams seeded by SHA-256 of
 * (seed, entity id, purpose); no clock, no Math.random. The same options give a byte-identical
 * journal (same head hash). Use ONE seed for all archives of a demo estate: the entity id already
 * makes each archive's data different, and intercompany mirroring needs the shared seed.
 *
 * Size: `scale` multiplies the population (properties, customers, contractors, investors, card
 * spending). Measured journal lines per unit of scale (at scale 10): property ~6.8k, company
 * ~8.5k, project ~5.6k, fund ~2.6k, household ~5.1k. 1,000,000 lines is scale ~150 for a property
 * archive (983k lines at 145) and ~115 for a company (949k at 108). Everything is inserted in one
 * SQLite transaction with cached prepared statements; 1M property lines took ~37 s on a loaded
 * 2-core machine (see demo-data.test.ts, TOTEBOX_LARGE_TESTS=1).
 *
 * ## The intercompany rule
 *
 * For two entities A and B (any kinds) with a shared seed and asOf, `intercompanyPair` derives
 * everything from SHA-256("ic|seed|lo|hi"), lo/hi being the two ids in code-unit order, so each
 * side computes the same pair on its own:
 * - which one is the creditor (lent money and charges management fees) and which the debtor;
 * - a loan in the first months, repaid 5 % every 6 months; a monthly management recharge;
 *   quarterly settlements of the recharges outstanding;
 * - whether the pair MISMATCHES: 1 pair in INTERCOMPANY_MISMATCH_ONE_IN (5), decided by
 *   SHA-256("icm|seed|lo|hi") mod 5 = 0. A mismatched pair has exactly one side whose books differ
 *   from the agreed events, in one of three seeded ways: the debtor has not booked the last
 *   recharge (cut-off), the creditor posted one recharge with a wrong amount (a multiple of 9,
 *   like a transposition), or the creditor has not applied the last settlement received.
 *
 * `expectedIntercompanyBalance(A, B, seed, asOf)` is A's balance with B as A's own books record
 * it (intercompany lines with counterparty B: positive means B owes A). The pair reconciles
 * exactly when expected(A, B) + expected(B, A) = 0.
 */
import { createHash } from "node:crypto";
import { ToteboxError } from "./errors.ts";
import {
  type AccountInput,
  addAccounts,
  addCounterparties,
  appendTransactions,
  type CounterpartyInput,
  isIsoDate,
  type JournalLineInput,
  type JournalTxInput,
} from "./ledger.ts";
import {
  type Db,
  ENTITY_KINDS,
  type EntityKind,
  initEntity,
  type PropertyType,
  readEntity,
} from "./schema.ts";

export interface DemoPeer {
  entityId: string;
  name: string;
}

export interface DemoDataOptions {
  kind: EntityKind;
  /** Shared by every archive of a demo estate (see the intercompany rule). Any safe integer. */
  seed: number;
  /** Population multiplier, default 1 (~10k journal lines for property and company). */
  scale?: number;
  entityId: string;
  /** Name of the entity when the archive has no entity row yet. */
  name?: string;
  /** ISO 4217 currency when the archive has no entity row yet. Default "USD". */
  currency?: string;
  peers?: readonly DemoPeer[];
  /** Last day of the books, YYYY-MM-DD. */
  asOf: string;
}

export interface DemoDataSummary {
  kind: EntityKind;
  entityId: string;
  firstDate: string;
  lastDate: string;
  transactions: number;
  lines: number;
  accounts: number;
  counterparties: number;
  properties: number;
  units: number;
  leases: number;
  occupiedUnits: number;
  peers: number;
}

/** Bounds on generator options. */
export const DEMO_LIMITS = {
  /** Largest scale (~10M lines for a property archive). */
  maxScale: 1000,
  /** Most peers for intercompany balances. */
  maxPeers: 1000,
  /** Longest entity id (counterparty ids are "entity:" + id, at most 128 characters). */
  maxEntityIdLength: 100,
} as const;

/** Number of months of books. */
export const DEMO_MONTHS = 36;

/** One intercompany pair in INTERCOMPANY_MISMATCH_ONE_IN does not reconcile. */
export const INTERCOMPANY_MISMATCH_ONE_IN = 5;

// ---------------------------------------------------------------------------------------------
// Seeded randomness

/** mulberry32: a tiny, fast 32-bit PRNG, good enough for sample data (not for secrets). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** First 32 bits of SHA-256(text): how seeds are derived from (seed, ids, purpose). */
export function hash32(text: string): number {
  return createHash("sha256").update(text, "utf8").digest().readUInt32BE(0);
}

class Rng {
  readonly #next: () => number;

  constructor(seed: number) {
    this.#next = mulberry32(seed);
  }

  static for(...parts: readonly (string | number)[]): Rng {
    return new Rng(hash32(["totebox-demo", ...parts].join("|")));
  }

  float(): number {
    return this.#next();
  }

  /** Uniform in [lo, hi). */
  range(lo: number, hi: number): number {
    return lo + (hi - lo) * this.#next();
  }

  /** Uniform integer in [lo, hi], both inclusive. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.#next() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.#next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.#next() * items.length)]!;
  }

  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = Math.floor(this.#next() * (i + 1));
      [items[i], items[j]] = [items[j]!, items[i]!];
    }
    return items;
  }
}

// ---------------------------------------------------------------------------------------------
// Calendar (UTC day numbers)

const MS_PER_DAY = 86_400_000;

function toDay(iso: string): number {
  return (
    Date.UTC(Number(iso.slice(0, 4)), Number(iso.slice(5, 7)) - 1, Number(iso.slice(8, 10))) / MS_PER_DAY
  );
}

function isoOf(day: number): string {
  return new Date(day * MS_PER_DAY).toISOString().slice(0, 10);
}

/** First day of the month `offset` months after the month containing `day`. */
function monthFirst(day: number, offset = 0): number {
  const d = new Date(day * MS_PER_DAY);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + offset, 1) / MS_PER_DAY;
}

interface Month {
  index: number;
  year: number;
  /** 1-12 */
  month: number;
  first: number;
  last: number;
  /** "YYYY-MM" */
  label: string;
}

/** The DEMO_MONTHS months ending with the month of asOf. */
function demoMonths(asOf: string): Month[] {
  const asOfDay = toDay(asOf);
  const months: Month[] = [];
  for (let i = 0; i < DEMO_MONTHS; i++) {
    const first = monthFirst(asOfDay, i - DEMO_MONTHS + 1);
    const d = new Date(first * MS_PER_DAY);
    months.push({
      index: i,
      year: d.getUTCFullYear(),
      month: d.getUTCMonth() + 1,
      first,
      last: monthFirst(first, 1) - 1,
      label: isoOf(first).slice(0, 7),
    });
  }
  return months;
}

/** Day `dom` (1-based) of a month, clamped to its last day. */
function dayOfMonth(m: Month, dom: number): number {
  return Math.min(m.first + dom - 1, m.last);
}

/** Whole currency units to minor units (the archive's amounts are cents). */
const units = (n: number): number => Math.round(n) * 100;

// ---------------------------------------------------------------------------------------------
// The books being written: transactions buffered per month, sorted by date, then appended.

type Line = [account: string, amount: number, counterparty?: string | null, memo?: string];

class Books {
  readonly asOfDay: number;
  readonly balances = new Map<string, number>();
  #pending: { day: number; order: number; memo: string; lines: Line[] }[] = [];
  #order = 0;
  #count = 0;

  constructor(asOfDay: number) {
    this.asOfDay = asOfDay;
  }

  /** Records a transaction; one dated after asOf has not happened yet and is dropped. */
  add(day: number, memo: string, lines: Line[]): boolean {
    if (day > this.asOfDay) return false;
    const kept = lines.filter((l) => l[1] !== 0);
    if (kept.length < 2) return false;
    for (const [account, amount] of kept)
      this.balances.set(account, (this.balances.get(account) ?? 0) + amount);
    this.#pending.push({ day, order: this.#order++, memo, lines: kept });
    return true;
  }

  balance(account: string): number {
    return this.balances.get(account) ?? 0;
  }

  /**
   * The lowest running balance of `account` over the buffered (not yet flushed) transactions in
   * date order, and the earliest buffered day: where a month's cash would dip lowest.
   */
  lowestPending(account: string): { lowest: number; firstDay: number | null } {
    const sorted = [...this.#pending].sort((a, b) => a.day - b.day || a.order - b.order);
    let delta = 0;
    for (const t of sorted) for (const [acc, amount] of t.lines) if (acc === account) delta += amount;
    let running = this.balance(account) - delta;
    let lowest = running;
    for (const t of sorted) {
      for (const [acc, amount] of t.lines) if (acc === account) running += amount;
      lowest = Math.min(lowest, running);
    }
    return { lowest, firstDay: sorted[0]?.day ?? null };
  }

  /** The buffered transactions in date order (stable), with sequential ids. */
  *flush(): Generator<JournalTxInput> {
    const batch = this.#pending.sort((a, b) => a.day - b.day || a.order - b.order);
    this.#pending = [];
    for (const t of batch) {
      this.#count++;
      const date = isoOf(t.day);
      const lines: JournalLineInput[] = t.lines.map(([account, amount, counterparty, memo]) => ({
        account,
        amount,
        counterparty: counterparty ?? null,
        memo: memo ?? "",
      }));
      yield {
        id: `demo-${String(this.#count).padStart(8, "0")}`,
        date,
        memo: t.memo,
        source: "demo",
        // Deterministic recording time: the evening of the accounting date.
        createdAt: `${date}T18:00:00.000Z`,
        lines,
      };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Chart of accounts shared by every kind

const COMMON_ACCOUNTS: AccountInput[] = [
  { code: "1000", name: "Operating cash", class: "asset", subtype: "cash" },
  { code: "1100", name: "Receivables", class: "asset", subtype: "receivable" },
  { code: "1300", name: "Due from related entities", class: "asset", subtype: "intercompany" },
  { code: "2000", name: "Accounts payable", class: "liability", subtype: "payable" },
  { code: "2300", name: "Due to related entities", class: "liability", subtype: "intercompany" },
  { code: "2510", name: "Revolving credit facility", class: "liability", subtype: "debt" },
  { code: "3000", name: "Owner's capital", class: "equity", subtype: "capital" },
  { code: "3100", name: "Distributions", class: "equity", subtype: "distribution" },
  { code: "4900", name: "Intercompany management fees", class: "income", subtype: "revenue" },
  { code: "6900", name: "Intercompany charges", class: "expense", subtype: "operating" },
  { code: "7000", name: "Interest expense", class: "expense", subtype: "interest" },
  { code: "7100", name: "Bank fees", class: "expense", subtype: "operating" },
];

const BANK = "bank-revolver";
const COMMON_COUNTERPARTIES: CounterpartyInput[] = [
  { id: BANK, name: "Harbor Commercial Bank", kind: "lender" },
];

// ---------------------------------------------------------------------------------------------
// Names

// biome-ignore format: word lists read better packed
const FIRST = [
  "Ava", "Liam", "Noah", "Emma", "Olivia", "Mia", "Lucas", "Amir", "Sofia", "Yuki", "Chen", "Priya", "Mateo",
  "Zara", "Elena", "Omar", "Hannah", "Jonas", "Leila", "Ravi", "Nora", "Felix", "Ines", "Tariq", "Grace", "Ivan",
  "Maya", "Kofi", "Lena", "Diego",
];
// biome-ignore format: word lists read better packed
const LAST = [
  "Okafor", "Schmidt", "Nguyen", "Garcia", "Rossi", "Kowalski", "Haddad", "Tanaka", "Silva", "Murphy", "Novak",
  "Jensen", "Patel", "Dubois", "Kim", "Andersen", "Costa", "Fischer", "Ali", "Moreau", "Larsen", "Russo", "Byrne",
  "Sato", "Mendes",
];
// biome-ignore format: word lists read better packed
const CO_A = [
  "Northwind", "Bluebird", "Cedar", "Summit", "Harbor", "Evergreen", "Granite", "Lumen", "Atlas", "Brightwater",
  "Oakridge", "Silverline", "Redwood", "Kestrel", "Meridian", "Pioneer", "Riverstone", "Sable", "Tidewater",
  "Vantage",
];
// biome-ignore format: word lists read better packed
const CO_B = [
  "Dental", "Logistics", "Analytics", "Bakery", "Fitness", "Legal", "Design", "Pharmacy", "Studios", "Engineering",
  "Foods", "Optics", "Robotics", "Consulting", "Outfitters",
];
const CO_SUFFIX = ["LLC", "Ltd", "Inc", "GmbH", "& Co"];
// biome-ignore format: word lists read better packed
const STREET = [
  "Maple", "Harbor", "Cedar", "Linden", "Willow", "Granite", "Elm", "Chestnut", "Aspen", "Birch", "Juniper",
  "Magnolia", "Orchard", "Riverside", "Hillcrest", "Lakeview", "Parkside", "Sunset", "Union", "Market",
];
const BUILDING = [
  "Court",
  "House",
  "Plaza",
  "Lofts",
  "Commons",
  "Tower",
  "Yards",
  "Gardens",
  "Works",
  "Exchange",
];

const personName = (r: Rng): string => `${r.pick(FIRST)} ${r.pick(LAST)}`;
const companyName = (r: Rng): string => `${r.pick(CO_A)} ${r.pick(CO_B)} ${r.pick(CO_SUFFIX)}`;

// ---------------------------------------------------------------------------------------------
// Kind models

interface Model {
  accounts: AccountInput[];
  counterparties: CounterpartyInput[];
  /** Master data (properties, units, leases, budgets), inserted before the journal. */
  setup(db: Db): { properties: number; units: number; leases: number; occupiedUnits: number };
  opening(books: Books, day: number): void;
  month(m: Month, books: Books): void;
  /** Month-end cash floor under which the revolver is drawn (minor units). */
  cashFloor: number;
}

interface Ctx {
  seed: number;
  entityId: string;
  scale: number;
  months: Month[];
  asOfDay: number;
}

const noSetup = (): { properties: number; units: number; leases: number; occupiedUnits: number } => ({
  properties: 0,
  units: 0,
  leases: 0,
  occupiedUnits: 0,
});

/** Monthly annuity payment for a loan (minor units). */
function annuity(principal: number, annualRate: number, months: number): number {
  const r = annualRate / 12;
  return Math.round((principal * r) / (1 - (1 + r) ** -months));
}

// --- property --------------------------------------------------------------------------------

interface UnitSpec {
  id: string;
  propertyId: string;
  type: string;
  area: number;
  marketRent: number;
}

interface LeaseSpec {
  id: string;
  unitId: string;
  tenant: string;
  start: number;
  end: number;
  rent: number;
}

interface PropertySpec {
  id: string;
  name: string;
  type: PropertyType;
  acquired: number;
  value: number;
  lender: string;
  mortgage: number;
  rate: number;
  payment: number;
  units: UnitSpec[];
}

const UNIT_MIX: Record<PropertyType, { count: [number, number]; types: [string, number, number, number][] }> =
  {
    // [unit type, min sqm, max sqm, monthly rent per sqm in currency units]
    residential: {
      count: [20, 70],
      types: [
        ["studio", 28, 38, 27],
        ["1br", 40, 55, 24],
        ["2br", 60, 80, 21],
        ["3br", 85, 110, 19],
      ],
    },
    office: {
      count: [8, 24],
      types: [
        ["office-suite", 80, 250, 32],
        ["office-floor", 300, 700, 28],
      ],
    },
    retail: {
      count: [6, 18],
      types: [
        ["shop", 50, 150, 45],
        ["anchor", 400, 1200, 26],
      ],
    },
    industrial: { count: [3, 8], types: [["warehouse", 800, 3500, 9]] },
    mixed: {
      count: [15, 45],
      types: [
        ["1br", 40, 55, 24],
        ["2br", 60, 80, 21],
        ["shop", 50, 150, 40],
      ],
    },
  };

function propertyModel(ctx: Ctx): Model {
  const r = Rng.for(ctx.seed, ctx.entityId, "property");
  const nProps = Math.max(1, Math.round(3 * ctx.scale));
  const start = ctx.months[0]!.first;
  const counterparties: CounterpartyInput[] = [
    { id: "lender-1", name: "First Federal Bank", kind: "lender" },
    { id: "lender-2", name: "Meridian Mortgage Capital", kind: "lender" },
    { id: "v-maint", name: "Acme Building Services", kind: "vendor" },
    { id: "v-util", name: "City Water & Power", kind: "vendor" },
    { id: "v-pm", name: "Prime Property Management", kind: "vendor" },
    { id: "v-ins", name: "SafeHarbor Insurance", kind: "vendor" },
    { id: "v-tax", name: "County Tax Collector", kind: "vendor" },
    { id: "v-capex", name: "BuildRight Contractors", kind: "vendor" },
  ];
  const properties: PropertySpec[] = [];
  const allUnits: UnitSpec[] = [];
  for (let p = 1; p <= nProps; p++) {
    const type = r.pick<PropertyType>([
      "residential",
      "residential",
      "residential",
      "office",
      "retail",
      "mixed",
      "industrial",
    ]);
    const mix = UNIT_MIX[type];
    const id = `P${String(p).padStart(3, "0")}`;
    const unitsHere: UnitSpec[] = [];
    const n = r.int(mix.count[0], mix.count[1]);
    for (let u = 1; u <= n; u++) {
      const [utype, amin, amax, rate] = r.pick(mix.types);
      const area = Math.round(r.range(amin, amax) * 2) / 2;
      unitsHere.push({
        id: `${id}-U${String(u).padStart(3, "0")}`,
        propertyId: id,
        type: utype,
        area,
        marketRent: units(area * rate * r.range(0.9, 1.1)),
      });
    }
    const annualRent = unitsHere.reduce((s, u) => s + u.marketRent * 12, 0);
    const value = Math.round(annualRent / r.range(0.05, 0.07) / 100_000) * 100_000;
    const mortgage = Math.round((value * r.range(0.5, 0.65)) / 100_000) * 100_000;
    const rate = Math.round(r.range(3.5, 6.5) * 100) / 10_000;
    properties.push({
      id,
      name: `${r.pick(STREET)} ${r.pick(BUILDING)}`,
      type,
      acquired: start - r.int(200, 4000),
      value,
      lender: r.pick(["lender-1", "lender-2"]),
      mortgage,
      rate,
      payment: annuity(mortgage, rate, 300),
      units: unitsHere,
    });
    allUnits.push(...unitsHere);
  }

  // Leases, built backwards from asOf. Exactly round(occupancy * units) units are let at asOf.
  const occupancy = r.range(0.86, 0.97);
  const occupiedIds = new Set(
    r.shuffle(allUnits.map((u) => u.id)).slice(0, Math.round(occupancy * allUnits.length)),
  );
  const asOfMonth = monthFirst(ctx.asOfDay);
  const leases: LeaseSpec[] = [];
  let tenantNo = 0;
  const residentialTypes = new Set(["studio", "1br", "2br", "3br"]);
  for (const u of allUnits) {
    const commercial = !residentialTypes.has(u.type);
    const terms = commercial ? [36, 60, 60, 120] : [12, 12, 24, 36];
    let tenant = "";
    const newTenant = (): string => {
      tenantNo++;
      const id = `T${String(tenantNo).padStart(6, "0")}`;
      counterparties.push({ id, name: commercial ? companyName(r) : personName(r), kind: "tenant" });
      return id;
    };
    // Leases start on a 1st and end on a month's last day. The newest is placed first (let at
    // asOf, or ended 0-5 months before), then earlier ones going back past the books' start.
    let term = r.pick(terms);
    let end: number;
    let leaseStart: number;
    if (occupiedIds.has(u.id)) {
      const elapsed = r.int(0, term - 1);
      leaseStart = monthFirst(asOfMonth, -elapsed);
      end = monthFirst(leaseStart, term) - 1;
    } else {
      end = monthFirst(asOfMonth, -r.int(0, 5)) - 1;
      leaseStart = monthFirst(end, -term + 1);
    }
    const chain: { start: number; end: number }[] = [];
    for (;;) {
      chain.push({ start: leaseStart, end });
      if (leaseStart <= start) break;
      const gap = r.chance(0.55) ? 0 : r.int(1, 3);
      end = monthFirst(leaseStart, -gap) - 1;
      term = r.pick(terms);
      leaseStart = monthFirst(end, -term + 1);
    }
    chain.reverse();
    let previousEnd = -1;
    for (const [i, l] of chain.entries()) {
      // A renewal without a gap keeps the tenant 60 % of the time.
      if (!(tenant && l.start === previousEnd + 1 && r.chance(0.6))) tenant = newTenant();
      // Rent today is the market rent; earlier leases were cheaper by ~3 % a year.
      const yearsAgo = (asOfMonth - l.start) / 365;
      leases.push({
        id: `${u.id}-L${i + 1}`,
        unitId: u.id,
        tenant,
        start: l.start,
        end: l.end,
        rent: units((u.marketRent / 100) * 1.03 ** -Math.max(0, yearsAgo) * r.range(0.97, 1.03)),
      });
      previousEnd = l.end;
    }
  }
  const leasesByProperty = new Map<string, LeaseSpec[]>();
  for (const l of leases) {
    const pid = l.unitId.slice(0, l.unitId.indexOf("-"));
    let list = leasesByProperty.get(pid);
    if (!list) {
      list = [];
      leasesByProperty.set(pid, list);
    }
    list.push(l);
  }

  const ops = Rng.for(ctx.seed, ctx.entityId, "property-ops");
  const mortgageBalance = new Map<string, number>();
  /** Rent charged and not yet received, per lease: late payers pay the month after. */
  const arrears = new Map<string, number>();
  let monthlyRentTotal = 0;

  return {
    accounts: [
      ...COMMON_ACCOUNTS,
      { code: "1500", name: "Investment property", class: "asset", subtype: "fixed_asset" },
      { code: "1550", name: "Building improvements", class: "asset", subtype: "fixed_asset" },
      { code: "2500", name: "Mortgage loans", class: "liability", subtype: "debt" },
      { code: "4000", name: "Rental income", class: "income", subtype: "rent" },
      { code: "6000", name: "Repairs and maintenance", class: "expense", subtype: "operating" },
      { code: "6100", name: "Utilities", class: "expense", subtype: "operating" },
      { code: "6200", name: "Property management fees", class: "expense", subtype: "operating" },
      { code: "6300", name: "Insurance", class: "expense", subtype: "operating" },
      { code: "6400", name: "Property taxes", class: "expense", subtype: "tax" },
    ],
    counterparties,
    cashFloor: units(Math.max(50_000, allUnits.length * 300)),
    setup(db) {
      const insP = db.prepare<[string, string, string, string, string]>(
        "INSERT INTO properties (id, name, property_type, address, acquired) VALUES (?, ?, ?, ?, ?)",
      );
      const insU = db.prepare<[string, string, string, number, number]>(
        "INSERT INTO units (id, property_id, unit_type, area_sqm, market_rent) VALUES (?, ?, ?, ?, ?)",
      );
      const insL = db.prepare<[string, string, string, string, string, number]>(
        "INSERT INTO leases (id, unit_id, tenant_id, start_date, end_date, monthly_rent) VALUES (?, ?, ?, ?, ?, ?)",
      );
      for (const p of properties) {
        insP.run(p.id, p.name, p.type, `${r.int(1, 980)} ${p.name.split(" ")[0]} Street`, isoOf(p.acquired));
        for (const u of p.units) insU.run(u.id, p.id, u.type, u.area, u.marketRent);
      }
      for (const l of leases) insL.run(l.id, l.unitId, l.tenant, isoOf(l.start), isoOf(l.end), l.rent);
      return {
        properties: properties.length,
        units: allUnits.length,
        leases: leases.length,
        occupiedUnits: occupiedIds.size,
      };
    },
    opening(books, day) {
      const lines: Line[] = [];
      let equity = 0;
      for (const p of properties) {
        lines.push(["1500", p.value, null, p.name]);
        lines.push(["2500", -p.mortgage, p.lender, `Mortgage ${p.name}`]);
        mortgageBalance.set(p.id, p.mortgage);
        equity += p.value - p.mortgage;
      }
      const cash = units(allUnits.length * 2_500);
      lines.push(["1000", cash]);
      lines.push(["3000", -(equity + cash), null, "Owner's equity at opening"]);
      books.add(day, "Opening balances", lines);
    },
    month(m, books) {
      monthlyRentTotal = 0;
      for (const p of properties) {
        const active = (leasesByProperty.get(p.id) ?? []).filter(
          (l) => l.start <= m.first && l.end >= m.first,
        );
        // Rent charges on the 1st: one receivable line per lease, one income line.
        const charge: Line[] = [];
        let rentTotal = 0;
        for (const l of active) {
          charge.push(["1100", l.rent, l.tenant, l.unitId]);
          rentTotal += l.rent;
        }
        charge.push(["4000", -rentTotal, null, `Rent ${m.label}`]);
        books.add(m.first, `Rent charges ${p.name} ${m.label}`, charge);
        monthlyRentTotal += rentTotal;
        // Receipts on the 5th: most pay on time, ~4 % a month late, ~0.5 % not at all.
        const receipt: Line[] = [];
        let received = 0;
        for (const l of active) {
          const late = arrears.get(l.id) ?? 0;
          const roll = ops.float();
          if (roll < 0.955) {
            receipt.push(["1100", -(l.rent + late), l.tenant, l.unitId]);
            received += l.rent + late;
            arrears.delete(l.id);
          } else if (roll < 0.995) arrears.set(l.id, late + l.rent);
          else if (late > 0) arrears.set(l.id, late);
        }
        receipt.unshift(["1000", received]);
        books.add(dayOfMonth(m, 5), `Rent receipts ${p.name} ${m.label}`, receipt);

        const n = p.units.length;
        const spend = (day: number, account: string, vendor: string, amount: number, memo: string): void => {
          books.add(day, `${memo} ${p.name}`, [
            [account, amount, vendor],
            ["1000", -amount],
          ]);
        };
        spend(dayOfMonth(m, ops.int(8, 26)), "6000", "v-maint", units(n * ops.range(15, 45)), "Repairs");
        spend(
          dayOfMonth(m, 20),
          "6100",
          "v-util",
          units(n * ops.range(18, 30) * (m.month <= 2 || m.month === 12 ? 1.3 : 1)),
          "Utilities",
        );
        spend(dayOfMonth(m, 10), "6200", "v-pm", Math.round(rentTotal * 0.05), "Management fee");
        if (m.month === 1)
          spend(dayOfMonth(m, 15), "6300", "v-ins", units(n * ops.range(140, 220)), "Insurance premium");
        if (m.month % 3 === 0)
          spend(
            dayOfMonth(m, 28),
            "6400",
            "v-tax",
            Math.round((p.value * 0.011) / 4 / 100) * 100,
            "Property tax",
          );
        if (ops.chance(0.04))
          spend(
            dayOfMonth(m, ops.int(1, 28)),
            "1550",
            "v-capex",
            units(n * ops.range(400, 2500)),
            "Capital works",
          );

        // Mortgage on the 15th: interest on the balance, the rest repays principal.
        const bal = mortgageBalance.get(p.id) ?? 0;
        if (bal > 0) {
          const interest = Math.round((bal * p.rate) / 12);
          const principal = Math.min(bal, p.payment - interest);
          const ok = books.add(dayOfMonth(m, 15), `Mortgage payment ${p.name}`, [
            ["7000", interest, p.lender, "Interest"],
            ["2500", principal, p.lender, "Principal"],
            ["1000", -(interest + principal)],
          ]);
          if (ok) mortgageBalance.set(p.id, bal - principal);
        }
      }
      // Quarterly distribution of cash above three months of rent plus the floor.
      if (m.month % 3 === 0) {
        const keep = 3 * monthlyRentTotal + units(Math.max(50_000, allUnits.length * 300));
        const excess = books.balance("1000") - keep;
        if (excess > 0) {
          const amount = Math.floor((excess * 0.7) / 100_000) * 100_000;
          books.add(dayOfMonth(m, 28), `Owner distribution Q${m.month / 3} ${m.year}`, [
            ["3100", amount],
            ["1000", -amount],
          ]);
        }
      }
    },
  };
}

// --- company ---------------------------------------------------------------------------------

function companyModel(ctx: Ctx): Model {
  const r = Rng.for(ctx.seed, ctx.entityId, "company");
  const nCustomers = Math.max(4, Math.round(19 * ctx.scale));
  const counterparties: CounterpartyInput[] = [
    { id: "lender-term", name: "Atlas Business Bank", kind: "lender" },
    { id: "sup-1", name: `${r.pick(CO_A)} Components Ltd`, kind: "vendor" },
    { id: "sup-2", name: `${r.pick(CO_A)} Materials Inc`, kind: "vendor" },
    { id: "v-landlord", name: `${r.pick(STREET)} ${r.pick(BUILDING)} Landlord LLC`, kind: "vendor" },
    { id: "v-software", name: "Cloudworks SaaS", kind: "vendor" },
    { id: "v-marketing", name: "Brightline Media", kind: "vendor" },
    { id: "v-legal", name: "Moreau & Patel LLP", kind: "vendor" },
    { id: "payroll", name: "Payroll clearing", kind: "employee" },
  ];
  const customers: { id: string; perMonth: number; ticket: number; product: boolean; terms: number }[] = [];
  for (let c = 1; c <= nCustomers; c++) {
    const id = `C${String(c).padStart(5, "0")}`;
    counterparties.push({ id, name: companyName(r), kind: "customer" });
    customers.push({
      id,
      perMonth: r.int(1, 4),
      ticket: r.range(800, 12_000),
      product: r.chance(0.6),
      terms: r.pick([15, 30, 30, 45, 60]),
    });
  }
  const growth = r.range(0.06, 0.22);
  const margin = r.range(0.35, 0.6);
  const loan = units(Math.max(250_000, nCustomers * 25_000 * r.range(0.5, 1.5)));
  const loanRate = Math.round(r.range(5, 9) * 100) / 10_000;
  const loanPayment = annuity(loan, loanRate, 84);
  let loanBalance = loan;
  const ops = Rng.for(ctx.seed, ctx.entityId, "company-ops");
  /** Collections scheduled per month index (invoices paid after their terms). */
  const collections = new Map<number, [day: number, customer: string, amount: number][]>();
  const payables = new Map<number, [day: number, vendor: string, amount: number][]>();
  const monthIndexOf = (day: number): number => {
    const d = new Date(day * MS_PER_DAY);
    const first = ctx.months[0]!;
    return (d.getUTCFullYear() - first.year) * 12 + d.getUTCMonth() + 1 - first.month;
  };
  const schedule = <T>(map: Map<number, T[]>, day: number, item: T): void => {
    const i = monthIndexOf(day);
    let list = map.get(i);
    if (!list) {
      list = [];
      map.set(i, list);
    }
    list.push(item);
  };
  const baseRevenue = customers.reduce((s, c) => s + c.perMonth * c.ticket, 0);

  return {
    accounts: [
      ...COMMON_ACCOUNTS,
      { code: "1200", name: "Inventory", class: "asset", subtype: "inventory" },
      { code: "1600", name: "Equipment", class: "asset", subtype: "fixed_asset" },
      { code: "2500", name: "Term loan", class: "liability", subtype: "debt" },
      { code: "4000", name: "Product revenue", class: "income", subtype: "revenue" },
      { code: "4100", name: "Services revenue", class: "income", subtype: "revenue" },
      { code: "5000", name: "Cost of goods sold", class: "expense", subtype: "cogs" },
      { code: "6000", name: "Salaries and wages", class: "expense", subtype: "payroll" },
      { code: "6100", name: "Office rent", class: "expense", subtype: "operating" },
      { code: "6200", name: "Software", class: "expense", subtype: "operating" },
      { code: "6300", name: "Marketing", class: "expense", subtype: "operating" },
      { code: "6400", name: "Professional fees", class: "expense", subtype: "operating" },
    ],
    counterparties,
    cashFloor: units(Math.max(40_000, baseRevenue * 0.5)),
    setup: noSetup,
    opening(books, day) {
      const inventory = units(baseRevenue * 1.5 * (1 - margin));
      const equipment = units(Math.max(60_000, baseRevenue * 2));
      const cash = units(baseRevenue * 2) + loan;
      books.add(day, "Opening balances", [
        ["1000", cash],
        ["1200", inventory],
        ["1600", equipment],
        ["2500", -loan, "lender-term", "Term loan"],
        ["3000", -(cash + inventory + equipment - loan), null, "Owner's equity at opening"],
      ]);
    },
    month(m, books) {
      const trend = (1 + growth) ** (m.index / 12);
      const season = 1 + 0.15 * Math.sin(((m.month - 3) / 12) * 2 * Math.PI);
      let revenue = 0;
      for (const c of customers) {
        for (let k = 0; k < c.perMonth; k++) {
          const day = dayOfMonth(m, ops.int(1, 28));
          const amount = units(c.ticket * trend * season * ops.range(0.6, 1.4));
          revenue += amount;
          const lines: Line[] = [
            ["1100", amount, c.id, "Invoice"],
            [c.product ? "4000" : "4100", -amount, c.id],
          ];
          if (c.product) {
            const cost = Math.round((amount * (1 - margin)) / 100) * 100;
            lines.push(["5000", cost], ["1200", -cost]);
          }
          if (books.add(day, `Invoice ${c.id} ${m.label}`, lines)) {
            // A few customers pay late; ~1 % of invoices are still open long after their terms.
            const payDay = day + c.terms + ops.int(-5, 20);
            if (!ops.chance(0.01)) schedule(collections, payDay, [payDay, c.id, amount]);
          }
        }
      }
      for (const [payDay, customer, amount] of collections.get(m.index) ?? []) {
        books.add(payDay, `Payment received ${customer}`, [
          ["1000", amount],
          ["1100", -amount, customer],
        ]);
      }
      // Restock what was sold, from a supplier, paid next month.
      const restock = units((revenue / 100) * (1 - margin) * 0.62 * ops.range(0.9, 1.1));
      const supplier = ops.pick(["sup-1", "sup-2"]);
      if (
        books.add(dayOfMonth(m, 12), `Purchase ${supplier} ${m.label}`, [
          ["1200", restock],
          ["2000", -restock, supplier],
        ])
      ) {
        schedule(payables, dayOfMonth(m, 12) + 30, [dayOfMonth(m, 12) + 30, supplier, restock]);
      }
      for (const [payDay, vendor, amount] of payables.get(m.index) ?? []) {
        books.add(payDay, `Supplier payment ${vendor}`, [
          ["2000", amount, vendor],
          ["1000", -amount],
        ]);
      }
      const base = baseRevenue * trend;
      const pay = (dom: number, account: string, vendor: string, amount: number, memo: string): void => {
        books.add(dayOfMonth(m, dom), `${memo} ${m.label}`, [
          [account, amount, vendor],
          ["1000", -amount],
        ]);
      };
      pay(25, "6000", "payroll", units(base * 0.3 * ops.range(0.98, 1.02)), "Payroll");
      pay(1, "6100", "v-landlord", units(Math.max(3_000, base * 0.04)), "Office rent");
      pay(
        3,
        "6200",
        "v-software",
        units(Math.max(400, base * 0.015 * ops.range(0.9, 1.1))),
        "Software subscriptions",
      );
      pay(ops.int(5, 25), "6300", "v-marketing", units(base * 0.05 * ops.range(0.5, 1.5)), "Marketing");
      if (ops.chance(0.3))
        pay(
          ops.int(5, 25),
          "6400",
          "v-legal",
          units(base * 0.03 * ops.range(0.5, 2)),
          "Legal and accounting",
        );
      pay(28, "7100", BANK, units(ops.range(40, 120)), "Bank fees");
      if (loanBalance > 0) {
        const interest = Math.round((loanBalance * loanRate) / 12);
        const principal = Math.min(loanBalance, loanPayment - interest);
        if (
          books.add(dayOfMonth(m, 20), `Term loan payment ${m.label}`, [
            ["7000", interest, "lender-term", "Interest"],
            ["2500", principal, "lender-term", "Principal"],
            ["1000", -(interest + principal)],
          ])
        ) {
          loanBalance -= principal;
        }
      }
      if (m.month === 12) {
        const excess = books.balance("1000") - units(base * 4);
        if (excess > 0) {
          const dividend = Math.floor((excess * 0.5) / 100_000) * 100_000;
          books.add(dayOfMonth(m, 30), `Dividend ${m.year}`, [
            ["3100", dividend],
            ["1000", -dividend],
          ]);
        }
      }
    },
  };
}

// --- project ---------------------------------------------------------------------------------

const PROJECT_COSTS: [code: string, name: string, share: number][] = [
  ["1620", "Hard costs: structure", 0.42],
  ["1621", "Hard costs: envelope", 0.14],
  ["1622", "Hard costs: services (MEP)", 0.18],
  ["1623", "Hard costs: fit-out", 0.12],
  ["1630", "Soft costs: design and engineering", 0.07],
  ["1631", "Soft costs: permits and fees", 0.03],
  ["1632", "Soft costs: project management", 0.04],
];

function projectModel(ctx: Ctx): Model {
  const r = Rng.for(ctx.seed, ctx.entityId, "project");
  const nContractors = Math.max(4, Math.round(40 * ctx.scale));
  const months = ctx.months.length;
  const land = units(r.range(2_000_000, 8_000_000) * Math.max(1, Math.sqrt(ctx.scale)));
  const construction = units(nContractors * r.range(400_000, 900_000));
  const overrun = r.range(-0.06, 0.12);
  const counterparties: CounterpartyInput[] = [
    { id: "lender-construction", name: "Pioneer Construction Finance", kind: "lender" },
    { id: "sponsor", name: "Sponsor equity", kind: "investor" },
    { id: "land-seller", name: `${r.pick(LAST)} Family Trust`, kind: "other" },
  ];
  const contractors: { id: string; from: number; to: number; share: number; codes: string[] }[] = [];
  let shares = 0;
  for (let c = 1; c <= nContractors; c++) {
    const id = `K${String(c).padStart(4, "0")}`;
    counterparties.push({ id, name: `${companyName(r)} (contractor)`, kind: "vendor" });
    const from = r.int(1, Math.max(2, months - 14));
    const share = r.range(0.5, 1.5);
    shares += share;
    contractors.push({
      id,
      from,
      to: Math.min(months - 1, from + r.int(8, 24)),
      share,
      codes: r.shuffle(PROJECT_COSTS.map((p) => p[0])).slice(0, r.int(3, 6)),
    });
  }
  const budget = construction;
  const loanLimit = Math.round((land + budget) * 0.6);
  const loanRate = Math.round(r.range(6, 9.5) * 100) / 10_000;
  let loanDrawn = 0;
  const ops = Rng.for(ctx.seed, ctx.entityId, "project-ops");
  const dueNextMonth: [string, number][] = [];
  const retentionHeld = new Map<string, number>();

  return {
    accounts: [
      ...COMMON_ACCOUNTS,
      { code: "1610", name: "Land", class: "asset", subtype: "fixed_asset" },
      ...PROJECT_COSTS.map(([code, name]) => ({
        code,
        name,
        class: "asset" as const,
        subtype: "fixed_asset" as const,
      })),
      { code: "1640", name: "Capitalised interest", class: "asset", subtype: "fixed_asset" },
      { code: "2100", name: "Retentions payable", class: "liability", subtype: "payable" },
      { code: "2500", name: "Construction loan", class: "liability", subtype: "debt" },
      { code: "6500", name: "Project overheads", class: "expense", subtype: "operating" },
    ],
    counterparties,
    cashFloor: units(250_000),
    setup(db) {
      const ins = db.prepare<[string, string, string, number, string, string]>(
        "INSERT INTO budgets (id, name, account, amount, start_date, end_date) VALUES (?, ?, ?, ?, ?, ?)",
      );
      const from = isoOf(ctx.months[0]!.first);
      const to = isoOf(monthFirst(ctx.months[months - 1]!.first, 6) - 1);
      ins.run("B-LAND", "Land acquisition", "1610", land, from, to);
      for (const [code, name, share] of PROJECT_COSTS) {
        ins.run(`B-${code}`, name, code, Math.round((budget * share) / 100) * 100, from, to);
      }
      ins.run(
        "B-CONT",
        "Contingency (hard costs)",
        "1620",
        Math.round((budget * 0.05) / 100) * 100,
        from,
        to,
      );
      return noSetup();
    },
    opening(books, day) {
      const equity = land + units(1_000_000) + Math.round(budget * 0.25);
      books.add(day, "Sponsor equity contribution", [
        ["1000", equity],
        ["3000", -equity, "sponsor"],
      ]);
      books.add(day + 3, "Land acquisition", [
        ["1610", land, "land-seller"],
        ["1000", -land],
      ]);
    },
    month(m, books) {
      // Pay last month's approved invoices (retention of 5 % is held back until completion).
      for (const [k, amount] of dueNextMonth.splice(0)) {
        books.add(dayOfMonth(m, 10), `Payment ${k}`, [
          ["2000", amount, k],
          ["1000", -amount],
        ]);
      }
      for (const c of contractors) {
        if (m.index < c.from || m.index > c.to) continue;
        // S-curve: progress peaks in the middle of the contractor's engagement.
        const span = c.to - c.from + 1;
        const x = (m.index - c.from + 0.5) / span;
        const weight = (Math.sin(Math.PI * x) * (Math.PI / 2)) / span;
        const claim = ((budget * (1 + overrun) * c.share) / shares) * weight * ops.range(0.85, 1.15);
        const lines: Line[] = [];
        let total = 0;
        for (const code of c.codes) {
          const part = units((claim / 100 / c.codes.length) * ops.range(0.6, 1.4));
          lines.push([code, part, c.id, `Progress claim ${m.label}`]);
          total += part;
        }
        const retention = Math.round((total * 0.05) / 100) * 100;
        lines.push(["2000", -(total - retention), c.id], ["2100", -retention, c.id, "Retention 5 %"]);
        if (books.add(dayOfMonth(m, 25), `Progress claim ${c.id} ${m.label}`, lines)) {
          dueNextMonth.push([c.id, total - retention]);
          retentionHeld.set(c.id, (retentionHeld.get(c.id) ?? 0) + retention);
        }
        // The retention is released (becomes payable) when the contractor's work is complete.
        const held = retentionHeld.get(c.id) ?? 0;
        if (m.index === c.to && held > 0) {
          if (
            books.add(dayOfMonth(m, 28), `Retention release ${c.id}`, [
              ["2100", held, c.id],
              ["2000", -held, c.id],
            ])
          ) {
            dueNextMonth.push([c.id, held]);
            retentionHeld.delete(c.id);
          }
        }
      }
      const overheads = units(ops.range(4_000, 12_000) * Math.max(1, Math.sqrt(ctx.scale)));
      books.add(dayOfMonth(m, 28), `Project overheads ${m.label}`, [
        ["6500", overheads],
        ["1000", -overheads],
      ]);
      // Interest on the drawn loan is capitalised; draws cover next month's payments.
      if (loanDrawn > 0) {
        const interest = Math.round((loanDrawn * loanRate) / 12);
        books.add(dayOfMonth(m, 27), `Construction loan interest ${m.label}`, [
          ["1640", interest, "lender-construction"],
          ["1000", -interest],
        ]);
      }
      const upcoming = dueNextMonth.reduce((s, [, a]) => s + a, 0);
      const need = upcoming + units(250_000) - books.balance("1000");
      if (need > 0 && loanDrawn < loanLimit) {
        const draw = Math.min(loanLimit - loanDrawn, Math.ceil(need / 10_000_000) * 10_000_000);
        if (
          books.add(dayOfMonth(m, 26), `Construction loan draw ${m.label}`, [
            ["1000", draw],
            ["2500", -draw, "lender-construction"],
          ])
        ) {
          loanDrawn += draw;
        }
      }
    },
  };
}

// --- fund ------------------------------------------------------------------------------------

function fundModel(ctx: Ctx): Model {
  const r = Rng.for(ctx.seed, ctx.entityId, "fund");
  // A fund with a feeder: many investors, so capital calls and distributions carry many lines.
  const nInvestors = Math.max(3, Math.round(100 * ctx.scale));
  const nCompanies = Math.max(3, Math.round(12 * ctx.scale));
  const counterparties: CounterpartyInput[] = [
    { id: "gp", name: "Fund manager (GP)", kind: "vendor" },
    { id: "admin", name: "Lumen Fund Administration", kind: "vendor" },
  ];
  const investors: { id: string; commitment: number }[] = [];
  for (let i = 1; i <= nInvestors; i++) {
    const id = `LP${String(i).padStart(4, "0")}`;
    const institutional = r.chance(0.4);
    counterparties.push({
      id,
      name: institutional ? `${companyName(r)} Pension` : personName(r),
      kind: "investor",
    });
    investors.push({ id, commitment: units(institutional ? r.range(2e6, 2e7) : r.range(1e5, 2e6)) });
  }
  const commitments = investors.reduce((s, i) => s + i.commitment, 0);
  const companies: {
    id: string;
    invested: number;
    /** What the fund plans to invest: about 75 % of commitments spread over the portfolio. */
    ticket: number;
    month: number;
    value: number;
    drift: number;
    exitMonth: number | null;
    yielding: boolean;
  }[] = [];
  for (let c = 1; c <= nCompanies; c++) {
    const id = `PC${String(c).padStart(4, "0")}`;
    counterparties.push({ id, name: `${r.pick(CO_A)} ${r.pick(CO_B)} Holdings`, kind: "other" });
    companies.push({
      id,
      invested: 0,
      ticket: Math.round((((commitments * 0.75) / nCompanies) * r.range(0.6, 1.4)) / 100_000) * 100_000,
      month: r.int(0, 20),
      value: 0,
      drift: r.range(-0.05, 0.09),
      exitMonth: r.chance(0.3) ? r.int(24, DEMO_MONTHS - 1) : null,
      yielding: r.chance(0.35),
    });
  }
  const ops = Rng.for(ctx.seed, ctx.entityId, "fund-ops");
  let called = 0;

  return {
    accounts: [
      ...COMMON_ACCOUNTS,
      { code: "1400", name: "Investments at fair value", class: "asset", subtype: "investment" },
      { code: "2500", name: "Subscription credit facility", class: "liability", subtype: "debt" },
      { code: "4100", name: "Dividend and interest income", class: "income", subtype: "revenue" },
      { code: "4500", name: "Unrealised gains (losses)", class: "income", subtype: "gain" },
      { code: "4600", name: "Realised gains (losses)", class: "income", subtype: "gain" },
      { code: "6000", name: "Management fees", class: "expense", subtype: "operating" },
      { code: "6100", name: "Fund administration", class: "expense", subtype: "operating" },
    ],
    counterparties,
    cashFloor: units(100_000),
    setup: noSetup,
    opening(books, day) {
      // Capital called before the books start: 10 % of commitments, held in cash.
      const lines: Line[] = [];
      let total = 0;
      for (const i of investors) {
        const share = Math.round((i.commitment * 0.1) / 100) * 100;
        lines.push(["3000", -share, i.id, "Capital called before opening"]);
        total += share;
      }
      lines.unshift(["1000", total]);
      if (books.add(day, "Opening balances", lines)) called += total;
    },
    month(m, books) {
      // Capital calls each quarter for what the next quarter's investments need.
      if (m.index % 3 === 0) {
        const planned = companies
          .filter((c) => c.month >= m.index && c.month < m.index + 3)
          .reduce((s, c) => s + c.ticket, 0);
        const fees = commitments * 0.005;
        const target = Math.min(commitments - called, Math.round(planned + fees));
        if (target > 0) {
          const lines: Line[] = [];
          let total = 0;
          for (const i of investors) {
            const share = Math.round((target * i.commitment) / commitments / 100) * 100;
            lines.push(["3000", -share, i.id, `Capital call ${m.label}`]);
            total += share;
          }
          lines.unshift(["1000", total]);
          if (books.add(dayOfMonth(m, 15), `Capital call ${m.label}`, lines)) called += total;
        }
        const fee = Math.round((commitments * 0.02) / 4 / 100) * 100;
        books.add(dayOfMonth(m, 20), `Management fee ${m.label}`, [
          ["6000", fee, "gp"],
          ["1000", -fee],
        ]);
        const admin = units(ops.range(8_000, 20_000));
        books.add(dayOfMonth(m, 21), `Administration ${m.label}`, [
          ["6100", admin, "admin"],
          ["1000", -admin],
        ]);
      }
      for (const c of companies) {
        if (c.month === m.index) {
          const amount = c.ticket;
          if (
            books.add(dayOfMonth(m, 18), `Investment ${c.id}`, [
              ["1400", amount, c.id],
              ["1000", -amount],
            ])
          ) {
            c.invested += amount;
            c.value += amount;
          }
        }
        if (c.value <= 0) continue;
        if (c.exitMonth === m.index) {
          const proceeds = Math.round((c.value * ops.range(0.9, 1.6)) / 100) * 100;
          if (
            books.add(dayOfMonth(m, 22), `Exit ${c.id}`, [
              ["1000", proceeds],
              ["1400", -c.value, c.id],
              ["4600", c.value - proceeds, c.id],
            ])
          ) {
            c.value = 0;
          }
          continue;
        }
        // Monthly marks to fair value; income quarterly from the yielding companies.
        const change = Math.round((c.value * (c.drift / 12 + ops.range(-0.015, 0.015))) / 100) * 100;
        if (
          books.add(m.last, `Valuation ${c.id} ${m.label}`, [
            ["1400", change, c.id],
            ["4500", -change, c.id],
          ])
        ) {
          c.value += change;
        }
        if (m.month % 3 === 0) {
          if (c.yielding) {
            const income = Math.round((c.invested * 0.015) / 100) * 100;
            books.add(dayOfMonth(m, 25), `Dividend ${c.id} ${m.label}`, [
              ["1000", income],
              ["4100", -income, c.id],
            ]);
          }
        }
      }
      // Distribute cash well above the floor to investors pro rata.
      if (m.month % 6 === 0) {
        const excess = books.balance("1000") - units(100_000) - commitments * 0.02;
        if (excess > commitments * 0.01) {
          const lines: Line[] = [];
          let total = 0;
          for (const i of investors) {
            const share = Math.round((excess * 0.8 * i.commitment) / commitments / 100) * 100;
            lines.push(["3100", share, i.id, `Distribution ${m.label}`]);
            total += share;
          }
          lines.push(["1000", -total]);
          books.add(dayOfMonth(m, 28), `Distribution ${m.label}`, lines);
        }
      }
    },
  };
}

// --- household -------------------------------------------------------------------------------

const SPENDING: [code: string, name: string, merchants: string[], lo: number, hi: number, weight: number][] =
  [
    ["6000", "Groceries", ["Harvest Market", "GreenLeaf Grocers", "Corner Deli"], 15, 180, 5],
    ["6100", "Dining", ["Luca's Trattoria", "Sakura Sushi", "Blue Door Cafe"], 12, 140, 3],
    ["6200", "Transport", ["Metro Transit", "FuelStop", "CityCab"], 5, 90, 3],
    ["6300", "Leisure", ["Cinema Paradiso", "Peak Climbing Gym", "Bookhaven"], 10, 160, 2],
    ["6400", "Household", ["HomeBase Supplies", "Linen & Co", "Fixit Hardware"], 10, 300, 2],
    ["6500", "Health", ["Riverside Pharmacy", "Smile Dental Clinic"], 10, 250, 1],
  ];

function householdModel(ctx: Ctx): Model {
  const r = Rng.for(ctx.seed, ctx.entityId, "household");
  const perMonth = Math.max(10, Math.round(70 * ctx.scale));
  const counterparties: CounterpartyInput[] = [
    { id: "employer-1", name: companyName(r), kind: "other" },
    { id: "employer-2", name: companyName(r), kind: "other" },
    { id: "mortgage-bank", name: "Harbor Savings Bank", kind: "lender" },
    { id: "card", name: "Meridian Visa", kind: "lender" },
    { id: "broker", name: "Granite Brokerage", kind: "other" },
    { id: "utility", name: "City Water & Power", kind: "vendor" },
    { id: "insurer", name: "SafeHarbor Insurance", kind: "vendor" },
    { id: "school", name: "Hillcrest Academy", kind: "vendor" },
  ];
  const merchants = new Map<string, string>();
  for (const [, , names] of SPENDING) {
    for (const n of names) {
      const id = `m-${n.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
      if (!merchants.has(n)) {
        merchants.set(n, id);
        counterparties.push({ id, name: n, kind: "vendor" });
      }
    }
  }
  const salary1 = units(r.range(4_000, 9_000) * Math.max(1, Math.sqrt(ctx.scale)));
  const salary2 = units(r.range(2_500, 7_000) * Math.max(1, Math.sqrt(ctx.scale)));
  const home = units(r.range(450_000, 1_200_000) * Math.max(1, Math.sqrt(ctx.scale)));
  const mortgage = Math.round((home * r.range(0.5, 0.75)) / 100_000) * 100_000;
  const rate = Math.round(r.range(3, 6) * 100) / 10_000;
  const payment = annuity(mortgage, rate, 300);
  let mortgageBalance = mortgage;
  const totalWeight = SPENDING.reduce((s, c) => s + c[5], 0);
  const ops = Rng.for(ctx.seed, ctx.entityId, "household-ops");

  return {
    accounts: [
      ...COMMON_ACCOUNTS,
      { code: "1010", name: "Savings account", class: "asset", subtype: "cash" },
      { code: "1400", name: "Brokerage investments", class: "asset", subtype: "investment" },
      { code: "1500", name: "Family home", class: "asset", subtype: "fixed_asset" },
      { code: "2500", name: "Home mortgage", class: "liability", subtype: "debt" },
      { code: "2600", name: "Credit card", class: "liability", subtype: "payable" },
      { code: "4000", name: "Salaries", class: "income", subtype: "revenue" },
      { code: "4100", name: "Investment income", class: "income", subtype: "revenue" },
      { code: "4500", name: "Investment gains (losses)", class: "income", subtype: "gain" },
      ...SPENDING.map(([code, name]) => ({
        code,
        name,
        class: "expense" as const,
        subtype: "operating" as const,
      })),
      { code: "6600", name: "Utilities", class: "expense", subtype: "operating" },
      { code: "6700", name: "Insurance", class: "expense", subtype: "operating" },
      { code: "6800", name: "Education", class: "expense", subtype: "operating" },
    ],
    counterparties,
    cashFloor: units(5_000),
    setup: noSetup,
    opening(books, day) {
      const checking = units(r.range(5_000, 20_000));
      const savings = units(r.range(20_000, 120_000));
      const investments = units(r.range(30_000, 400_000));
      books.add(day, "Opening balances", [
        ["1000", checking],
        ["1010", savings],
        ["1400", investments],
        ["1500", home],
        ["2500", -mortgage, "mortgage-bank"],
        ["3000", -(checking + savings + investments + home - mortgage), null, "Net worth at opening"],
      ]);
    },
    month(m, books) {
      const raise = 1.03 ** Math.floor(m.index / 12);
      for (const dom of [15, 28]) {
        books.add(dayOfMonth(m, dom), `Salary ${m.label}`, [
          ["1000", Math.round((salary1 * raise) / 200) * 100 + Math.round((salary2 * raise) / 200) * 100],
          ["4000", -Math.round((salary1 * raise) / 200) * 100, "employer-1"],
          ["4000", -Math.round((salary2 * raise) / 200) * 100, "employer-2"],
        ]);
      }
      let card = 0;
      for (let i = 0; i < perMonth; i++) {
        let pick = ops.float() * totalWeight;
        let cat = SPENDING[0]!;
        for (const c of SPENDING) {
          pick -= c[5];
          if (pick < 0) {
            cat = c;
            break;
          }
        }
        const [code, , names, lo, hi] = cat;
        const merchant = merchants.get(ops.pick(names))!;
        const amount = Math.round(ops.range(lo, hi) * 100);
        if (
          books.add(dayOfMonth(m, ops.int(1, 28)), `Card ${merchant.slice(2)}`, [
            [code, amount, merchant],
            ["2600", -amount, "card"],
          ])
        ) {
          card += amount;
        }
      }
      // The card statement is paid in full on the 5th of the next month.
      const statement = -books.balance("2600") - card;
      if (statement > 0) {
        books.add(dayOfMonth(m, 5), `Card statement ${m.label}`, [
          ["2600", statement, "card"],
          ["1000", -statement],
        ]);
      }
      const bill = (dom: number, account: string, payee: string, amount: number, memo: string): void => {
        books.add(dayOfMonth(m, dom), memo, [
          [account, amount, payee],
          ["1000", -amount],
        ]);
      };
      bill(18, "6600", "utility", units(ops.range(120, 380)), `Utilities ${m.label}`);
      if (m.month === 1) bill(10, "6700", "insurer", units(ops.range(1_500, 4_000)), `Insurance ${m.year}`);
      if (m.month === 9 || m.month === 1)
        bill(5, "6800", "school", units(ops.range(3_000, 9_000)), `School fees ${m.label}`);
      if (mortgageBalance > 0) {
        const interest = Math.round((mortgageBalance * rate) / 12);
        const principal = Math.min(mortgageBalance, payment - interest);
        if (
          books.add(dayOfMonth(m, 1), `Mortgage ${m.label}`, [
            ["7000", interest, "mortgage-bank"],
            ["2500", principal, "mortgage-bank"],
            ["1000", -(interest + principal)],
          ])
        ) {
          mortgageBalance -= principal;
        }
      }
      // Savings sweep and investing: keep ~2 months of salary in checking.
      const keep = Math.round(((salary1 + salary2) * raise * 2) / 100) * 100;
      const spare = books.balance("1000") - keep;
      if (spare > 0) {
        const toBroker = Math.round((spare * 0.4) / 100) * 100;
        books.add(m.last, `Savings sweep ${m.label}`, [
          ["1010", spare - toBroker],
          ["1400", toBroker, "broker"],
          ["1000", -spare],
        ]);
      }
      if (m.month % 3 === 0) {
        const inv = books.balance("1400");
        const gain = Math.round((inv * ops.range(-0.05, 0.07)) / 100) * 100;
        books.add(m.last, `Portfolio revaluation ${m.label}`, [
          ["1400", gain, "broker"],
          ["4500", -gain, "broker"],
        ]);
        const dividend = Math.round((inv * 0.004) / 100) * 100;
        books.add(dayOfMonth(m, 20), `Dividends ${m.label}`, [
          ["1010", dividend],
          ["4100", -dividend, "broker"],
        ]);
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Intercompany

export type IntercompanyEventKind = "loan" | "loan-repayment" | "recharge" | "settlement";

export interface IntercompanyEvent {
  date: string;
  kind: IntercompanyEventKind;
  /** Minor units, positive. Loans and recharges raise the debtor's debt; the rest lower it. */
  amount: number;
  memo: string;
}

export type IntercompanyMismatchKind =
  | "debtor-missing-recharge"
  | "creditor-wrong-amount"
  | "creditor-unapplied-settlement";

export interface IntercompanyPair {
  /** The entity that lent and charges fees (its books show a receivable). */
  creditor: string;
  debtor: string;
  /** What both books should show, in date order. */
  events: IntercompanyEvent[];
  mismatch: null | {
    kind: IntercompanyMismatchKind;
    /** The entity whose books differ from `events`. */
    side: string;
    /** That side's balance with the other minus what it should be (minor units). */
    delta: number;
    /** Index into `events` of the event booked differently (or not at all). */
    eventIndex: number;
    /** The amount that side booked for it; null when it did not book it. */
    bookedAmount: number | null;
  };
}

/**
 * The intercompany relationship of two entities under a seed and asOf (see the module comment).
 * Symmetric: intercompanyPair(a, b, ...) and intercompanyPair(b, a, ...) are equal.
 */
export function intercompanyPair(a: string, b: string, seed: number, asOf: string): IntercompanyPair {
  if (a === b)
    throw new ToteboxError("TOTEBOX_ERR_DEMO_ARGS", "an entity has no intercompany balance with itself");
  if (!isIsoDate(asOf)) throw new ToteboxError("TOTEBOX_ERR_DEMO_ARGS", "asOf must be a date YYYY-MM-DD");
  const [lo, hi] = a < b ? [a, b] : [b, a];
  const r = new Rng(hash32(`ic|${seed}|${lo}|${hi}`));
  const creditor = r.chance(0.5) ? lo : hi;
  const debtor = creditor === lo ? hi : lo;
  const months = demoMonths(asOf);
  const asOfDay = toDay(asOf);
  const events: IntercompanyEvent[] = [];
  const push = (day: number, kind: IntercompanyEventKind, amount: number, memo: string): void => {
    if (day <= asOfDay && amount > 0) events.push({ date: isoOf(day), kind, amount, memo });
  };

  const loanMonth = r.int(0, 5);
  const loan = units(r.int(20, 500) * 1_000);
  const fee = r.int(2, 25) * 500;
  let unsettled = 0;
  for (const m of months) {
    if (m.index === loanMonth)
      push(dayOfMonth(m, r.int(3, 20)), "loan", loan, `Intercompany loan ${m.label}`);
    if (m.index > loanMonth && (m.index - loanMonth) % 6 === 0) {
      push(dayOfMonth(m, 12), "loan-repayment", Math.round(loan * 0.05), `Loan repayment ${m.label}`);
    }
    // Quarterly settlement of the recharges outstanding, before this month's recharge.
    if (m.month % 3 === 1 && unsettled > 0) {
      const day = dayOfMonth(m, 10);
      if (day <= asOfDay) {
        push(day, "settlement", unsettled, `Settlement of recharges ${m.label}`);
        unsettled = 0;
      }
    }
    const day = dayOfMonth(m, 25);
    const amount = units(fee * r.range(0.9, 1.1));
    if (m.index > 0 && day <= asOfDay) {
      push(day, "recharge", amount, `Management recharge ${m.label}`);
      unsettled += amount;
    }
  }

  let mismatch: IntercompanyPair["mismatch"] = null;
  if (hash32(`icm|${seed}|${lo}|${hi}`) % INTERCOMPANY_MISMATCH_ONE_IN === 0 && events.length > 0) {
    const mm = new Rng(hash32(`icm-kind|${seed}|${lo}|${hi}`));
    const lastOf = (kind: IntercompanyEventKind): number => events.map((e) => e.kind).lastIndexOf(kind);
    const recharges = events.flatMap((e, i) => (e.kind === "recharge" ? [i] : []));
    const roll = mm.int(0, 2);
    let odd: Omit<NonNullable<IntercompanyPair["mismatch"]>, "delta">;
    if (roll === 0 && lastOf("recharge") >= 0) {
      // Cut-off: the debtor has not booked the last recharge yet.
      odd = {
        kind: "debtor-missing-recharge",
        side: debtor,
        eventIndex: lastOf("recharge"),
        bookedAmount: null,
      };
    } else if (roll === 1 && lastOf("settlement") >= 0) {
      // The creditor received the last settlement but has not applied it.
      odd = {
        kind: "creditor-unapplied-settlement",
        side: creditor,
        eventIndex: lastOf("settlement"),
        bookedAmount: null,
      };
    } else {
      // The creditor posted one recharge (or, with none yet, the loan) with a wrong amount that
      // differs by a multiple of 9, as a transposition of digits does.
      const i = recharges.length > 0 ? mm.pick(recharges) : 0;
      const wrong = Math.max(100, events[i]!.amount + 9 * mm.int(1, 400) * 100 * (mm.chance(0.5) ? 1 : -1));
      odd = { kind: "creditor-wrong-amount", side: creditor, eventIndex: i, bookedAmount: wrong };
    }
    const draft = { creditor, debtor, events, mismatch: { ...odd, delta: 0 } };
    const sign = odd.side === creditor ? 1 : -1;
    const booked = intercompanyBooksOf(draft, odd.side).reduce((s, e) => s + sign * creditorEffect(e), 0);
    const agreed = events.reduce((s, e) => s + sign * creditorEffect(e), 0);
    mismatch = { ...odd, delta: booked - agreed };
  }
  return { creditor, debtor, events, mismatch };
}

/** The events as `entityId`'s books record them (the agreed events, unless it is the odd side). */
export function intercompanyBooksOf(pair: IntercompanyPair, entityId: string): IntercompanyEvent[] {
  const mm = pair.mismatch;
  if (!mm || mm.side !== entityId) return pair.events;
  const out: IntercompanyEvent[] = [];
  for (const [i, e] of pair.events.entries()) {
    if (i !== mm.eventIndex) out.push(e);
    else if (mm.bookedAmount !== null) out.push({ ...e, amount: mm.bookedAmount });
    // Otherwise (a missing recharge, an unapplied settlement) it is not in these books.
  }
  return out;
}

/** Signed effect of an event on the creditor's receivable. */
const creditorEffect = (e: IntercompanyEvent): number =>
  e.kind === "loan" || e.kind === "recharge" ? e.amount : -e.amount;

/**
 * `entityId`'s intercompany balance with `peerId` as its own demo books record it, in minor
 * units: positive when the peer owes `entityId`. Pairs reconcile when
 * expected(A, B) + expected(B, A) === 0.
 */
export function expectedIntercompanyBalance(
  entityId: string,
  peerId: string,
  seed: number,
  asOf: string,
): number {
  const pair = intercompanyPair(entityId, peerId, seed, asOf);
  const sign = pair.creditor === entityId ? 1 : -1;
  return intercompanyBooksOf(pair, entityId).reduce((s, e) => s + sign * creditorEffect(e), 0);
}

function intercompanyLines(peerCp: string, e: IntercompanyEvent, creditor: boolean): Line[] {
  const a = e.amount;
  switch (e.kind) {
    case "loan":
      return creditor
        ? [
            ["1300", a, peerCp, e.memo],
            ["1000", -a],
          ]
        : [
            ["1000", a],
            ["2300", -a, peerCp, e.memo],
          ];
    case "loan-repayment":
    case "settlement":
      return creditor
        ? [
            ["1000", a],
            ["1300", -a, peerCp, e.memo],
          ]
        : [
            ["2300", a, peerCp, e.memo],
            ["1000", -a],
          ];
    case "recharge":
      return creditor
        ? [
            ["1300", a, peerCp, e.memo],
            ["4900", -a, peerCp],
          ]
        : [
            ["6900", a, peerCp],
            ["2300", -a, peerCp, e.memo],
          ];
  }
}

// ---------------------------------------------------------------------------------------------
// Entry point

const MODELS: Record<EntityKind, (ctx: Ctx) => Model> = {
  property: propertyModel,
  company: companyModel,
  project: projectModel,
  fund: fundModel,
  household: householdModel,
};

const DEFAULT_NAMES: Record<EntityKind, string> = {
  property: "Demo Property Holdings",
  company: "Demo Operating Company",
  project: "Demo Development Project",
  fund: "Demo Investment Fund",
  household: "Demo Family Household",
};

function demoArgs(message: string, detail?: Record<string, string | number>): ToteboxError {
  return new ToteboxError("TOTEBOX_ERR_DEMO_ARGS", message, detail);
}

/**
 * Fills an empty archive with sample books (see the module comment). All or nothing: one
 * transaction. Refuses an archive that already has journal entries or real-estate records.
 */
export function generateDemoData(db: Db, options: DemoDataOptions): DemoDataSummary {
  const { kind, seed, entityId, asOf } = options;
  const scale = options.scale ?? 1;
  const peers = options.peers ?? [];
  if (!(ENTITY_KINDS as readonly string[]).includes(kind))
    throw demoArgs("unknown entity kind", { kind: String(kind) });
  if (!Number.isSafeInteger(seed)) throw demoArgs("seed must be a safe integer");
  if (!(typeof scale === "number" && Number.isFinite(scale) && scale > 0 && scale <= DEMO_LIMITS.maxScale)) {
    throw demoArgs(`scale must be a number in (0, ${DEMO_LIMITS.maxScale}]`);
  }
  if (!isIsoDate(asOf)) throw demoArgs("asOf must be a date YYYY-MM-DD");
  const idOk = (id: unknown): id is string =>
    typeof id === "string" && id.length > 0 && id.length <= DEMO_LIMITS.maxEntityIdLength;
  if (!idOk(entityId)) throw demoArgs(`entityId must be 1 to ${DEMO_LIMITS.maxEntityIdLength} characters`);
  if (peers.length > DEMO_LIMITS.maxPeers) throw demoArgs("too many peers", { max: DEMO_LIMITS.maxPeers });
  const peerIds = new Set<string>();
  for (const p of peers) {
    if (!idOk(p.entityId))
      throw demoArgs(`peer entityId must be 1 to ${DEMO_LIMITS.maxEntityIdLength} characters`);
    if (p.entityId === entityId) throw demoArgs("an entity cannot be its own peer");
    if (peerIds.has(p.entityId)) throw demoArgs("a peer is listed twice", { peer: p.entityId });
    if (typeof p.name !== "string" || p.name.length === 0 || p.name.length > 200) {
      throw demoArgs("peer name must be 1 to 200 characters", { peer: p.entityId });
    }
    peerIds.add(p.entityId);
  }

  return db
    .transaction((): DemoDataSummary => {
      const entity = readEntity(db);
      if (entity) {
        if (entity.id !== entityId || entity.kind !== kind) {
          throw demoArgs("the archive belongs to another entity or kind", {
            entity: entity.id,
            kind: entity.kind,
          });
        }
      } else {
        initEntity(db, {
          id: entityId,
          kind,
          name: options.name ?? DEFAULT_NAMES[kind],
          currency: options.currency ?? "USD",
          created: `${asOf}T00:00:00.000Z`,
        });
      }
      const used = db
        .prepare<[], { n: number }>(
          "SELECT (SELECT count(*) FROM journal_tx) + (SELECT count(*) FROM properties) + (SELECT count(*) FROM units) AS n",
        )
        .get()!.n;
      if (used > 0) throw demoArgs("the archive already has records; demo data goes into an empty archive");

      const months = demoMonths(asOf);
      const asOfDay = toDay(asOf);
      const ctx: Ctx = { seed, entityId, scale, months, asOfDay };
      const model = MODELS[kind](ctx);

      // Intercompany: counterparties for peers, and each pair's events bucketed by month.
      const icCounterparties: CounterpartyInput[] = peers.map((p) => ({
        id: `entity:${p.entityId}`,
        name: p.name,
        kind: "entity",
        entityRef: p.entityId,
      }));
      const icByMonth = new Map<string, { cp: string; e: IntercompanyEvent; creditor: boolean }[]>();
      for (const p of peers) {
        const pair = intercompanyPair(entityId, p.entityId, seed, asOf);
        for (const e of intercompanyBooksOf(pair, entityId)) {
          const key = e.date.slice(0, 7);
          let list = icByMonth.get(key);
          if (!list) {
            list = [];
            icByMonth.set(key, list);
          }
          list.push({ cp: `entity:${p.entityId}`, e, creditor: pair.creditor === entityId });
        }
      }

      const existingAccounts = new Set(
        db
          .prepare<[], { code: string }>("SELECT code FROM accounts")
          .all()
          .map((a) => a.code),
      );
      const accounts = model.accounts.filter((a) => !existingAccounts.has(a.code));
      addAccounts(db, accounts);
      const counterparties = [...COMMON_COUNTERPARTIES, ...model.counterparties, ...icCounterparties];
      addCounterparties(db, counterparties);
      const master = model.setup(db);

      const books = new Books(asOfDay);
      function* journal(): Generator<JournalTxInput> {
        model.opening(books, months[0]!.first);
        for (const m of months) {
          model.month(m, books);
          for (const { cp, e, creditor } of icByMonth.get(m.label) ?? []) {
            books.add(toDay(e.date), e.memo, intercompanyLines(cp, e, creditor));
          }
          // Liquidity: if cash would dip under the floor at any point this month, draw the
          // revolver on the month's first transaction day; repay it at month end when cash is ample.
          const end = Math.min(m.last, asOfDay);
          const drawn = -books.balance("2510");
          const { lowest, firstDay } = books.lowestPending("1000");
          if (lowest < model.cashFloor) {
            const draw = Math.ceil((model.cashFloor - lowest) / 1_000_000) * 1_000_000 + 1_000_000;
            books.add(firstDay ?? m.first, `Revolver draw ${m.label}`, [
              ["1000", draw],
              ["2510", -draw, BANK],
            ]);
          }
          const cash = books.balance("1000");
          if (lowest >= model.cashFloor && drawn > 0 && cash > model.cashFloor * 3) {
            const repay = Math.min(drawn, Math.floor((cash - model.cashFloor * 2) / 100) * 100);
            books.add(end, `Revolver repayment ${m.label}`, [
              ["2510", repay, BANK],
              ["1000", -repay],
            ]);
          }
          if (drawn > 0) {
            const interest = Math.round((drawn * 0.075) / 12);
            books.add(end, `Revolver interest ${m.label}`, [
              ["7000", interest, BANK],
              ["1000", -interest],
            ]);
          }
          yield* books.flush();
        }
      }
      const appended = appendTransactions(db, journal());
      const lines = db.prepare<[], { n: number }>("SELECT count(*) AS n FROM journal_lines").get()!.n;
      return {
        kind,
        entityId,
        firstDate: isoOf(months[0]!.first),
        lastDate: asOf,
        transactions: appended.count,
        lines,
        accounts: accounts.length,
        counterparties: counterparties.length,
        ...master,
        peers: peers.length,
      };
    })
    .immediate();
}
