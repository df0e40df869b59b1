import type { Source } from "../gen/kefu/v1/common_pb";
import { h } from "./dom";

/**
 * The line under a reply that names its sources, one pill a title (several passages of
 * one article are one source to the reader); null when there are none.
 */
export function sourcesLine(label: string, sources: Source[]): HTMLDivElement | null {
  const titles = [...new Set(sources.map((source) => source.title || source.documentId))];
  if (titles.length === 0) return null;
  return h("div", { class: "sources" }, label, ...titles.map((title) => h("span", { class: "pill source" }, title)));
}
