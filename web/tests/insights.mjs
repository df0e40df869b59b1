// Reading the console's Insights view as its users do: what it draws (each figure, bar
// and point carries its exact number in data-value and names it in a <title>), and the
// CSV files it hands out.
import { readFile } from "node:fs/promises";

/** Everything the Insights view shows, as text, keyed as the report's fields are. */
export function readInsights(page) {
  return page.evaluate(() => {
    const all = (selector, root = document) => [...root.querySelectorAll(selector)];
    const marks = (testid, key) =>
      all(`[data-testid="${testid}"]`).map((mark) => ({
        key: mark.dataset[key],
        value: mark.dataset.value,
        title: mark.querySelector("title")?.textContent ?? "",
      }));
    const asked = document.querySelector("[data-testid=insights-report]").dataset;
    return {
      asked: { from: asked.from, to: asked.to, channel: asked.channel, language: asked.language },
      figures: Object.fromEntries(
        all("[data-testid^=figure-]").map((figure) => [
          figure.dataset.testid.slice("figure-".length),
          { value: figure.dataset.value, text: figure.textContent.trim() },
        ]),
      ),
      daily: marks("daily-conversations", "day"),
      resolved: marks("daily-resolved", "day"),
      reasons: marks("reason-bar", "key"),
      satisfaction: marks("satisfaction-bar", "key"),
      breakdown: all("[data-testid=breakdown-row]").map((row) => ({
        channel: row.dataset.channel,
        language: row.dataset.language,
        values: all("td[data-value]", row).map((cell) => cell.dataset.value),
      })),
      times: Object.fromEntries(
        all("[data-testid^=times-]").map((row) => [
          row.dataset.testid.slice("times-".length),
          all("td[data-value]", row).map((cell) => cell.dataset.value),
        ]),
      ),
      gaps: all("[data-testid=gap]").map((gap) => ({
        id: gap.dataset.gapId,
        title: gap.querySelector("[data-testid=gap-title]").textContent,
        questions: gap.querySelector("[data-testid=gap-questions]").dataset.value,
        trend: gap.querySelector("[data-testid=gap-trend]").textContent,
        examples: all("[data-testid=gap-example]", gap).map((example) => example.textContent),
        closest: gap.querySelector("[data-testid=gap-closest]").textContent,
        covered: gap.dataset.covered,
      })),
    };
  });
}

/** Clicks the button with `testid` and returns the file the page hands out. */
export async function download(page, testid) {
  const [file] = await Promise.all([page.waitForEvent("download"), page.getByTestId(testid).click()]);
  return { name: file.suggestedFilename(), text: await readFile(await file.path(), "utf8") };
}

/** RFC 4180: rows of fields; a leading byte order mark is dropped. */
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  const body = text.replace(/^\uFEFF/, "");
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (quoted) {
      if (c === '"' && body[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c === '"') {
      quoted = true;
    } else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\r" && body[i + 1] === "\n") {
      row.push(field);
      rows.push(row);
      [row, field] = [[], ""];
      i++;
    } else {
      field += c;
    }
  }
  if (field !== "" || row.length > 0) rows.push([...row, field]);
  return rows;
}
