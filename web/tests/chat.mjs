// The chat page in Debian's Chromium (playwright-core downloads no browser): used by
// browser.test.mjs, and run on its own by the deployment rehearsal
// (deploy/tests/test_rehearsal.py) against a gateway started with the environment the
// chart renders:
//
//   node web/tests/chat.mjs http://<pages' host>:<web port> [--trust-any-certificate]
//
// prints what the bot answered and exits 0, or says why not and exits 1.
import { pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

export const PRICE_QUESTION = "How much is the Pro plan?";

/** Chromium from the system's package, headless, with nothing fetched in the background. */
export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      ...extraArgs,
    ],
  });
}

/** Opens the demo tenant's chat on `webUrl`, asks the price and waits for the bot's
 * answer with its sources, as a customer sees them. */
export async function askThePrice(page, webUrl) {
  await page.goto(`${webUrl}/chat?tenant=demo`);
  await page.getByTestId("chat-input").fill(PRICE_QUESTION);
  await page.getByTestId("chat-send").click();
  const answer = page.locator("[data-testid=chat-message][data-role=bot]").first();
  await answer.locator(".source").first().waitFor();
  return {
    text: (await answer.textContent()).trim(),
    sources: await answer.locator(".source").allTextContents(),
  };
}

async function main([webUrl, ...flags]) {
  // A TLS gateway of a rehearsal has a certificate from a CA made for the run.
  const browser = await launchChromium(flags.includes("--trust-any-certificate") ? ["--ignore-certificate-errors"] : []);
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(20_000);
    const errors = [];
    page.on("console", (message) => message.type() === "error" && errors.push(message.text()));
    try {
      const answer = await askThePrice(page, webUrl);
      if (!answer.sources.includes("Plans and prices")) throw new Error(`sources: ${answer.sources}`);
      console.log(JSON.stringify(answer));
    } catch (error) {
      const shown = await page.locator("body").innerText().catch(() => "");
      throw new Error(`${error.message}\npage shows: ${shown}\nconsole errors: ${errors.join(" | ")}`);
    }
  } finally {
    await browser.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((error) => {
    console.error(error.message);
    process.exit(1);
  });
}
