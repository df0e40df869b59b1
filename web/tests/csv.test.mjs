// The console's CSV writer: RFC 4180 quoting, and customers' text that a spreadsheet
// would run as a formula made inert.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseCsv } from "./insights.mjs";
import { importBundled } from "./bundle.mjs";

const { csv } = await importBundled(`export { csv } from "./console/csv";`);

test("fields are quoted as RFC 4180 says, rows end with CRLF", () => {
  const text = csv([
    ["plain", 'say "hi"', "a,b", "two\nlines", 42, 7n, -0.25],
    ["", "x"],
  ]);
  assert.equal(text, 'plain,"say ""hi""","a,b","two\nlines",42,7,-0.25\r\n,x\r\n');
  assert.deepEqual(parseCsv(text), [
    ["plain", 'say "hi"', "a,b", "two\nlines", "42", "7", "-0.25"],
    ["", "x"],
  ]);
});

test("text starting like a formula gets a leading quote; numbers stay numbers", () => {
  const questions = ["=HYPERLINK(\"http://x\")", "+1 555", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "a=b"];
  assert.deepEqual(parseCsv(csv([questions, [-3]]))[0], [
    "'=HYPERLINK(\"http://x\")",
    "'+1 555",
    "'-2+3",
    "'@SUM(A1)",
    "'\tTAB",
    "'\rCR",
    "a=b",
  ]);
  assert.equal(csv([[-3]]), "-3\r\n");
});
