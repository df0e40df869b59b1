import type { Source } from "../gen/kefu/v1/common_pb";

/** The titles of a reply's sources: several passages of one article are one source to the reader. */
export function sourceTitles(sources: Source[]): string[] {
  return [...new Set(sources.map((source) => source.title || source.documentId))];
}
