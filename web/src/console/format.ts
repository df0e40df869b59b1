export interface Units {
  d: string;
  h: string;
  min: string;
  s: string;
}

/**
 * A duration in its two largest units, to the second or to the minute: "2 d 3 h",
 * "3 h 5 min", "1 min 35 s", "12 s"; "3 h" rather than "3 h 0 min".
 */
export function duration(seconds: number, units: Units, smallest: "s" | "min" = "s"): string {
  const step = smallest === "min" ? 60 : 1;
  const total = Math.max(0, Math.round(seconds / step)) * step;
  const parts: [number, string][] = [
    [Math.floor(total / 86_400), units.d],
    [Math.floor((total % 86_400) / 3_600), units.h],
    [Math.floor((total % 3_600) / 60), units.min],
    [total % 60, units.s],
  ].slice(0, smallest === "min" ? 3 : 4) as [number, string][];
  const first = parts.findIndex(([amount]) => amount > 0);
  if (first < 0) return `0 ${parts.at(-1)![1]}`;
  return parts
    .slice(first, first + 2)
    .filter(([amount], index) => index === 0 || amount > 0)
    .map(([amount, unit]) => `${amount} ${unit}`)
    .join(" ");
}
