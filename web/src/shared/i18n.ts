// UI text in English and Chinese. Only the interface is translated: what customers,
// the bot and agents write is shown as written.
export type Lang = "en" | "zh";

/** `?lang=zh` or `?lang=en` wins; otherwise the browser's preferred language. */
export function pickLang(): Lang {
  const asked = new URLSearchParams(location.search).get("lang") ?? navigator.language;
  return asked.toLowerCase().startsWith("zh") ? "zh" : "en";
}

/** The page's texts in its language; also tells the browser which language the page is in. */
export function localize<T>(texts: Record<Lang, T>): { lang: Lang; t: T } {
  const lang = pickLang();
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  return { lang, t: texts[lang] };
}

/** Time of day in the page's language. */
export function clock(lang: Lang, at: Date): string {
  return at.toLocaleTimeString(lang === "zh" ? "zh-CN" : "en", { hour: "2-digit", minute: "2-digit" });
}
