/**
 * ECharts options and their text equivalents, built from section data. Pure, so the summaries that
 * screen readers get (aria-label) are unit-tested. Amount series are given in MAJOR units here
 * (charts need floats; exact figures live in the tables).
 */
import { formatCompactMajor, formatInteger, formatPercent } from "./format.ts";

/** Neutral palette with one accent first; series are also told apart by decal patterns. */
export const SERIES_COLORS = ["#2456c7", "#c46a0c", "#0f8a6a", "#7b4fc4", "#b42318", "#5b6675"];
const TEXT = "#1c2430";
const MUTED = "#5b6675";
const GRID = "#e3e7ec";
const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';

export type ValueKind = "amount" | "count" | "ratio";

export interface Series {
  readonly name: string;
  readonly values: readonly (number | null)[];
}

export interface BarInput {
  readonly categories: readonly string[];
  readonly series: readonly Series[];
  readonly kind: ValueKind;
  readonly currency?: string | null;
}

export function formatValue(v: number | null, kind: ValueKind, currency: string | null = null): string {
  if (v === null) return "no data";
  if (kind === "amount") return formatCompactMajor(v, currency);
  if (kind === "ratio") return formatPercent(v);
  return formatInteger(Math.round(v));
}

const MAX_DESCRIBED = 12;

function list(names: readonly string[]): string {
  if (names.length <= 1) return names.join("");
  return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}

/** The chart in words, for `aria-label` (bounded: the first 12 categories). */
export function describeBar(title: string, input: BarInput): string {
  const { categories, series, kind } = input;
  const cur = input.currency ?? null;
  if (categories.length === 0) return `${title}: no data.`;
  const items = categories.slice(0, MAX_DESCRIBED).map((c, i) => {
    if (series.length === 1) return `${c} ${formatValue(series[0]!.values[i] ?? null, kind, cur)}`;
    return `${c}: ${series.map((s) => `${s.name.toLowerCase()} ${formatValue(s.values[i] ?? null, kind, cur)}`).join(", ")}`;
  });
  const more = categories.length > MAX_DESCRIBED ? `; and ${categories.length - MAX_DESCRIBED} more` : "";
  return `Bar chart, ${title}${series.length > 1 ? ` (${list(series.map((s) => s.name.toLowerCase()))})` : ""}: ${items.join("; ")}${more}.`;
}

export function describePie(title: string, slices: readonly { name: string; value: number }[]): string {
  const total = slices.reduce((s, x) => s + x.value, 0);
  const shown = slices.filter((s) => s.value > 0);
  if (total === 0) return `${title}: no data.`;
  return `Pie chart, ${title}: ${shown
    .slice(0, MAX_DESCRIBED)
    .map((s) => `${s.name} ${formatInteger(s.value)} of ${formatInteger(total)}`)
    .join("; ")}.`;
}

function base() {
  return {
    animation: false,
    color: SERIES_COLORS,
    textStyle: { fontFamily: FONT, color: TEXT },
    aria: { enabled: true, label: { enabled: false }, decal: { show: false } },
    tooltip: { trigger: "axis" as const, axisPointer: { type: "shadow" as const } },
  };
}

export function barOption(input: BarInput) {
  const { categories, series, kind } = input;
  const cur = input.currency ?? null;
  const multi = series.length > 1;
  return {
    ...base(),
    // Several series: a decal pattern each, so they differ by more than colour.
    aria: { enabled: true, label: { enabled: false }, decal: { show: multi } },
    legend: multi ? { top: 0, left: 0, itemGap: 16, textStyle: { color: MUTED } } : undefined,
    grid: { left: 8, right: 16, top: multi ? 36 : 16, bottom: 8, containLabel: true },
    tooltip: {
      trigger: "axis" as const,
      axisPointer: { type: "shadow" as const },
      valueFormatter: (v: unknown) => formatValue(typeof v === "number" ? v : null, kind, cur),
    },
    xAxis: {
      type: "category" as const,
      data: [...categories],
      axisTick: { show: false },
      axisLine: { lineStyle: { color: GRID } },
      axisLabel: { color: MUTED, interval: 0, hideOverlap: true },
    },
    yAxis: {
      type: "value" as const,
      splitLine: { lineStyle: { color: GRID } },
      axisLabel: { color: MUTED, formatter: (v: number) => formatValue(v, kind, cur) },
    },
    series: series.map((s) => ({
      name: s.name,
      type: "bar" as const,
      data: [...s.values],
      barMaxWidth: 44,
      itemStyle: { borderRadius: [3, 3, 0, 0] },
      emphasis: { focus: "series" as const },
    })),
  };
}

export function pieOption(slices: readonly { name: string; value: number; color?: string }[]) {
  return {
    ...base(),
    aria: { enabled: true, label: { enabled: false }, decal: { show: true } },
    tooltip: { trigger: "item" as const },
    legend: { bottom: 0, left: "center", textStyle: { color: MUTED } },
    series: [
      {
        type: "pie" as const,
        radius: ["45%", "72%"],
        center: ["50%", "45%"],
        avoidLabelOverlap: true,
        label: { formatter: "{b}: {c}", color: TEXT },
        data: slices
          .filter((s) => s.value > 0)
          .map((s) => ({
            name: s.name,
            value: s.value,
            ...(s.color ? { itemStyle: { color: s.color } } : {}),
          })),
      },
    ],
  };
}
