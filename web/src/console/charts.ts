// Charts as inline SVG, drawn here: a few bars and a line need no library. Each drawn
// value is an element of its own with a data-testid, its exact number in data-value and
// a <title> naming it, read alike by tests, screen readers and a hovering pointer.
import { svg } from "../shared/dom";

type Count = number | bigint;

/** The top of a count axis at or above `max`, in steps of 1, 2 or 5 times a power of ten. */
function axis(max: number, ticks = 4): { top: number; step: number } {
  if (max <= 0) return { top: ticks, step: 1 };
  const rough = max / ticks;
  const power = 10 ** Math.floor(Math.log10(rough));
  // Counts are whole numbers: no step below 1.
  const step = Math.max(1, [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough)!);
  return { top: Math.ceil(max / step) * step, step };
}

/** A drawn value: readable by its title, findable by its test id and exact value. */
function mark<K extends "rect" | "circle">(
  tag: K,
  testid: string,
  value: Count,
  title: string,
  attrs: Record<string, string | number>,
): SVGElementTagNameMap[K] {
  return svg(
    tag,
    { ...attrs, "data-testid": testid, "data-value": String(value), role: "img" },
    svg("title", {}, title),
  );
}

export interface Day {
  day: string;
  conversations: Count;
  resolvedByBot: Count;
}

/** Conversations per day as bars, the ones the bot resolved as a line over them. */
export function dailyChart(
  days: Day[],
  titles: { conversations: (day: string, n: Count) => string; resolved: (day: string, n: Count) => string },
  label: string,
): SVGSVGElement {
  // Scaled by the viewBox: about the width the chart is shown at, so that text keeps its size.
  const [width, height] = [1100, 240];
  const [left, right, top, bottom] = [40, 12, 12, 28];
  const plot = { width: width - left - right, height: height - top - bottom };
  const { top: max, step } = axis(Math.max(0, ...days.map((d) => Number(d.conversations))));
  const y = (value: Count) => top + plot.height * (1 - Number(value) / max);
  const slot = plot.width / Math.max(1, days.length);
  const x = (index: number) => left + slot * (index + 0.5);
  const barWidth = Math.min(36, slot * 0.7);
  const everyNth = Math.ceil(days.length / 10);

  const grid = [];
  for (let value = 0; value <= max; value += step) {
    grid.push(
      svg("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }),
      svg("text", { class: "tick", x: left - 6, y: y(value) + 4, "text-anchor": "end" }, String(value)),
    );
  }
  const labels = days.flatMap((d, i) =>
    i % everyNth === 0
      ? [svg("text", { class: "tick", x: x(i), y: height - 8, "text-anchor": "middle" }, d.day.slice(5))]
      : [],
  );
  const bars = days.map((d, i) =>
    mark("rect", "daily-conversations", d.conversations, titles.conversations(d.day, d.conversations), {
      class: "bar conversations",
      "data-day": d.day,
      x: x(i) - barWidth / 2,
      y: y(d.conversations),
      width: barWidth,
      height: y(0) - y(d.conversations),
    }),
  );
  const line = svg("polyline", {
    class: "line resolved",
    "aria-hidden": "true",
    points: days.map((d, i) => `${x(i)},${y(d.resolvedByBot)}`).join(" "),
  });
  const points = days.map((d, i) =>
    mark("circle", "daily-resolved", d.resolvedByBot, titles.resolved(d.day, d.resolvedByBot), {
      class: "point resolved",
      "data-day": d.day,
      cx: x(i),
      cy: y(d.resolvedByBot),
      r: Math.max(1.5, Math.min(4, slot / 4)),
    }),
  );
  return svg(
    "svg",
    { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": label },
    ...grid,
    ...labels,
    ...bars,
    line,
    ...points,
  );
}

export interface Bar {
  /** What the bar stands for, as data (a reason, a score): data-key. */
  key: string;
  label: string;
  value: Count;
  title: string;
}

/** Horizontal bars, one row each, the value written at the bar's end. */
export function barChart(bars: Bar[], testid: string, label: string): SVGSVGElement {
  // As wide as half the page shows it.
  const width = 540;
  const row = 30;
  const valueWidth = 56;
  // Wide enough for the longest label at 13px (a Chinese character about twice a Latin one).
  const textWidth = (text: string) => [...text].reduce((sum, c) => sum + (c > "\u2e80" ? 13 : 7.5), 0);
  const labelWidth = 16 + Math.max(...bars.map((bar) => textWidth(bar.label)));
  const max = Math.max(1, ...bars.map((bar) => Number(bar.value)));
  const length = (value: Count) => ((width - labelWidth - valueWidth) * Number(value)) / max;
  const rows = bars.map((bar, i) => {
    const middle = row * i + row / 2;
    return svg(
      "g",
      {},
      svg("text", { class: "label", x: labelWidth - 10, y: middle + 4, "text-anchor": "end" }, bar.label),
      mark("rect", testid, bar.value, bar.title, {
        class: "bar",
        "data-key": bar.key,
        x: labelWidth,
        y: middle - 9,
        width: length(bar.value),
        height: 18,
        rx: 3,
      }),
      svg(
        "text",
        { class: "value", x: labelWidth + length(bar.value) + 6, y: middle + 4 },
        String(bar.value),
      ),
    );
  });
  return svg(
    "svg",
    { class: "chart bars", viewBox: `0 0 ${width} ${row * bars.length}`, role: "group", "aria-label": label },
    ...rows,
  );
}
