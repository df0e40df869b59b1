// CSV files for spreadsheets: RFC 4180 (comma, CRLF, quoted fields), UTF-8 with a byte
// order mark so that a spreadsheet reads Chinese text as written.
import { h } from "../shared/dom";

export type Cell = string | number | bigint;

/**
 * One field. Text a spreadsheet would run as a formula (= + - @, or a tab or carriage
 * return first) is prefixed with a single quote: customers' questions end up here.
 */
function field(cell: Cell): string {
  const text = typeof cell === "string" && /^[=+\-@\t\r]/.test(cell) ? `'${cell}` : String(cell);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function csv(rows: Cell[][]): string {
  return rows.map((row) => row.map(field).join(",") + "\r\n").join("");
}

/** Hands the rows to the browser as a download named `name`. */
export function downloadCsv(name: string, rows: Cell[][]): void {
  const url = URL.createObjectURL(new Blob(["\uFEFF", csv(rows)], { type: "text/csv;charset=utf-8" }));
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  // Freed later, not at once: some browsers read the blob after the click returns.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
