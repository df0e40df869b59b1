// The agents' console: the live queue, one ticket's conversation with reply and
// resolve, the channel the customer writes on and the delivery of each channel message,
// for admins the tenant's knowledge documents, and the Insights view (#insights) with the
// tenant's reports. Every call carries the signed-in key; the gateway decides
// what that key may do.
import "../shared/base.css";
import "./console.css";
import { timestampDate, timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { AdminService } from "../gen/kefu/v1/admin_pb";
import {
  ChannelService,
  DeliveryDirection,
  DeliveryStatus,
  type Delivery,
  type ListDeliveriesResponse,
} from "../gen/kefu/v1/channels_pb";
import { Channel, Priority, SentimentLabel, TicketStatus, VipTier } from "../gen/kefu/v1/common_pb";
import { Role } from "../gen/kefu/v1/conversation_pb";
import { ReportsService } from "../gen/kefu/v1/reports_pb";
import {
  TicketService,
  type ConversationEntry,
  type GetConversationResponse,
  type Ticket,
} from "../gen/kefu/v1/ticket_pb";
import { fill, h } from "../shared/dom";
import { clock, localize } from "../shared/i18n";
import { Code, codeOf, describe, openTransport, randomId, withRetry } from "../shared/rpc";
import { sourcesLine } from "../shared/sources";
import { duration } from "./format";
import { insightsViewFor } from "./insights";

const { lang, t } = localize({
  en: {
    title: "Agent console",
    tenant: "Tenant",
    apiKey: "API key",
    signIn: "Sign in",
    signOut: "Sign out",
    badKey: "This key is not valid for this tenant.",
    notStaff: "This key may not use the console (agents and admins only).",
    agent: "agent",
    admin: "admin",
    queue: "Queue",
    insights: "Insights",
    views: "Views",
    waiting: (n: number) => `${n} waiting`,
    takeNext: "Take next",
    queueEmpty: "The queue is empty.",
    open: "Waiting",
    inProgress: "In progress",
    none: "None.",
    pick: "Pick a ticket from the queue, or take the next one.",
    vip: { [VipTier.SILVER]: "VIP silver", [VipTier.GOLD]: "VIP gold", [VipTier.PLATINUM]: "VIP platinum" },
    priority: {
      [Priority.LOW]: "low",
      [Priority.MEDIUM]: "medium",
      [Priority.HIGH]: "high",
      [Priority.URGENT]: "urgent",
    },
    status: {
      [TicketStatus.OPEN]: "open",
      [TicketStatus.IN_PROGRESS]: "in progress",
      [TicketStatus.PENDING]: "pending",
      [TicketStatus.RESOLVED]: "resolved",
      [TicketStatus.CLOSED]: "closed",
    },
    sentiment: {
      [SentimentLabel.VERY_NEGATIVE]: "very negative",
      [SentimentLabel.NEGATIVE]: "negative",
      [SentimentLabel.NEUTRAL]: "neutral",
      [SentimentLabel.POSITIVE]: "positive",
      [SentimentLabel.VERY_POSITIVE]: "very positive",
    },
    slaLeft: (d: string) => `SLA ${d} left`,
    slaOver: (d: string) => `SLA overdue ${d}`,
    units: { d: "d", h: "h", min: "min", s: "s" },
    assignedTo: (agent: string) => `with ${agent}`,
    customer: "customer",
    sources: "Sources:",
    replyPlaceholder: "Reply to the customer (Ctrl+Enter sends)",
    send: "Send reply",
    resolve: "Resolve",
    channel: {
      [Channel.UNSPECIFIED]: "Web chat",
      [Channel.WEB]: "Web chat",
      [Channel.WECHAT]: "WeChat",
      [Channel.PHONE]: "Phone",
      [Channel.EMAIL]: "Email",
      [Channel.SMS]: "SMS",
      [Channel.APP]: "App",
      [Channel.WEBHOOK]: "Webhook",
    },
    channelLabel: "Channel",
    deliveries: "Deliveries",
    deliveriesUnavailable: "Delivery status unavailable",
    deliveryOf: {
      [Role.CUSTOMER]: "Customer message",
      [Role.BOT]: "Bot reply",
      [Role.AGENT]: "Agent reply",
    },
    delivered: "delivered",
    received: "received",
    pending: "pending",
    pendingAttempt: (n: number) => `pending (attempt ${n})`,
    failed: "failed",
    failedWith: (error: string) => `failed: ${error}`,
    documents: "Knowledge documents",
    documentsHelp:
      "Adds or replaces an article of the tenant's knowledge base. The list shows the documents added in this browser session; any other document can be deleted by its id.",
    documentId: "Document id",
    documentTitle: "Title",
    documentText: "Text (Markdown or plain)",
    add: "Add",
    added: (id: string, chunks: number) => `Added ${id} (${chunks} passages).`,
    delete: "Delete",
    deleted: (id: string) => `Deleted ${id}.`,
    notFound: (id: string) => `No document ${id}.`,
  },
  zh: {
    title: "客服工作台",
    tenant: "租户",
    apiKey: "API 密钥",
    signIn: "登录",
    signOut: "退出",
    badKey: "此密钥对该租户无效。",
    notStaff: "此密钥无权使用工作台（仅限客服和管理员）。",
    agent: "客服",
    admin: "管理员",
    queue: "排队",
    insights: "数据洞察",
    views: "视图",
    waiting: (n: number) => `${n} 人等待`,
    takeNext: "接入下一位",
    queueEmpty: "队列为空。",
    open: "等待中",
    inProgress: "处理中",
    none: "无。",
    pick: "从队列中选择工单，或接入下一位。",
    vip: { [VipTier.SILVER]: "银卡会员", [VipTier.GOLD]: "金卡会员", [VipTier.PLATINUM]: "白金会员" },
    priority: {
      [Priority.LOW]: "低",
      [Priority.MEDIUM]: "中",
      [Priority.HIGH]: "高",
      [Priority.URGENT]: "紧急",
    },
    status: {
      [TicketStatus.OPEN]: "待处理",
      [TicketStatus.IN_PROGRESS]: "处理中",
      [TicketStatus.PENDING]: "挂起",
      [TicketStatus.RESOLVED]: "已解决",
      [TicketStatus.CLOSED]: "已关闭",
    },
    sentiment: {
      [SentimentLabel.VERY_NEGATIVE]: "非常负面",
      [SentimentLabel.NEGATIVE]: "负面",
      [SentimentLabel.NEUTRAL]: "中性",
      [SentimentLabel.POSITIVE]: "正面",
      [SentimentLabel.VERY_POSITIVE]: "非常正面",
    },
    slaLeft: (d: string) => `SLA 剩余 ${d}`,
    slaOver: (d: string) => `SLA 已超时 ${d}`,
    units: { d: "天", h: "小时", min: "分钟", s: "秒" },
    assignedTo: (agent: string) => `由 ${agent} 处理`,
    customer: "客户",
    sources: "参考：",
    replyPlaceholder: "回复客户（Ctrl+Enter 发送）",
    send: "发送回复",
    resolve: "标记已解决",
    channel: {
      [Channel.UNSPECIFIED]: "网页聊天",
      [Channel.WEB]: "网页聊天",
      [Channel.WECHAT]: "微信",
      [Channel.PHONE]: "电话",
      [Channel.EMAIL]: "邮件",
      [Channel.SMS]: "短信",
      [Channel.APP]: "App",
      [Channel.WEBHOOK]: "Webhook",
    },
    channelLabel: "渠道",
    deliveries: "消息投递",
    deliveriesUnavailable: "暂时无法获取投递状态",
    deliveryOf: {
      [Role.CUSTOMER]: "客户消息",
      [Role.BOT]: "机器人回复",
      [Role.AGENT]: "客服回复",
    },
    delivered: "已送达",
    received: "已接收",
    pending: "等待发送",
    pendingAttempt: (n: number) => `等待发送（第 ${n} 次尝试）`,
    failed: "发送失败",
    failedWith: (error: string) => `发送失败：${error}`,
    documents: "知识库文档",
    documentsHelp: "添加或替换租户知识库中的文章。下方列出本次浏览器会话中添加的文档；其他文档可按 ID 删除。",
    documentId: "文档 ID",
    documentTitle: "标题",
    documentText: "正文（Markdown 或纯文本）",
    add: "添加",
    added: (id: string, chunks: number) => `已添加 ${id}（${chunks} 段）。`,
    delete: "删除",
    deleted: (id: string) => `已删除 ${id}。`,
    notFound: (id: string) => `没有文档 ${id}。`,
  },
});

const POLL_MS = 2_000;
const KEY = "kefu.console.key";
const TENANT = "kefu.console.tenant";

// The key lives in sessionStorage: it survives a reload, not the closing of the tab.
let apiKey = sessionStorage.getItem(KEY);
let tenantId = sessionStorage.getItem(TENANT) ?? new URLSearchParams(location.search).get("tenant") ?? "demo";

/** Runs `task` now and again `ms` after each run ends (never two at once); returns a stop. */
function every(ms: number, task: () => Promise<void>): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  const run = async () => {
    await task();
    if (!stopped) timer = setTimeout(run, ms);
  };
  void run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** An SLA's time, to the minute: "3 h 5 min". */
const slaTime = (ms: number) => duration(ms / 1000, t.units, "min");

/** The facts an agent scans a ticket for: VIP tier, priority, status, who has it, SLA. */
function ticketFacts(ticket: Ticket): HTMLElement[] {
  const facts: HTMLElement[] = [];
  const vip = t.vip[ticket.vipTier as keyof typeof t.vip];
  if (vip) facts.push(h("span", { class: "pill vip" }, vip));
  const priority = Priority[ticket.priority]?.toLowerCase();
  facts.push(
    h(
      "span",
      { class: `pill priority-${priority}` },
      t.priority[ticket.priority as keyof typeof t.priority] ?? "",
    ),
    h("span", { class: "pill" }, t.status[ticket.status as keyof typeof t.status] ?? ""),
  );
  if (ticket.assignee) facts.push(h("span", { class: "pill" }, t.assignedTo(ticket.assignee)));
  const open = ticket.status !== TicketStatus.RESOLVED && ticket.status !== TicketStatus.CLOSED;
  if (ticket.slaDueAt && open) {
    const left = timestampMs(ticket.slaDueAt) - Date.now();
    const late = left < 0 || ticket.slaBreached;
    facts.push(
      h(
        "span",
        { class: late ? "pill late" : "pill" },
        late ? t.slaOver(slaTime(-left)) : t.slaLeft(slaTime(left)),
      ),
    );
  }
  return facts;
}

/** Queue order, as NextInQueue serves it: VIP tier, then priority, then age. */
function queueOrder(a: Ticket, b: Ticket): number {
  const age = (ticket: Ticket) => (ticket.createdAt ? timestampMs(ticket.createdAt) : 0);
  return b.vipTier - a.vipTier || b.priority - a.priority || age(a) - age(b);
}

const ROLES: Partial<Record<Role, string>> = {
  [Role.CUSTOMER]: "customer",
  [Role.BOT]: "bot",
  [Role.AGENT]: "agent",
};

function entryView(entry: ConversationEntry): HTMLLIElement {
  const role = ROLES[entry.role] ?? "customer";
  const sentiment = t.sentiment[entry.sentiment as keyof typeof t.sentiment];
  return h(
    "li",
    { class: `entry ${role}`, "data-testid": "conversation-entry", "data-role": role },
    h(
      "div",
      { class: "entry-head" },
      h("strong", {}, entry.author),
      h("span", { class: "muted" }, entry.at ? clock(lang, timestampDate(entry.at)) : ""),
      sentiment && h("span", { class: `pill sentiment-${entry.sentiment}` }, sentiment),
      entry.intent && h("span", { class: "pill intent" }, entry.intent),
    ),
    h("div", { class: "entry-text" }, entry.text),
    sourcesLine(t.sources, entry.sources),
  );
}

/** An instant as a <time>: the clock for people, the instant itself for machines. */
function timeView(at: Timestamp): HTMLTimeElement {
  const date = timestampDate(at);
  return h("time", { datetime: date.toISOString() }, clock(lang, date));
}

/** How far a channel message got: "delivered 14:03", "pending (attempt 2)", "failed: …". */
function deliveryState(delivery: Delivery): (Node | string)[] {
  switch (delivery.status) {
    case DeliveryStatus.DELIVERED: {
      const done = delivery.direction === DeliveryDirection.INBOUND ? t.received : t.delivered;
      return delivery.deliveredAt ? [`${done} `, timeView(delivery.deliveredAt)] : [done];
    }
    case DeliveryStatus.FAILED:
      // The channel's answer, never message text: safe to show.
      return [delivery.lastError ? t.failedWith(delivery.lastError) : t.failed];
    default:
      return [delivery.attempts > 0 ? t.pendingAttempt(delivery.attempts) : t.pending];
  }
}

/** One message in or out on the customer's channel: whose, when written, how far it got. */
function deliveryView(delivery: Delivery): HTMLLIElement {
  const role = ROLES[delivery.role] ?? "customer";
  const status = DeliveryStatus[delivery.status]?.toLowerCase() ?? "unspecified";
  const retrying = delivery.status === DeliveryStatus.PENDING && delivery.lastError;
  return h(
    "li",
    {
      class: `delivery ${role}`,
      "data-testid": "delivery",
      "data-delivery-id": delivery.deliveryId,
      "data-role": role,
      "data-direction": delivery.direction === DeliveryDirection.INBOUND ? "inbound" : "outbound",
      "data-status": status,
    },
    h("span", { class: "delivery-what" }, t.deliveryOf[delivery.role as keyof typeof t.deliveryOf] ?? ""),
    h("span", { class: "muted" }, delivery.createdAt ? clock(lang, timestampDate(delivery.createdAt)) : ""),
    h(
      "span",
      { class: `delivery-status status-${status}`, "data-testid": "delivery-status" },
      ...deliveryState(delivery),
    ),
    retrying && h("span", { class: "muted delivery-error" }, delivery.lastError),
  );
}

async function main(): Promise<void> {
  const transport = await openTransport(() => apiKey);
  const tickets = createClient(TicketService, transport);
  const admin = createClient(AdminService, transport);
  const reports = createClient(ReportsService, transport);
  const channels = createClient(ChannelService, transport);
  document.title = t.title;

  // Sign-in.
  const tenantInput = h("input", {
    value: tenantId,
    required: true,
    autocomplete: "off",
    "aria-label": t.tenant,
  });
  const keyInput = h("input", {
    "data-testid": "console-key",
    type: "password",
    required: true,
    autocomplete: "off",
    "aria-label": t.apiKey,
  });
  const signInError = h("p", { class: "error", role: "alert" });
  const signInForm = h(
    "form",
    { class: "signin panel" },
    h("h1", {}, t.title),
    h("label", {}, t.tenant, tenantInput),
    h("label", {}, t.apiKey, keyInput),
    h("button", { "data-testid": "console-signin", type: "submit" }, t.signIn),
    signInError,
  );

  // Workspace.
  const who = h("span", { class: "muted" });
  const depth = h("span", { class: "pill" });
  const queueError = h("p", { class: "error", role: "alert" });
  const waitingList = h("ol", { class: "tickets" });
  const workingList = h("ol", { class: "tickets" });
  const takeNext = h("button", { "data-testid": "take-next", type: "button" }, t.takeNext);
  const queuePanel = h(
    "section",
    { class: "panel queue" },
    h("div", { class: "panel-head" }, h("h2", {}, t.queue), depth, takeNext),
    queueError,
    h("h3", {}, t.open),
    waitingList,
    h("h3", {}, t.inProgress),
    workingList,
  );

  const ticketHead = h("div", { class: "ticket-head" });
  const entries = h("ol", { class: "entries" });
  // Where the customer writes and how the channel's messages fared; the web chat's
  // sessions never pass the channel service and show the badge alone.
  const channelBadge = h("span", {
    class: "pill channel",
    "data-testid": "channel-badge",
    title: t.channelLabel,
    hidden: true,
  });
  const deliveryList = h("ol", { class: "deliveries-list" });
  const deliveriesPanel = h(
    "section",
    { class: "deliveries", "data-testid": "deliveries", hidden: true },
    h("h3", {}, t.deliveries),
    deliveryList,
  );
  const deliveriesNote = h(
    "p",
    { class: "muted deliveries-note", "data-testid": "deliveries-note", role: "status", hidden: true },
    t.deliveriesUnavailable,
  );
  const replyInput = h("textarea", {
    "data-testid": "reply-input",
    rows: 3,
    placeholder: t.replyPlaceholder,
    "aria-label": t.replyPlaceholder,
  });
  const replySend = h("button", { "data-testid": "reply-send", type: "submit" }, t.send);
  const resolveButton = h(
    "button",
    { "data-testid": "resolve", type: "button", class: "secondary" },
    t.resolve,
  );
  const replyForm = h(
    "form",
    { class: "reply" },
    replyInput,
    h("div", { class: "actions" }, resolveButton, replySend),
  );
  const ticketError = h("p", { class: "error", role: "alert" });
  const placeholder = h("p", { class: "muted" }, t.pick);
  const ticketPanel = h(
    "section",
    { class: "panel conversation" },
    placeholder,
    ticketHead,
    entries,
    deliveriesPanel,
    deliveriesNote,
    replyForm,
    ticketError,
  );

  const documentsPanel = documentsPanelFor(admin);
  const queueView = h("div", {}, h("div", { class: "columns" }, queuePanel, ticketPanel), documentsPanel.element);
  const insights = insightsViewFor(reports, () => tenantId);
  const views = [
    { hash: "#queue", name: t.queue, element: queueView },
    { hash: "#insights", name: t.insights, element: insights.element },
  ].map((view) => ({
    ...view,
    link: h("a", { href: view.hash, "data-testid": `nav-${view.hash.slice(1)}` }, view.name),
  }));
  const workspace = h(
    "div",
    { class: "workspace" },
    h(
      "header",
      { class: "topbar" },
      h("h1", {}, t.title),
      h("nav", { class: "views", "aria-label": t.views }, ...views.map((view) => view.link)),
      who,
      h("button", { type: "button", class: "secondary", onclick: signOut }, t.signOut),
    ),
    ...views.map((view) => view.element),
  );

  fill(document.getElementById("app")!, signInForm, workspace);

  let selected: string | null = null;
  /** What the entries looked like when last drawn: redrawn only when it changes. */
  let drawn = "";
  /** The same for the deliveries. */
  let deliveriesDrawn = "";
  let stopQueue = () => {};
  let stopTicket = () => {};

  function showSignIn(): void {
    stopQueue();
    stopTicket();
    signInForm.hidden = false;
    workspace.hidden = true;
    keyInput.focus();
  }

  function signOut(): void {
    apiKey = null;
    sessionStorage.removeItem(KEY);
    keyInput.value = "";
    select(null);
    showSignIn();
  }

  /** Checks the key with a call every staff key may make; tells an admin key by a probe. */
  async function signIn(key: string, tenant: string): Promise<void> {
    apiKey = key;
    tenantId = tenant;
    try {
      await tickets.listTickets({ tenantId, pageSize: 1 });
    } catch (error) {
      apiKey = null;
      const code = codeOf(error);
      signInError.textContent =
        code === Code.Unauthenticated
          ? t.badKey
          : code === Code.PermissionDenied
            ? t.notStaff
            : describe(error);
      showSignIn();
      return;
    }
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(TENANT, tenant);
    const isAdmin = await probeAdmin();
    signInError.textContent = "";
    who.textContent = `${tenantId} · ${isAdmin ? t.admin : t.agent}`;
    documentsPanel.element.hidden = !isAdmin;
    documentsPanel.show();
    signInForm.hidden = true;
    workspace.hidden = false;
    showView();
  }

  /** Shows the view the URL's hash names (the queue by default); only the queue polls. */
  function showView(): void {
    const shown = views.find((view) => view.hash === location.hash) ?? views[0];
    for (const view of views) {
      view.element.hidden = view !== shown;
      if (view === shown) view.link.setAttribute("aria-current", "page");
      else view.link.removeAttribute("aria-current");
    }
    stopQueue();
    stopTicket();
    if (shown.element === queueView) {
      stopQueue = every(POLL_MS, refreshQueue);
      select(selected);
    } else {
      void insights.load();
    }
  }
  window.addEventListener("hashchange", () => {
    if (apiKey && !workspace.hidden) showView();
  });

  /**
   * No RPC says who the caller is, so ask something only an admin may ask and that
   * changes nothing: deleting the document with no id. The gateway refuses a non-admin
   * key (PERMISSION_DENIED) before it looks at the request (INVALID_ARGUMENT).
   */
  async function probeAdmin(): Promise<boolean> {
    try {
      await admin.deleteDocument({ tenantId, documentId: "" });
      return true;
    } catch (error) {
      return codeOf(error) === Code.InvalidArgument;
    }
  }

  async function refreshQueue(): Promise<void> {
    try {
      const [open, working, next] = await Promise.all([
        tickets.listTickets({ tenantId, status: TicketStatus.OPEN, pageSize: 100 }),
        tickets.listTickets({ tenantId, status: TicketStatus.IN_PROGRESS, pageSize: 100 }),
        tickets.nextInQueue({ tenantId, take: false }),
      ]);
      depth.textContent = t.waiting(next.queueDepth);
      for (const [list, found] of [
        [waitingList, open.tickets],
        [workingList, working.tickets],
      ] as const) {
        const items = [...found].sort(queueOrder).map(queueItem);
        fill(list, ...(items.length > 0 ? items : [h("li", { class: "muted" }, t.none)]));
      }
      queueError.textContent = "";
    } catch (error) {
      queueError.textContent = describe(error);
    }
  }

  function queueItem(ticket: Ticket): HTMLLIElement {
    return h(
      "li",
      {
        "data-testid": "queue-item",
        "data-ticket-id": ticket.ticketId,
        class: ticket.ticketId === selected ? "selected" : "",
      },
      h(
        "button",
        { type: "button", class: "ticket", onclick: () => select(ticket.ticketId) },
        h("span", { class: "subject" }, ticket.subject || ticket.ticketId),
        h("span", { class: "muted" }, `${t.customer} ${ticket.customerId}`),
        h("span", { class: "facts" }, ...ticketFacts(ticket)),
      ),
    );
  }

  takeNext.addEventListener("click", async () => {
    takeNext.disabled = true;
    try {
      const taken = await tickets.nextInQueue({ tenantId, take: true });
      if (taken.ticket) {
        select(taken.ticket.ticketId);
        queueError.textContent = "";
      } else {
        queueError.textContent = t.queueEmpty;
      }
      await refreshQueue();
    } catch (error) {
      queueError.textContent = describe(error);
    } finally {
      takeNext.disabled = false;
    }
  });

  function select(ticketId: string | null): void {
    stopTicket();
    selected = ticketId;
    drawn = "";
    for (const item of queuePanel.querySelectorAll<HTMLElement>("[data-testid=queue-item]")) {
      item.classList.toggle("selected", item.dataset.ticketId === ticketId);
    }
    placeholder.hidden = ticketId !== null;
    for (const part of [ticketHead, entries, replyForm]) part.hidden = ticketId === null;
    fill(ticketHead);
    fill(entries);
    deliveriesDrawn = "";
    fill(deliveryList);
    channelBadge.hidden = deliveriesPanel.hidden = deliveriesNote.hidden = true;
    ticketError.textContent = "";
    if (ticketId) stopTicket = every(POLL_MS, () => refreshTicket(ticketId));
  }

  async function refreshTicket(ticketId: string): Promise<void> {
    let view: GetConversationResponse;
    try {
      view = await tickets.getConversation({ tenantId, ticketId });
    } catch (error) {
      ticketError.textContent = describe(error);
      return;
    }
    if (ticketId !== selected || !view.ticket) return;
    const ticket = view.ticket;
    fill(
      ticketHead,
      h("h2", {}, ticket.subject || ticket.ticketId),
      h("p", { class: "muted" }, `${ticket.ticketId} · ${t.customer} ${ticket.customerId}`),
      h("div", { class: "facts" }, channelBadge, ...ticketFacts(ticket)),
    );
    const last = view.entries.at(-1);
    const shape = `${ticketId}/${view.entries.length}/${last?.at ? timestampMs(last.at) : 0}`;
    if (shape !== drawn) {
      drawn = shape;
      fill(entries, ...view.entries.map(entryView));
      entries.lastElementChild?.scrollIntoView({ block: "nearest" });
    }
    const closed = ticket.status === TicketStatus.RESOLVED || ticket.status === TicketStatus.CLOSED;
    replyInput.disabled = replySend.disabled = resolveButton.disabled = closed;
    ticketError.textContent = "";
    // Once the conversation is drawn: a slow or failing channel service never holds it back.
    await refreshDeliveries(ticketId, ticket.sessionId);
  }

  /** The channel badge and the deliveries of the ticket's session, on every refresh. */
  async function refreshDeliveries(ticketId: string, sessionId: string): Promise<void> {
    if (!sessionId) return; // a ticket opened by hand: no conversation on any channel
    let found: ListDeliveriesResponse;
    try {
      found = await channels.listDeliveries({ tenantId, sessionId });
    } catch (error) {
      if (ticketId !== selected) return;
      // The badge stays if it was known: a session keeps its channel.
      deliveriesPanel.hidden = true;
      deliveriesDrawn = "";
      deliveriesNote.title = describe(error);
      deliveriesNote.hidden = false;
      return;
    }
    if (ticketId !== selected) return;
    deliveriesNote.hidden = true;
    channelBadge.textContent = t.channel[found.channel as keyof typeof t.channel] ?? `${found.channel}`;
    channelBadge.setAttribute("data-channel", String(found.channel));
    channelBadge.hidden = false;
    const shape = JSON.stringify(
      found.deliveries.map((d) => [
        d.deliveryId,
        d.status,
        d.attempts,
        d.lastError,
        d.deliveredAt ? timestampMs(d.deliveredAt) : 0,
      ]),
    );
    if (shape !== deliveriesDrawn) {
      deliveriesDrawn = shape;
      fill(deliveryList, ...found.deliveries.map(deliveryView));
    }
    deliveriesPanel.hidden = found.deliveries.length === 0;
  }

  replyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = replyInput.value.trim();
    const ticketId = selected;
    if (!text || !ticketId) return;
    replySend.disabled = true;
    // One id for the reply and its retry.
    const requestId = randomId("r-");
    try {
      await withRetry(() => tickets.replyToCustomer({ tenantId, ticketId, text, requestId }));
      replyInput.value = "";
      await refreshTicket(ticketId);
    } catch (error) {
      ticketError.textContent = describe(error);
    } finally {
      replySend.disabled = false;
    }
  });
  replyInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) replyForm.requestSubmit();
  });

  resolveButton.addEventListener("click", async () => {
    const ticketId = selected;
    if (!ticketId) return;
    resolveButton.disabled = true;
    try {
      await tickets.transitionTicket({ tenantId, ticketId, toStatus: TicketStatus.RESOLVED });
      await Promise.all([refreshTicket(ticketId), refreshQueue()]);
    } catch (error) {
      ticketError.textContent = describe(error);
      resolveButton.disabled = false;
    }
  });

  signInForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void signIn(keyInput.value.trim(), tenantInput.value.trim());
  });

  if (apiKey) {
    await signIn(apiKey, tenantId);
  } else {
    showSignIn();
  }
}

/**
 * Admins add and delete the tenant's documents. There is no ListDocuments RPC, so the
 * panel lists what was added in this browser session and deletes anything else by id.
 */
function documentsPanelFor(admin: Client<typeof AdminService>) {
  const storedKey = () => `kefu.console.documents.${tenantId}`;
  const added = (): { id: string; title: string }[] =>
    JSON.parse(sessionStorage.getItem(storedKey()) ?? "[]");
  const remember = (documents: { id: string; title: string }[]) =>
    sessionStorage.setItem(storedKey(), JSON.stringify(documents));

  const idInput = h("input", {
    required: true,
    autocomplete: "off",
    "aria-label": t.documentId,
    placeholder: t.documentId,
  });
  const titleInput = h("input", {
    autocomplete: "off",
    "aria-label": t.documentTitle,
    placeholder: t.documentTitle,
  });
  const textInput = h("textarea", {
    required: true,
    rows: 5,
    "aria-label": t.documentText,
    placeholder: t.documentText,
  });
  const deleteInput = h("input", {
    required: true,
    autocomplete: "off",
    "aria-label": t.documentId,
    placeholder: t.documentId,
  });
  const list = h("ul", { class: "documents-list" });
  const status = h("p", { class: "muted", role: "status" });

  function show(): void {
    fill(
      list,
      ...added().map(({ id, title }) =>
        h(
          "li",
          {},
          h("span", {}, h("strong", {}, id), title && title !== id ? ` · ${title}` : ""),
          h("button", { type: "button", class: "secondary", onclick: () => void remove(id) }, t.delete),
        ),
      ),
    );
  }

  async function remove(id: string): Promise<void> {
    try {
      const { deleted } = await admin.deleteDocument({ tenantId, documentId: id });
      status.textContent = deleted ? t.deleted(id) : t.notFound(id);
      remember(added().filter((document) => document.id !== id));
      show();
    } catch (error) {
      status.textContent = describe(error);
    }
  }

  const addForm = h(
    "form",
    { class: "add-document" },
    idInput,
    titleInput,
    textInput,
    h("button", { type: "submit" }, t.add),
  );
  addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = idInput.value.trim();
    const title = titleInput.value.trim();
    try {
      const { chunks } = await admin.ingestDocuments({
        tenantId,
        documents: [{ documentId: id, title, text: textInput.value }],
      });
      status.textContent = t.added(id, chunks);
      remember([...added().filter((document) => document.id !== id), { id, title }]);
      show();
      addForm.reset();
    } catch (error) {
      status.textContent = describe(error);
    }
  });

  const deleteForm = h(
    "form",
    { class: "delete-document" },
    deleteInput,
    h("button", { type: "submit", class: "secondary" }, t.delete),
  );
  deleteForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void remove(deleteInput.value.trim()).then(() => deleteForm.reset());
  });

  const element = h(
    "section",
    { class: "panel documents", hidden: true },
    h("h2", {}, t.documents),
    h("p", { class: "muted" }, t.documentsHelp),
    addForm,
    list,
    deleteForm,
    status,
  );
  return { element, show };
}

main().catch((error) => {
  fill(document.getElementById("app")!, h("p", { class: "error panel" }, describe(error)));
});
