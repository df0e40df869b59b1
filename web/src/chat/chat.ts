// The customer's chat widget: messages go out with SendMessage; agents' replies and
// changes of who handles the session come back live on StreamEvents.
import "../shared/base.css";
import "./chat.css";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { Channel, type Source } from "../gen/kefu/v1/common_pb";
import {
  ConversationService,
  Handler,
  Role,
  type ConversationEvent,
  type SendMessageResponse,
} from "../gen/kefu/v1/conversation_pb";
import { fill, h } from "../shared/dom";
import { clock, localize } from "../shared/i18n";
import { Code, codeOf, describe, openTransport, randomId, withRetry } from "../shared/rpc";
import { sourcesLine } from "../shared/sources";

const { lang, t } = localize({
  en: {
    title: "Customer service",
    greeting: "Hello! Ask us anything, or ask for a person at any time.",
    handledBy: "You are talking to:",
    handler: { bot: "bot", queued: "queued", agent: "agent" },
    queued: "You are in the queue: an agent will be with you shortly.",
    placeholder: "Type your message",
    send: "Send",
    you: "You",
    bot: "Bot",
    agent: "Agent",
    sources: "Sources:",
    notSent: "Not sent:",
    reconnecting: "Connection lost, reconnecting…",
    rate: "Your question was resolved. How did we do?",
    score: (n: number) => `${n} of 5`,
    thanks: "Thank you for your rating!",
    unavailable: "The chat is not available right now:",
  },
  zh: {
    title: "在线客服",
    greeting: "您好！有什么可以帮您？随时可以要求转人工。",
    handledBy: "当前接待：",
    handler: { bot: "机器人", queued: "排队中", agent: "人工客服" },
    queued: "您已进入排队，客服人员马上就来。",
    placeholder: "请输入消息",
    send: "发送",
    you: "我",
    bot: "机器人",
    agent: "客服",
    sources: "参考：",
    notSent: "发送失败：",
    reconnecting: "连接中断，正在重连…",
    rate: "您的问题已处理完毕，请为本次服务评分：",
    score: (n: number) => `${n} 分`,
    thanks: "感谢您的评价！",
    unavailable: "在线客服暂时无法使用：",
  },
});

type Who = "customer" | "bot" | "agent";
type HandlerName = keyof typeof t.handler;
const HANDLER_NAMES: Partial<Record<Handler, HandlerName>> = {
  [Handler.BOT]: "bot",
  [Handler.QUEUED]: "queued",
  [Handler.AGENT]: "agent",
};

const tenantId = new URLSearchParams(location.search).get("tenant") || "demo";
const stored = (name: string) => `kefu.${tenantId}.${name}`;

/** The customer is this browser: the id outlives the tab, so tickets and ratings stay theirs. */
function customerIdOfThisBrowser(): string {
  let id = localStorage.getItem(stored("customer"));
  if (!id) {
    id = randomId("web-");
    localStorage.setItem(stored("customer"), id);
  }
  return id;
}
const customerId = customerIdOfThisBrowser();

/**
 * The conversation of this tab, kept in sessionStorage so that a reload continues it:
 * the last event seen (where the stream resumes) and how many agent replies are on
 * screen (so that replies both read back with GetSession and replayed by the stream
 * are shown once).
 */
interface Conversation {
  sessionId: string;
  lastEventId: bigint;
  agentReplies: number;
}
let conversation: Conversation | null = loadConversation();

function loadConversation(): Conversation | null {
  const saved = sessionStorage.getItem(stored("conversation"));
  if (!saved) return null;
  const { sessionId, lastEventId, agentReplies } = JSON.parse(saved);
  return { sessionId, lastEventId: BigInt(lastEventId), agentReplies };
}

function saveConversation(): void {
  if (!conversation) {
    sessionStorage.removeItem(stored("conversation"));
    return;
  }
  const { sessionId, lastEventId, agentReplies } = conversation;
  sessionStorage.setItem(
    stored("conversation"),
    JSON.stringify({ sessionId, lastEventId: lastEventId.toString(), agentReplies }),
  );
}

/** Tickets this browser has rated: satisfaction is asked once per ticket. */
const ratedTickets = (): string[] => JSON.parse(localStorage.getItem(stored("rated")) ?? "[]");

// The page.
const handlerChip = h("span", { class: "pill handler", "data-testid": "chat-handler" });
const queuedNote = h("p", { class: "note", hidden: true }, t.queued);
const connectionNote = h("p", { class: "note warn", hidden: true }, t.reconnecting);
const messages = h("ol", { class: "messages", "aria-live": "polite" });
const rating = h("section", { class: "rating", "data-testid": "chat-rating", hidden: true });
const input = h("input", {
  "data-testid": "chat-input",
  type: "text",
  autocomplete: "off",
  enterkeyhint: "send",
  placeholder: t.placeholder,
  "aria-label": t.placeholder,
});
const sendButton = h("button", { "data-testid": "chat-send", type: "submit" }, t.send);
const composer = h("form", { class: "composer" }, input, sendButton);

document.title = t.title;
fill(
  document.getElementById("app")!,
  h("header", {}, h("h1", {}, t.title), h("p", { class: "status" }, t.handledBy, " ", handlerChip)),
  h(
    "div",
    { class: "scroll" },
    h("p", { class: "greeting muted" }, t.greeting),
    messages,
    queuedNote,
    rating,
  ),
  connectionNote,
  composer,
);
showHandler(Handler.BOT);

function addMessage(
  who: Who,
  text: string,
  extra: { at?: Timestamp; author?: string; sources?: Source[] } = {},
): HTMLLIElement {
  const name = who === "customer" ? t.you : who === "bot" ? t.bot : extra.author || t.agent;
  const at = extra.at ? timestampDate(extra.at) : new Date();
  const item = h(
    "li",
    { class: `message ${who}`, "data-testid": "chat-message", "data-role": who },
    h("div", { class: "bubble" }, text),
    sourcesLine(t.sources, extra.sources ?? []),
    h("div", { class: "meta muted" }, `${name} · ${clock(lang, at)}`),
  );
  messages.append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function showHandler(handler: Handler): void {
  const name = HANDLER_NAMES[handler];
  if (!name) return;
  handlerChip.dataset.handler = name;
  handlerChip.textContent = t.handler[name];
  queuedNote.hidden = handler !== Handler.QUEUED;
}

async function main(): Promise<void> {
  const conversations = createClient(ConversationService, await openTransport());

  /** Agent replies read back with GetSession that the stream will replay. */
  let alreadyShown = 0;

  if (conversation) {
    try {
      const view = await conversations.getSession({
        tenantId,
        customerId,
        sessionId: conversation.sessionId,
      });
      for (const turn of view.turns) {
        if (turn.role === Role.AGENT) {
          addMessage("agent", turn.text, { at: turn.createdAt, author: turn.author });
        } else {
          addMessage("customer", turn.text, { at: turn.createdAt });
          if (turn.reply) addMessage("bot", turn.reply, { at: turn.createdAt });
        }
      }
      const agentTurns = view.turns.filter((turn) => turn.role === Role.AGENT).length;
      alreadyShown = Math.max(0, agentTurns - conversation.agentReplies);
      showHandler(view.handler);
      void follow(conversation);
    } catch (error) {
      const code = codeOf(error);
      if (code !== Code.NotFound && code !== Code.PermissionDenied) throw error;
      // Gone (a fresh database) or another customer's: start a new conversation.
      conversation = null;
      saveConversation();
    }
  }

  function apply(event: ConversationEvent, current: Conversation): void {
    if (event.eventId <= current.lastEventId) return;
    current.lastEventId = event.eventId;
    switch (event.kind.case) {
      case "agentReply": {
        current.agentReplies += 1;
        if (alreadyShown > 0) {
          alreadyShown -= 1;
        } else {
          const { text, agentId } = event.kind.value;
          addMessage("agent", text, { at: event.at, author: agentId });
        }
        break;
      }
      case "handlerChange": {
        const { handler, ticketId } = event.kind.value;
        showHandler(handler);
        // Back to the bot with a ticket: that ticket was resolved.
        if (handler === Handler.BOT && ticketId) offerRating(ticketId);
        break;
      }
    }
    saveConversation();
  }

  /** Follows the session for as long as the page is open, resuming after the last event seen. */
  async function follow(current: Conversation): Promise<void> {
    const FIRST_DELAY_MS = 500;
    const LONGEST_DELAY_MS = 15_000;
    let delay = FIRST_DELAY_MS;
    for (;;) {
      try {
        const events = conversations.streamEvents(
          { tenantId, customerId, sessionId: current.sessionId, afterEventId: current.lastEventId },
          // Open as long as the page is; connected again once the gateway answers.
          { timeoutMs: 0, onHeader: () => (connectionNote.hidden = true) },
        );
        for await (const event of events) {
          delay = FIRST_DELAY_MS;
          apply(event, current);
        }
        // A clean end (the gateway restarting or draining): resume after the pause below.
      } catch (error) {
        const code = codeOf(error);
        if (code === Code.PermissionDenied || code === Code.NotFound || code === Code.InvalidArgument) {
          return; // asking again cannot help
        }
        connectionNote.hidden = false;
      }
      // Jitter spreads the reconnects of many customers after a gateway restart.
      await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random())));
      delay = Math.min(delay * 2, LONGEST_DELAY_MS);
    }
  }

  async function deliver(text: string): Promise<void> {
    const shown = addMessage("customer", text);
    // One id for the message and its retry.
    const messageId = randomId("m-");
    let response: SendMessageResponse;
    try {
      response = await withRetry(() =>
        conversations.sendMessage({
          tenantId,
          customerId,
          sessionId: conversation?.sessionId ?? "",
          channel: Channel.WEB,
          text,
          messageId,
        }),
      );
    } catch (error) {
      shown.classList.add("failed");
      shown.append(h("div", { class: "error" }, t.notSent, " ", describe(error)));
      return;
    }
    if (!conversation) {
      conversation = { sessionId: response.sessionId, lastEventId: 0n, agentReplies: 0 };
      saveConversation();
      void follow(conversation);
    }
    if (response.reply) {
      addMessage("bot", response.reply, { sources: response.sources });
    }
    showHandler(response.handler);
  }

  function offerRating(ticketId: string): void {
    if (ratedTickets().includes(ticketId)) return;
    const stars = [1, 2, 3, 4, 5].map((score) =>
      h(
        "button",
        {
          type: "button",
          class: "star",
          "data-score": score,
          "aria-label": t.score(score),
          title: t.score(score),
          onclick: () => void rate(ticketId, score, stars),
        },
        "★",
      ),
    );
    fill(rating, h("p", {}, t.rate), h("div", { class: "stars" }, ...stars));
    rating.hidden = false;
    rating.scrollIntoView({ block: "end" });
  }

  async function rate(ticketId: string, score: number, stars: HTMLButtonElement[]): Promise<void> {
    stars.forEach((star) => (star.disabled = true));
    try {
      await conversations.rateConversation({ tenantId, customerId, ticketId, score });
    } catch (error) {
      // FAILED_PRECONDITION: rated already (from another tab); anything else may be retried.
      if (codeOf(error) !== Code.FailedPrecondition) {
        stars.forEach((star) => (star.disabled = false));
        rating.append(h("p", { class: "error" }, describe(error)));
        return;
      }
    }
    localStorage.setItem(stored("rated"), JSON.stringify([...ratedTickets(), ticketId]));
    fill(rating, h("p", {}, t.thanks));
  }

  // Messages go out one after another: the first one's reply carries the session id.
  let sending = Promise.resolve();
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    sending = sending.then(() => deliver(text));
  });
}

main().catch((error) => {
  composer.querySelectorAll("input, button").forEach((control) => control.setAttribute("disabled", ""));
  messages.after(h("p", { class: "error" }, t.unavailable, " ", describe(error)));
});
