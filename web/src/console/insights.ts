// The console's Insights view: what a team lead checks weekly (conversations, the share
// the bot resolves, satisfaction, VIP first responses, hand-offs) over a period, and the
// questions the bot could not answer, grouped. Everything shown is what GetSupportReport
// and ListKnowledgeGaps return; both export as CSV.
import "./insights.css";
import { timestampDate, timestampFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { Channel, Language } from "../gen/kefu/v1/common_pb";
import type {
  ConversationCounts,
  GetSupportReportResponse,
  KnowledgeGap,
  ListKnowledgeGapsResponse,
  ReportsService,
} from "../gen/kefu/v1/reports_pb";
import { fill, h } from "../shared/dom";
import { localize } from "../shared/i18n";
import { describe } from "../shared/rpc";
import { barChart, dailyChart } from "./charts";
import { downloadCsv, type Cell } from "./csv";
import { duration } from "./format";

/** "1 rating", "12 ratings": `n` as formatted. */
const plural = (n: string, one: string, many: string) => `${n} ${n === "1" ? one : many}`;

const { lang, t } = localize({
  en: {
    period: "Period",
    periods: { "7": "Last 7 days", "30": "Last 30 days", custom: "Custom" },
    from: "From",
    to: "To",
    channel: "Channel",
    language: "Language",
    all: "All",
    channels: {
      [Channel.WEB]: "Web",
      [Channel.WECHAT]: "WeChat",
      [Channel.PHONE]: "Phone",
      [Channel.EMAIL]: "Email",
      [Channel.SMS]: "SMS",
      [Channel.APP]: "App",
    },
    languages: { [Language.EN]: "English", [Language.ZH]: "Chinese" },
    days: (from: string, to: string) => `${from} to ${to}, UTC days`,
    pickDates: "Choose both dates.",
    exportReport: "Export report (CSV)",
    exportGaps: "Export gaps (CSV)",
    conversations: "Conversations",
    conversationsNote: "sessions started in the period",
    resolvedByBot: "Resolved by the bot",
    resolvedNote: (resolved: string, all: string) => `${resolved} of ${all}`,
    awaitingNote: (n: string) => `${n} ended less than 24 h ago: not counted yet`,
    satisfaction: "Satisfaction",
    ratings: (n: string) => `of 5 · ${plural(n, "rating", "ratings")}`,
    vipFirstResponse: "VIP first response",
    p50p90: "p50 / p90",
    within: (n: string, all: string, target: string) => `${n} of ${all} within ${target}`,
    handoffs: "Hand-offs",
    handoffsNote: (share: string) => `${share} of the conversations`,
    above: (target: string) => `target > ${target}`,
    below: (target: string) => `target < ${target}`,
    met: (target: string) => `✓ met: ${target}`,
    missed: (target: string) => `✗ missed: ${target}`,
    daily: "Conversations per day",
    legendConversations: "conversations",
    legendResolved: "resolved by the bot",
    dayConversations: (day: string, n: string) => `${day}: ${plural(n, "conversation", "conversations")}`,
    dayResolved: (day: string, n: string) => `${day}: ${n} resolved by the bot`,
    reasons: "Hand-offs by reason",
    reasonTitle: (reason: string, n: string) => `${reason}: ${plural(n, "hand-off", "hand-offs")}`,
    reason: {
      complaint: "Complaint",
      negative_sentiment: "Negative mood",
      human_request: "Asked for a person",
      no_answer: "No answer found",
      intent_route: "Topic for staff",
      knowledge_unavailable: "Knowledge base down",
      needs_person: "Needs a person",
      router_unavailable: "Router down",
      security_incident: "Security incident",
      safety_hazard: "Safety hazard",
      legal_threat: "Legal threat",
      churn_threat: "Churn threat",
      stalled: "Stalled",
    } as Record<string, string>,
    satisfactionChart: "Satisfaction ratings",
    score: (score: number) => `${score} ★`,
    scoreTitle: (score: number, n: string) => `${score} of 5: ${plural(n, "rating", "ratings")}`,
    none: "None in this period.",
    breakdown: "By channel and language",
    handedOff: "Handed off",
    times: "Response and resolution times (hand-offs)",
    tickets: "Tickets",
    withinTarget: "Within target",
    timeRows: {
      first_response: "First response",
      first_response_vip: "First response, VIP",
      resolution: "Resolution",
      resolution_vip: "Resolution, VIP",
    },
    gaps: "Knowledge gaps",
    gapsHelp:
      "Questions the bot could not answer, grouped by meaning, largest first. An article that answers a group covers it.",
    showCovered: "Show covered",
    pending: (n: string) => `${plural(n, "new question is", "new questions are")} not grouped yet.`,
    noGaps: "No knowledge gaps.",
    questions: (n: string) => plural(n, "question", "questions"),
    trend: (last: string, previous: string) => `${last} in the last 7 days, ${previous} in the 7 before`,
    trendName: { up: "rising", down: "falling", flat: "steady" },
    closest: (title: string, closeness: string) => `Closest article: ${title} (${closeness} similar)`,
    noClosest: "No article comes close.",
    asked: (first: string, last: string) => `First asked ${first}, last ${last}`,
    covered: (document: string, at: string) => `Covered by ${document} since ${at}`,
    open: "Open",
    units: { d: "d", h: "h", min: "min", s: "s" },
  },
  zh: {
    period: "时间段",
    periods: { "7": "最近 7 天", "30": "最近 30 天", custom: "自定义" },
    from: "开始",
    to: "结束",
    channel: "渠道",
    language: "语言",
    all: "全部",
    channels: {
      [Channel.WEB]: "网页",
      [Channel.WECHAT]: "微信",
      [Channel.PHONE]: "电话",
      [Channel.EMAIL]: "邮件",
      [Channel.SMS]: "短信",
      [Channel.APP]: "App",
    },
    languages: { [Language.EN]: "英文", [Language.ZH]: "中文" },
    days: (from: string, to: string) => `${from} 至 ${to}（UTC 日期）`,
    pickDates: "请选择开始和结束日期。",
    exportReport: "导出报表（CSV）",
    exportGaps: "导出知识盲区（CSV）",
    conversations: "会话数",
    conversationsNote: "期间内开始的会话",
    resolvedByBot: "机器人解决率",
    resolvedNote: (resolved: string, all: string) => `${all} 个中的 ${resolved} 个`,
    awaitingNote: (n: string) => `${n} 个结束不到 24 小时，暂不计入`,
    satisfaction: "满意度",
    ratings: (n: string) => `满分 5 · ${n} 条评价`,
    vipFirstResponse: "VIP 首次响应",
    p50p90: "p50 / p90",
    within: (n: string, all: string, target: string) => `${all} 个中 ${n} 个在 ${target} 内`,
    handoffs: "转人工",
    handoffsNote: (share: string) => `占会话的 ${share}`,
    above: (target: string) => `目标 > ${target}`,
    below: (target: string) => `目标 < ${target}`,
    met: (target: string) => `✓ 达标：${target}`,
    missed: (target: string) => `✗ 未达标：${target}`,
    daily: "每日会话",
    legendConversations: "会话",
    legendResolved: "机器人解决",
    dayConversations: (day: string, n: string) => `${day}：${n} 个会话`,
    dayResolved: (day: string, n: string) => `${day}：机器人解决 ${n} 个`,
    reasons: "转人工原因",
    reasonTitle: (reason: string, n: string) => `${reason}：${n} 次转人工`,
    reason: {
      complaint: "投诉",
      negative_sentiment: "情绪负面",
      human_request: "要求人工",
      no_answer: "未找到答案",
      intent_route: "需人工处理的主题",
      knowledge_unavailable: "知识库不可用",
      needs_person: "需要人工处理",
      router_unavailable: "意图识别不可用",
      security_incident: "安全事件",
      safety_hazard: "安全隐患",
      legal_threat: "法律威胁",
      churn_threat: "流失风险",
      stalled: "对话停滞",
    } as Record<string, string>,
    satisfactionChart: "满意度评分分布",
    score: (score: number) => `${score} ★`,
    scoreTitle: (score: number, n: string) => `${score} 分：${n} 条评价`,
    none: "此期间没有数据。",
    breakdown: "按渠道和语言",
    handedOff: "转人工",
    times: "响应与解决时长（转人工工单）",
    tickets: "工单",
    withinTarget: "达标",
    timeRows: {
      first_response: "首次响应",
      first_response_vip: "首次响应（VIP）",
      resolution: "解决",
      resolution_vip: "解决（VIP）",
    },
    gaps: "知识盲区",
    gapsHelp: "机器人未能回答的问题，按语义分组，数量多的在前。有文章能回答某组问题后，该组即标记为已覆盖。",
    showCovered: "显示已覆盖",
    pending: (n: string) => `${n} 个新问题尚未分组。`,
    noGaps: "没有知识盲区。",
    questions: (n: string) => `${n} 个问题`,
    trend: (last: string, previous: string) => `最近 7 天 ${last} 个，之前 7 天 ${previous} 个`,
    trendName: { up: "上升", down: "下降", flat: "持平" },
    closest: (title: string, closeness: string) => `最接近的文章：${title}（相似度 ${closeness}）`,
    noClosest: "没有相近的文章。",
    asked: (first: string, last: string) => `首次提问 ${first}，最近 ${last}`,
    covered: (document: string, at: string) => `自 ${at} 起由 ${document} 覆盖`,
    open: "未覆盖",
    units: { d: "天", h: "小时", min: "分钟", s: "秒" },
  },
});

const locale = lang === "zh" ? "zh-CN" : "en";
const count = new Intl.NumberFormat(locale);
const percent = new Intl.NumberFormat(locale, { style: "percent", maximumFractionDigits: 1 });
const average = new Intl.NumberFormat(locale, { minimumFractionDigits: 1, maximumFractionDigits: 2 });
const tenths = new Intl.NumberFormat(locale, { maximumFractionDigits: 1 });
/** Response times against a 30 s target: tenths below 10 s ("0.4 s"), then as a duration. */
const seconds = (value: number) =>
  value < 10 ? `${tenths.format(value)} ${t.units.s}` : duration(value, t.units);
const date = (at: Timestamp | undefined) =>
  at ? timestampDate(at).toLocaleDateString(locale, { dateStyle: "medium" }) : "";
const iso = (at: Timestamp | undefined) => (at ? timestampDate(at).toISOString() : "");
/** An enum value as data ("web", "zh"); empty when unspecified. */
const enumName = (names: Record<number, string>, value: number) =>
  value ? (names[value] ?? "").toLowerCase() : "";

const DAY_MS = 86_400_000;
/** YYYY-MM-DD of a UTC day. */
const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);

/** A period of whole UTC days, as the report's daily rows count them; `to` is exclusive. */
interface Period {
  from: number;
  to: number;
}

interface ShownReport {
  response: GetSupportReportResponse;
  /** What was asked: the CSV's file name tells the period. */
  period: Period;
}

const TREND_ARROWS = { up: "↑", down: "↓", flat: "→" };
const TIME_ROWS = ["first_response", "first_response_vip", "resolution", "resolution_vip"] as const;
/** Stats of a report without them (a back-end that leaves the field out). */
const NO_STATS = { count: 0n, p50Seconds: 0, p90Seconds: 0, withinTarget: 0n, targetSeconds: 0 };

export function insightsViewFor(reports: Client<typeof ReportsService>, tenant: () => string) {
  // The filters.
  const periodSelect = h(
    "select",
    { "data-testid": "insights-period" },
    ...Object.entries(t.periods).map(([value, label]) => h("option", { value }, label)),
  );
  const fromInput = h("input", { type: "date", "data-testid": "insights-from", "aria-label": t.from });
  const toInput = h("input", { type: "date", "data-testid": "insights-to", "aria-label": t.to });
  const customDates = h(
    "span",
    { class: "custom-dates", hidden: true },
    h("label", {}, t.from, fromInput),
    h("label", {}, t.to, toInput),
  );
  const options = (names: Record<number, string>) => [
    h("option", { value: 0 }, t.all),
    ...Object.entries(names).map(([value, label]) => h("option", { value }, label)),
  ];
  const channelSelect = h("select", { "data-testid": "insights-channel" }, ...options(t.channels));
  const languageSelect = h("select", { "data-testid": "insights-language" }, ...options(t.languages));
  const exportReport = h(
    "button",
    { type: "button", class: "secondary", "data-testid": "export-report", disabled: true },
    t.exportReport,
  );
  const periodLine = h("p", { class: "muted", "data-testid": "insights-days" });

  // The report.
  const reportError = h("p", { class: "error panel", role: "alert", "data-testid": "insights-error" });
  const tiles = h("div", { class: "tiles" });
  const dailyFigure = h("div");
  const reasonsFigure = h("div", { class: "reasons" });
  const satisfactionFigure = h("div", { class: "satisfaction" });
  const breakdownBody = h("tbody");
  const timesBody = h("tbody");
  const legend = h(
    "p",
    { class: "legend muted" },
    h("span", { class: "swatch conversations" }),
    t.legendConversations,
    h("span", { class: "swatch resolved" }),
    t.legendResolved,
  );
  /** A table whose columns after the first `text` ones hold numbers. */
  const table = (head: string[], text: number, body: HTMLTableSectionElement) =>
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h("tr", {}, ...head.map((name, i) => h("th", { class: i < text ? "" : "number" }, name))),
      ),
      body,
    );
  const reportBody = h(
    "div",
    { class: "report", hidden: true },
    tiles,
    h(
      "section",
      { class: "panel wide" },
      h("div", { class: "panel-head" }, h("h2", {}, t.daily), legend),
      dailyFigure,
    ),
    h("section", { class: "panel" }, h("h2", {}, t.reasons), reasonsFigure),
    h("section", { class: "panel" }, h("h2", {}, t.satisfactionChart), satisfactionFigure),
    h(
      "section",
      { class: "panel" },
      h("h2", {}, t.breakdown),
      table([t.channel, t.language, t.conversations, t.resolvedByBot, t.handedOff], 2, breakdownBody),
    ),
    h(
      "section",
      { class: "panel" },
      h("h2", {}, t.times),
      table(["", t.tickets, "p50", "p90", t.withinTarget], 1, timesBody),
    ),
  );
  const reportSection = h(
    "div",
    { class: "insights-report", "data-testid": "insights-report" },
    h(
      "div",
      { class: "panel filters" },
      h("label", {}, t.period, periodSelect),
      customDates,
      h("label", {}, t.channel, channelSelect),
      h("label", {}, t.language, languageSelect),
      exportReport,
      periodLine,
    ),
    reportError,
    reportBody,
  );

  // The knowledge gaps.
  const showCovered = h("input", { type: "checkbox", "data-testid": "gaps-covered" });
  const exportGaps = h(
    "button",
    { type: "button", class: "secondary", "data-testid": "export-gaps", disabled: true },
    t.exportGaps,
  );
  const gapsError = h("p", { class: "error", role: "alert" });
  const pendingLine = h("p", { class: "muted", "data-testid": "gaps-pending" });
  const gapsList = h("ol", { class: "gaps-list" });
  const gapsSection = h(
    "section",
    { class: "panel gaps", "data-testid": "insights-gaps" },
    h(
      "div",
      { class: "panel-head" },
      h("h2", {}, t.gaps),
      h("label", { class: "check" }, showCovered, t.showCovered),
      exportGaps,
    ),
    h("p", { class: "muted" }, t.gapsHelp),
    gapsError,
    gapsList,
    pendingLine,
  );

  const element = h("div", { class: "insights", "data-testid": "insights" }, reportSection, gapsSection);

  let report: ShownReport | null = null;
  let gaps: ListKnowledgeGapsResponse | null = null;
  // Only the latest request of each kind is drawn: an older one answering late is dropped.
  let reportRun = 0;
  let gapsRun = 0;

  function period(): Period | null {
    if (periodSelect.value === "custom") {
      const [from, to] = [fromInput.valueAsNumber, toInput.valueAsNumber];
      return Number.isNaN(from) || Number.isNaN(to) ? null : { from, to: to + DAY_MS };
    }
    const end = Math.floor(Date.now() / DAY_MS) * DAY_MS + DAY_MS;
    return { from: end - Number(periodSelect.value) * DAY_MS, to: end };
  }

  async function loadReport(): Promise<void> {
    const run = ++reportRun;
    const asked = period();
    exportReport.disabled = true;
    if (!asked) {
      showReportError(t.pickDates);
      return;
    }
    const request = {
      tenantId: tenant(),
      from: timestampFromMs(asked.from),
      to: timestampFromMs(asked.to),
      channel: Number(channelSelect.value) as Channel,
      language: Number(languageSelect.value) as Language,
    };
    // What was asked, so that a reader (or a test) can ask the same.
    Object.assign(reportSection.dataset, {
      state: "loading",
      from: new Date(asked.from).toISOString(),
      to: new Date(asked.to).toISOString(),
      channel: String(request.channel),
      language: String(request.language),
    });
    periodLine.textContent = t.days(day(asked.from), day(asked.to - DAY_MS));
    try {
      const response = await reports.getSupportReport(request);
      if (run !== reportRun) return;
      report = { response, period: asked };
      drawReport(response);
      reportError.textContent = "";
      reportBody.hidden = false;
      exportReport.disabled = false;
      reportSection.dataset.state = "ready";
    } catch (error) {
      if (run === reportRun) showReportError(describe(error));
    }
  }

  function showReportError(message: string): void {
    report = null;
    reportError.textContent = message;
    reportBody.hidden = true;
    reportSection.dataset.state = "error";
  }

  async function loadGaps(): Promise<void> {
    const run = ++gapsRun;
    exportGaps.disabled = true;
    gapsSection.dataset.state = "loading";
    try {
      const response = await reports.listKnowledgeGaps({
        tenantId: tenant(),
        language: Number(languageSelect.value) as Language,
        includeCovered: showCovered.checked,
      });
      if (run !== gapsRun) return;
      gaps = response;
      fill(
        gapsList,
        ...(response.gaps.length > 0 ? response.gaps.map(gapView) : [h("li", { class: "muted" }, t.noGaps)]),
      );
      pendingLine.textContent = response.pending > 0n ? t.pending(count.format(response.pending)) : "";
      gapsError.textContent = "";
      exportGaps.disabled = false;
      gapsSection.dataset.state = "ready";
    } catch (error) {
      if (run !== gapsRun) return;
      gaps = null;
      fill(gapsList);
      gapsError.textContent = describe(error);
      gapsSection.dataset.state = "error";
    }
  }

  function drawReport(r: GetSupportReportResponse): void {
    const vip = r.firstResponseVip ?? NO_STATS;
    const target = seconds(vip.targetSeconds);
    // Conversations whose outcome is known: the share resolved by the bot is over these.
    const settled = r.conversations - r.awaitingReturnWindow;
    const [conversations, resolved, ratings, within, vips] = [
      settled,
      r.resolvedByBot,
      r.ratings,
      vip.withinTarget,
      vip.count,
    ].map((n) => count.format(n));
    const handedOffShare = r.conversations > 0n ? Number(r.handedOff) / Number(r.conversations) : 0;
    fill(
      tiles,
      tile("conversations", t.conversations, [figure("conversations", r.conversations, count.format(r.conversations))], [
        t.conversationsNote,
      ]),
      tile(
        "resolved",
        t.resolvedByBot,
        [figure("resolved-share", r.resolvedByBotShare, percent.format(r.resolvedByBotShare))],
        [
          note("resolved", r.resolvedByBot, t.resolvedNote(resolved, conversations)),
          ...(r.awaitingReturnWindow > 0n
            ? [note("awaiting", r.awaitingReturnWindow, t.awaitingNote(count.format(r.awaitingReturnWindow)))]
            : []),
        ],
        {
          text: t.above(percent.format(r.resolvedByBotTarget)),
          met: settled > 0n ? r.resolvedByBotShare > r.resolvedByBotTarget : undefined,
        },
      ),
      tile(
        "satisfaction",
        t.satisfaction,
        [
          figure(
            "satisfaction-average",
            r.satisfactionAverage,
            r.ratings > 0n ? average.format(r.satisfactionAverage) : "–",
          ),
        ],
        [note("ratings", r.ratings, t.ratings(ratings))],
        {
          text: t.above(average.format(r.satisfactionTarget)),
          met: r.ratings > 0n ? r.satisfactionAverage > r.satisfactionTarget : undefined,
        },
      ),
      tile(
        "vip",
        t.vipFirstResponse,
        [
          figure("vip-p50", vip.p50Seconds, vip.count > 0n ? seconds(vip.p50Seconds) : "–"),
          h("span", { class: "slash" }, "/"),
          figure("vip-p90", vip.p90Seconds, vip.count > 0n ? seconds(vip.p90Seconds) : "–"),
        ],
        [
          t.p50p90,
          note("vip-within", vip.withinTarget, t.within(within, vips, target)),
        ],
        // The target holds when nine in ten VIP customers wait less.
        {
          text: t.below(target),
          met: vip.count > 0n ? vip.p90Seconds < vip.targetSeconds : undefined,
        },
      ),
      tile("handoffs", t.handoffs, [figure("handoffs", r.handedOff, count.format(r.handedOff))], [
        t.handoffsNote(percent.format(handedOffShare)),
      ]),
    );

    fill(
      dailyFigure,
      dailyChart(
        r.daily,
        {
          conversations: (d, n) => t.dayConversations(d, count.format(n)),
          resolved: (d, n) => t.dayResolved(d, count.format(n)),
        },
        t.daily,
      ),
    );
    const reasons = r.handoffsByReason.map(({ reason, tickets }) => {
      const label = t.reason[reason] ?? reason;
      return { key: reason, label, value: tickets, title: t.reasonTitle(label, count.format(tickets)) };
    });
    fill(
      reasonsFigure,
      reasons.length > 0 ? barChart(reasons, "reason-bar", t.reasons) : h("p", { class: "muted" }, t.none),
    );
    const scores = [1, 2, 3, 4, 5].map((score) => {
      const n = r.satisfactionCounts[score - 1] ?? 0n;
      const title = t.scoreTitle(score, count.format(n));
      return { key: String(score), label: t.score(score), value: n, title };
    });
    fill(satisfactionFigure, barChart(scores, "satisfaction-bar", t.satisfactionChart));

    const name = (names: Record<number, string>, value: number) => names[value] ?? t.all;
    fill(
      breakdownBody,
      ...(r.breakdown.length > 0
        ? r.breakdown.map((row) =>
            h(
              "tr",
              { "data-testid": "breakdown-row", "data-channel": row.channel, "data-language": row.language },
              h("td", {}, name(t.channels, row.channel)),
              h("td", {}, name(t.languages, row.language)),
              cell(row.conversations),
              cell(row.resolvedByBot),
              cell(row.handedOff),
            ),
          )
        : [h("tr", {}, h("td", { colspan: 5, class: "muted" }, t.none))]),
    );

    const stats = {
      first_response: r.firstResponse,
      first_response_vip: r.firstResponseVip,
      resolution: r.resolution,
      resolution_vip: r.resolutionVip,
    };
    fill(
      timesBody,
      ...TIME_ROWS.map((row) => {
        const s = stats[row] ?? NO_STATS;
        const time = (value: number) =>
          h("td", { class: "number", "data-value": value }, s.count > 0n ? seconds(value) : "–");
        return h(
          "tr",
          { "data-testid": `times-${row}` },
          h("th", {}, t.timeRows[row]),
          cell(s.count),
          time(s.p50Seconds),
          time(s.p90Seconds),
          // Only the VIP first response has a target.
          row === "first_response_vip"
            ? h(
                "td",
                { class: "number", "data-value": String(s.withinTarget) },
                `${count.format(s.withinTarget)} (< ${target})`,
              )
            : h("td", { class: "number muted" }, "–"),
        );
      }),
    );
  }

  exportReport.addEventListener("click", () => {
    if (!report) return;
    const { response: r, period: p } = report;
    const counts = (section: string, row: ConversationCounts): Cell[] => [
      section,
      row.day,
      enumName(Channel, row.channel),
      enumName(Language, row.language),
      row.conversations,
      row.resolvedByBot,
      row.handedOff,
      "",
      "",
    ];
    downloadCsv(`kefu-report-${tenant()}-${day(p.from)}-${day(p.to - DAY_MS)}.csv`, [
      [
        "section",
        "day",
        "channel",
        "language",
        "conversations",
        "resolved_by_bot",
        "handed_off",
        "reason",
        "tickets",
      ],
      ...r.daily.map((row) => counts("daily", row)),
      ...r.breakdown.map((row) => counts("breakdown", row)),
      ...r.handoffsByReason.map(
        ({ reason, tickets }): Cell[] => ["handoff_reason", "", "", "", "", "", "", reason, tickets],
      ),
    ]);
  });

  exportGaps.addEventListener("click", () => {
    if (!gaps) return;
    downloadCsv(`kefu-knowledge-gaps-${tenant()}.csv`, [
      [
        "gap_id",
        "language",
        "questions",
        "last_7_days",
        "previous_7_days",
        "suggested_title",
        "closest_document_id",
        "closest_document_title",
        "closeness",
        "first_asked",
        "last_asked",
        "covered_at",
        "covered_by_document_id",
        "examples",
      ],
      ...gaps.gaps.map((gap): Cell[] => [
        gap.gapId,
        enumName(Language, gap.language),
        gap.questions,
        gap.last7Days,
        gap.previous7Days,
        gap.suggestedTitle,
        gap.closestDocumentId,
        gap.closestDocumentTitle,
        // A float32 on the wire: four places are all it holds of meaning.
        Math.round(gap.closeness * 10_000) / 10_000,
        iso(gap.firstAsked),
        iso(gap.lastAsked),
        iso(gap.coveredAt),
        gap.coveredByDocumentId,
        // One cell, a question a line.
        gap.examples.join("\n"),
      ]),
    ]);
  });

  periodSelect.addEventListener("change", () => {
    const custom = periodSelect.value === "custom";
    customDates.hidden = !custom;
    // A custom period starts as the one shown before.
    if (custom && report && !fromInput.value && !toInput.value) {
      fromInput.valueAsNumber = report.period.from;
      toInput.valueAsNumber = report.period.to - DAY_MS;
    }
    void loadReport();
  });
  for (const input of [fromInput, toInput, channelSelect]) {
    input.addEventListener("change", () => void loadReport());
  }
  languageSelect.addEventListener("change", () => void Promise.all([loadReport(), loadGaps()]));
  showCovered.addEventListener("change", () => void loadGaps());

  /** Asks for the report and the gaps again, with the filters as they are. */
  async function load(): Promise<void> {
    await Promise.all([loadReport(), loadGaps()]);
  }

  return { element, load };
}

function gapView(gap: KnowledgeGap): HTMLLIElement {
  const [last, previous] = [gap.last7Days, gap.previous7Days];
  const trend = last > previous ? "up" : last < previous ? "down" : "flat";
  const covered = gap.coveredAt !== undefined;
  return h(
    "li",
    { class: "gap", "data-testid": "gap", "data-gap-id": gap.gapId, "data-covered": String(covered) },
    h(
      "div",
      { class: "gap-head" },
      h("strong", { class: "gap-title", "data-testid": "gap-title" }, gap.suggestedTitle),
      h(
        "span",
        { class: "pill", "data-testid": "gap-questions", "data-value": String(gap.questions) },
        t.questions(count.format(gap.questions)),
      ),
      h(
        "span",
        {
          class: `pill trend ${trend}`,
          "data-testid": "gap-trend",
          "data-last": String(last),
          "data-previous": String(previous),
        },
        h("span", { role: "img", "aria-label": t.trendName[trend] }, TREND_ARROWS[trend]),
        " ",
        t.trend(count.format(last), count.format(previous)),
      ),
      h(
        "span",
        { class: covered ? "pill covered" : "pill", "data-testid": "gap-state" },
        covered ? t.covered(gap.coveredByDocumentId, date(gap.coveredAt)) : t.open,
      ),
    ),
    h(
      "ul",
      { class: "gap-examples" },
      ...gap.examples.slice(0, 3).map((example) => h("li", { "data-testid": "gap-example" }, example)),
    ),
    h(
      "p",
      { class: "muted", "data-testid": "gap-closest", "data-value": gap.closeness },
      gap.closestDocumentId
        ? t.closest(gap.closestDocumentTitle || gap.closestDocumentId, percent.format(gap.closeness))
        : t.noClosest,
      " · ",
      t.asked(date(gap.firstAsked), date(gap.lastAsked)),
    ),
  );
}

/**
 * A tile: a label, its figures, notes, and its target, marked met or missed in words
 * and colour (neither without data).
 */
function tile(
  name: string,
  label: string,
  figures: Node[],
  notes: (Node | string)[],
  target?: { text: string; met: boolean | undefined },
): HTMLElement {
  const state = target?.met === undefined ? "none" : target.met ? "met" : "missed";
  return h(
    "div",
    { class: "tile", "data-testid": `tile-${name}`, "data-target": state },
    h("span", { class: "tile-label" }, label),
    h("div", { class: "tile-figures" }, ...figures),
    h("p", { class: "muted" }, ...notes.flatMap((part, i) => (i > 0 ? [" · ", part] : [part]))),
    target &&
      h(
        "span",
        { class: `target ${state}` },
        state === "met" ? t.met(target.text) : state === "missed" ? t.missed(target.text) : target.text,
      ),
  );
}

/** A tile's number as shown, with its exact value in data-value. */
function figure(name: string, value: number | bigint, text: string): HTMLElement {
  return h("strong", { "data-testid": `figure-${name}`, "data-value": String(value) }, text);
}

/** A number in a tile's note, the same way. */
function note(name: string, value: bigint, text: string): HTMLElement {
  return h("span", { "data-testid": `figure-${name}`, "data-value": String(value) }, text);
}

function cell(value: bigint): HTMLTableCellElement {
  return h("td", { class: "number", "data-value": String(value) }, count.format(value));
}
