/**
 * An ECharts canvas inside a role="img" wrapper whose aria-label says what the chart shows (the
 * canvas itself is invisible to assistive technology). Only the parts we use are registered, which
 * keeps the bundle a fraction of full ECharts.
 */
import { BarChart, PieChart } from "echarts/charts";
import { AriaComponent, GridComponent, LegendComponent, TooltipComponent } from "echarts/components";
import { type EChartsCoreOption, init, use } from "echarts/core";
import { CanvasRenderer } from "echarts/renderers";
import { useEffect, useRef } from "preact/hooks";

use([BarChart, PieChart, GridComponent, TooltipComponent, LegendComponent, AriaComponent, CanvasRenderer]);

export interface ChartProps {
  /** What the chart shows, in words (its text alternative). */
  readonly label: string;
  readonly option: EChartsCoreOption;
  readonly height?: number;
  readonly testid?: string;
}

export function Chart({ label, option, height = 260, testid }: ChartProps) {
  const el = useRef<HTMLDivElement>(null);
  const chart = useRef<ReturnType<typeof init> | null>(null);

  useEffect(() => {
    const node = el.current;
    if (!node) return;
    const c = init(node, null, { renderer: "canvas" });
    chart.current = c;
    // Charts follow their container (the grid reflows at narrower widths).
    const ro = new ResizeObserver(() => c.resize());
    ro.observe(node);
    return () => {
      ro.disconnect();
      c.dispose();
      chart.current = null;
    };
  }, []);

  useEffect(() => {
    chart.current?.setOption(option, { notMerge: true });
  }, [option]);

  return (
    <div class="chart" role="img" aria-label={label} data-testid={testid}>
      <div ref={el} class="chart-canvas" style={{ height: `${height}px` }} aria-hidden="true" />
    </div>
  );
}
