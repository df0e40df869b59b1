// The hand-off as people live it, in a real Chromium against a plain `kefu up`, started
// as the README and `make run` start it (default ports, no flags): a customer on a
// phone asks the bot, asks for a human, an agent in the console takes the ticket and
// replies, the reply reaches the customer's page live, the agent resolves and the
// customer rates. Each step prints a line and leaves a screenshot in web/test-results/.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFile, mkdir, mkdtemp, open, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { askThePrice, launchChromium } from "./chat.mjs";

const repo = path.resolve(import.meta.dirname, "../..");
const kefuBinary = path.join(repo, "target/release/kefu");
const results = path.join(repo, "web/test-results");
const STARTUP_LIMIT_MS = 90_000;
const FLOW_LIMIT_MS = 90_000;
/** How long one step may wait for the page to show what it expects. */
const WAIT_MS = 15_000;

/** What `kefu up` listens on by default: the six gRPC ports, the pages, the six /metrics ports. */
const DEFAULT_PORTS = [50051, 50052, 50053, 50054, 50055, 50056, 8080, 9101, 9102, 9103, 9104, 9105, 9106];

/** Fails, naming them, when any of the default ports is taken (a `make run` still running, say). */
async function assertPortsFree(ports) {
  const taken = [];
  for (const port of ports) {
    const free = await new Promise((resolve) => {
      const server = net.createServer();
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
    });
    if (!free) taken.push(port);
  }
  assert.deepEqual(
    taken,
    [],
    `kefu up needs its default ports, but ${taken.join(", ")} ${taken.length > 1 ? "are" : "is"} taken: stop what listens there (e.g. a running \`make run\`)`,
  );
}

const SERVING = 1;

/** The gateway's overall health, asked over gRPC-Web as a browser would; null while unreachable. */
async function gatewayHealth(gatewayUrl) {
  try {
    const response = await fetch(`${gatewayUrl}/grpc.health.v1.Health/Check`, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
      body: new Uint8Array(5), // one uncompressed frame holding an empty HealthCheckRequest
    });
    const body = new Uint8Array(await response.arrayBuffer());
    // The first frame holds HealthCheckResponse: field 1 (status) as a varint.
    return body[0] === 0 && body[5] === 0x08 ? body[6] : null;
  } catch {
    return null;
  }
}

let kefu;
let dataDir;
let webUrl;
let browser;

/** Starts a plain `kefu up` from the repository, as `make run` does, with a data directory
 * of its own; resolves when its pages and a SERVING gateway answer. */
async function startKefu() {
  await assertPortsFree(DEFAULT_PORTS);
  dataDir = await mkdtemp(path.join(os.tmpdir(), "kefu-web-"));
  webUrl = "http://127.0.0.1:8080";
  const log = await open(path.join(results, "kefu.log"), "w");
  // Nothing of this shell's kefu settings but the models' place (make test-web names it).
  const env = Object.fromEntries(
    Object.entries(process.env).filter(
      ([name]) => name === "KEFU_MODELS_DIR" || !/^(KEFU_|DATABASE_URL$|REDIS_URL$)/.test(name),
    ),
  );
  kefu = spawn(kefuBinary, ["up"], {
    cwd: repo,
    env: { ...env, KEFU_DATA_DIR: dataDir },
    stdio: ["ignore", log.fd, log.fd],
  });
  await log.close(); // the child holds its own copy
  // Whatever happens to the test, kefu does not outlive it.
  process.once("exit", () => kefu.kill("SIGKILL"));
  const exited = new Promise((_, reject) =>
    kefu.once("exit", (code) => reject(new Error(`kefu up exited (${code}); see web/test-results/kefu.log`))),
  );

  const started = Date.now();
  const ready = (async () => {
    while (Date.now() - started < STARTUP_LIMIT_MS) {
      const config = await fetch(`${webUrl}/config.json`).then(
        (response) => (response.ok ? response.json() : null),
        () => null,
      );
      if (config && (await gatewayHealth(config.gatewayUrl)) === SERVING) return config;
      await delay(250);
    }
    throw new Error(`kefu up did not serve its pages and a SERVING gateway within ${STARTUP_LIMIT_MS} ms`);
  })();
  const config = await Promise.race([ready, exited]);
  const chat = await fetch(`${webUrl}/chat`);
  assert.equal(chat.status, 200, `GET /chat: ${await chat.text()}`);
  console.log(
    `kefu up: pages on ${webUrl}, gateway ${config.gatewayUrl}, ready in ${Date.now() - started} ms`,
  );
}

before(
  async () => {
    await rm(results, { recursive: true, force: true });
    await mkdir(results, { recursive: true });
    await startKefu();
    browser = await launchChromium();
  },
  { timeout: STARTUP_LIMIT_MS },
);

after(async () => {
  await browser?.close();
  if (kefu && kefu.exitCode === null) {
    const gone = new Promise((resolve) => kefu.once("exit", resolve));
    kefu.kill("SIGTERM");
    await Promise.race([gone, delay(5_000, undefined, { ref: false })]);
    kefu.kill("SIGKILL");
  }
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

/** Pages report their own errors here, so that a failing step says why. */
function watch(page, name) {
  page.on("pageerror", (error) => console.log(`[${name}] page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") console.log(`[${name}] console: ${message.text()}`);
  });
  page.setDefaultTimeout(WAIT_MS);
  return page;
}

test("a customer is handed to an agent and back, in the browser", { timeout: FLOW_LIMIT_MS }, async (t) => {
  const customer = watch(
    await (
      await browser.newContext({
        viewport: { width: 390, height: 844 },
        isMobile: true,
        hasTouch: true,
        locale: "en-US",
      })
    ).newPage(),
    "chat",
  );
  const agent = watch(
    await (await browser.newContext({ viewport: { width: 1280, height: 860 }, locale: "en-US" })).newPage(),
    "console",
  );
  const shots = [];
  const shoot = async (page, name) => {
    const file = path.join(results, `${name}.png`);
    await page.screenshot({ path: file });
    shots.push(file);
    return file;
  };

  // Later steps build on earlier ones: after a failure they are skipped, not failed again.
  let broken = false;
  const step = (name, body) =>
    t.test(name, { skip: broken && "an earlier step failed" }, async () => {
      const started = Date.now();
      try {
        const note = await body();
        console.log(`step ok: ${name} (${Date.now() - started} ms)${note ? `: ${note}` : ""}`);
      } catch (error) {
        broken = true;
        await Promise.all([shoot(customer, "failed-chat"), shoot(agent, "failed-console")]).catch(() => {});
        throw error;
      }
    });

  const say = async (text) => {
    await customer.getByTestId("chat-input").fill(text);
    await customer.getByTestId("chat-send").click();
  };
  const handler = customer.getByTestId("chat-handler");
  const messages = (role) => customer.locator(`[data-testid=chat-message][data-role=${role}]`);

  await step("the customer asks the price and the bot answers with a source", async () => {
    const { sources } = await askThePrice(customer, webUrl);
    assert.ok(sources.includes("Plans and prices"), `sources: ${sources}`);
    assert.equal(await handler.textContent(), "bot");
    await shoot(customer, "1-chat-bot-answer");
    return `sources ${sources.join(", ")}`;
  });

  await step("the customer asks for a human and is queued", async () => {
    await say("I want to speak to a human");
    await customer.locator("[data-testid=chat-handler][data-handler=queued]").waitFor();
    assert.equal(await handler.textContent(), "queued");
    await shoot(customer, "2-chat-queued");
  });

  await step("an agent signs in and sees the ticket in the queue", async () => {
    await agent.goto(`${webUrl}/console`);
    await agent.getByTestId("console-key").fill("demo-agent-key");
    await agent.getByTestId("console-signin").click();
    await agent.getByTestId("queue-item").first().waitFor();
    await shoot(agent, "3-console-queue");
    return `${await agent.getByTestId("queue-item").count()} ticket(s) listed`;
  });

  await step("the agent takes the next ticket and reads the conversation", async () => {
    await agent.getByTestId("take-next").click();
    const asked = agent.locator("[data-testid=conversation-entry][data-role=customer]", {
      hasText: "I want to speak to a human",
    });
    await asked.waitFor();
    const roles = await agent
      .getByTestId("conversation-entry")
      .evaluateAll((entries) => entries.map((entry) => entry.dataset.role));
    assert.ok(roles.includes("bot"), `roles: ${roles}`);
    await customer.locator("[data-testid=chat-handler][data-handler=agent]").waitFor();
    await shoot(agent, "4-console-taken");
    return `entries ${roles.join(", ")}`;
  });

  let deliveryMs;
  await step("the agent replies and the customer's page shows it live", async () => {
    const reply = "Hello, I'm here to help. Your order number, please?";
    // Both clocks are the machine's: the click and the arrival are timed in the pages.
    await customer.evaluate((text) => {
      window.agentReplyShownAt = new Promise((resolve) => {
        new MutationObserver((_, observer) => {
          const shown = [...document.querySelectorAll("[data-testid=chat-message][data-role=agent]")].some(
            (message) => message.textContent.includes(text),
          );
          if (shown) {
            observer.disconnect();
            resolve(Date.now());
          }
        }).observe(document.body, { childList: true, subtree: true });
      });
    }, reply);
    await agent.getByTestId("reply-input").fill(reply);
    await agent.evaluate(() => {
      document
        .querySelector("[data-testid=reply-send]")
        .addEventListener("click", () => (window.replyClickedAt = Date.now()), { once: true });
    });
    const reloads = [];
    customer.on("framenavigated", (frame) => frame === customer.mainFrame() && reloads.push(frame.url()));
    await agent.getByTestId("reply-send").click();
    await messages("agent").filter({ hasText: reply }).waitFor();
    const shownAt = await customer.evaluate(() => window.agentReplyShownAt);
    const clickedAt = await agent.evaluate(() => window.replyClickedAt);
    deliveryMs = shownAt - clickedAt;
    assert.deepEqual(reloads, [], "the customer's page was not reloaded");
    await agent.locator("[data-testid=conversation-entry][data-role=agent]", { hasText: reply }).waitFor();
    await shoot(customer, "5-chat-agent-reply");
    await shoot(agent, "5-console-replied");
    return `agent's click to the customer's page: ${deliveryMs} ms`;
  });

  await step("the agent resolves and the customer rates 5", async () => {
    await agent.getByTestId("resolve").click();
    const rating = customer.getByTestId("chat-rating");
    await rating.waitFor();
    assert.equal(await handler.textContent(), "bot");
    await shoot(customer, "6-chat-rating");
    await rating.locator("button[data-score='5']").click();
    await rating.getByText("Thank you").waitFor();
    await shoot(customer, "7-chat-rated");
  });

  console.log(`screenshots: ${shots.map((file) => path.relative(repo, file)).join(", ")}`);
  if (deliveryMs !== undefined) {
    console.log(`agent reply delivered to the customer's page in ${deliveryMs} ms`);
  }
  // The README's pictures are refreshed on request, so that a test run leaves the tree as it was.
  if (!broken && process.env.KEFU_UPDATE_SCREENSHOTS) {
    await mkdir(path.join(repo, "docs/screenshots"), { recursive: true });
    await copyFile(
      path.join(results, "5-chat-agent-reply.png"),
      path.join(repo, "docs/screenshots/chat.png"),
    );
    await copyFile(
      path.join(results, "5-console-replied.png"),
      path.join(repo, "docs/screenshots/console.png"),
    );
    console.log("docs/screenshots/chat.png and console.png updated");
  }
});
