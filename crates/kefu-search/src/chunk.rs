//! Markdown-aware chunking.
//!
//! A document is split into sections at its headings (`##` and deeper; the first `#`
//! heading is the title), each section into paragraphs, and paragraphs are packed
//! into chunks of at most [`MAX_WORDS`] words (a CJK character counts as half a
//! word). Paragraphs longer than that are split at sentence boundaries. A chunk that
//! continues a section starts with the last sentence of the chunk before it, so a
//! fact spanning the cut is found from either side. Inline Markdown (emphasis, code
//! ticks, links, images) is reduced to its text, table rows become `Header: value`
//! lines, so chunk text reads as plain prose and can be quoted in answers. Plain text
//! has no headings and is chunked by paragraphs and sentences the same way.

use kefu_nlp::text::is_cjk;

use crate::sentences::{joins_without_space, split_sentences, word_count};
use crate::{Chunk, Document};

/// Upper bound of a chunk's size, overlap sentence excluded.
pub const MAX_WORDS: usize = 250;
/// A trailing piece of a section smaller than this is merged into the chunk before it
/// when the two together stay within [`MAX_WORDS`] plus [`MAX_OVERLAP_WORDS`].
pub const MIN_WORDS: usize = 60;
/// The overlap carried into the next chunk of a section: the previous chunk's last
/// sentence, if it is not longer than this.
pub const MAX_OVERLAP_WORDS: usize = 40;

/// One section: the heading path above it and its paragraphs.
struct Section {
    heading: String,
    paragraphs: Vec<String>,
}

/// Splits a document into chunks with ids `doc_id#0`, `doc_id#1`, ...
pub fn chunk_document(doc: &Document) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for section in sections(&doc.text) {
        for text in pack_section(&section.paragraphs) {
            chunks.push(Chunk {
                id: format!("{}#{}", doc.id, chunks.len()),
                doc_id: doc.id.clone(),
                title: doc.title.clone(),
                heading: section.heading.clone(),
                text,
                vector: None,
            });
        }
    }
    chunks
}

/// Parses Markdown (or plain text) into sections of cleaned paragraphs.
fn sections(text: &str) -> Vec<Section> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut current = Section {
        heading: String::new(),
        paragraphs: Vec::new(),
    };
    let mut para = Paragraph::default();
    let mut fence: Option<String> = None;
    let mut seen_content = false;

    for raw in text.lines() {
        let line = raw.trim_end();
        if let Some(marker) = &fence {
            if line.trim_start().starts_with(marker.as_str()) {
                fence = None;
                para.flush(&mut current.paragraphs);
            } else {
                para.push_verbatim(line);
            }
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            para.flush(&mut current.paragraphs);
            fence = Some(trimmed[..3].to_string());
            seen_content = true;
            continue;
        }
        if let Some((level, heading)) = parse_heading(trimmed) {
            para.flush(&mut current.paragraphs);
            let is_title = level == 1 && !seen_content;
            seen_content = true;
            if is_title {
                continue;
            }
            if !current.paragraphs.is_empty() {
                out.push(std::mem::replace(
                    &mut current,
                    Section {
                        heading: String::new(),
                        paragraphs: Vec::new(),
                    },
                ));
            }
            stack.retain(|(l, _)| *l < level);
            stack.push((level, clean_inline(&heading)));
            current.heading = stack
                .iter()
                .map(|(_, h)| h.as_str())
                .collect::<Vec<_>>()
                .join(" > ");
            continue;
        }
        if trimmed.is_empty() || is_rule(trimmed) {
            para.flush(&mut current.paragraphs);
            continue;
        }
        seen_content = true;
        para.push_line(trimmed);
    }
    para.flush(&mut current.paragraphs);
    if !current.paragraphs.is_empty() {
        out.push(current);
    }
    out
}

fn parse_heading(line: &str) -> Option<(usize, String)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    if level == 0 || level > 6 {
        return None;
    }
    let rest = &line[level..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    let text = rest.trim().trim_end_matches('#').trim();
    Some((level, text.to_string()))
}

fn is_rule(line: &str) -> bool {
    let c = line.chars().next().unwrap_or(' ');
    matches!(c, '-' | '*' | '_')
        && line.chars().filter(|&x| x == c).count() >= 3
        && line.chars().all(|x| x == c || x == ' ')
}

/// Accumulates the lines of one paragraph: prose lines are joined, list items and
/// table rows each keep a line of their own.
#[derive(Default)]
struct Paragraph {
    lines: Vec<String>,
    table: Vec<Vec<String>>,
}

impl Paragraph {
    fn push_line(&mut self, line: &str) {
        if line.starts_with('|') {
            self.table.push(table_cells(line));
            return;
        }
        self.flush_table();
        let line = line
            .strip_prefix("> ")
            .or_else(|| line.strip_prefix('>'))
            .unwrap_or(line)
            .trim();
        if let Some(item) = list_item(line) {
            self.lines.push(clean_inline(&item));
        } else if let Some(last) = self.lines.last_mut() {
            let cleaned = clean_inline(line);
            join_prose(last, &cleaned);
        } else {
            self.lines.push(clean_inline(line));
        }
    }

    fn push_verbatim(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }

    fn flush_table(&mut self) {
        if self.table.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.table);
        let separator = |r: &Vec<String>| {
            !r.is_empty()
                && r.iter()
                    .all(|c| !c.is_empty() && c.chars().all(|x| matches!(x, '-' | ':' | ' ')))
        };
        let (header, body): (Option<&Vec<String>>, &[Vec<String>]) =
            if rows.len() >= 2 && separator(&rows[1]) {
                (Some(&rows[0]), &rows[2..])
            } else {
                (None, &rows[..])
            };
        for row in body.iter().filter(|r| !separator(r)) {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.is_empty())
                .map(|(i, c)| {
                    let value = clean_inline(c);
                    match header.and_then(|h| h.get(i)).map(|h| clean_inline(h)) {
                        Some(h) if !h.is_empty() => format!("{h}: {value}"),
                        _ => value,
                    }
                })
                .collect();
            if !cells.is_empty() {
                self.lines.push(cells.join("; "));
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<String>) {
        self.flush_table();
        let lines = std::mem::take(&mut self.lines);
        let text = lines.join("\n");
        let text = text.trim();
        if !text.is_empty() {
            out.push(text.to_string());
        }
    }
}

fn table_cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

/// A list item's text with its bullet removed; ordered items keep their number.
fn list_item(line: &str) -> Option<String> {
    for bullet in ["- ", "* ", "+ ", "• "] {
        if let Some(rest) = line.strip_prefix(bullet) {
            let rest = rest.trim_start();
            let rest = rest
                .strip_prefix("[ ] ")
                .or_else(|| rest.strip_prefix("[x] "))
                .unwrap_or(rest);
            return Some(rest.to_string());
        }
    }
    let digits = line.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 && digits < 4 {
        let rest = &line[digits..];
        if rest.starts_with(". ") || rest.starts_with(") ") {
            return Some(format!("{}. {}", &line[..digits], rest[2..].trim_start()));
        }
    }
    None
}

/// Joins a continuation line to prose: with a space, except between CJK characters.
fn join_prose(last: &mut String, next: &str) {
    if !last.is_empty() && !joins_without_space(last, next) {
        last.push(' ');
    }
    last.push_str(next);
}

/// Reduces inline Markdown to text: `![alt](url)` → alt, `[text](url)` → text,
/// `<url>` → url, and drops `**`, `__`, backticks and emphasis asterisks.
pub(crate) fn clean_inline(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // links and images
        if c == '[' || (c == '!' && chars.get(i + 1) == Some(&'[')) {
            let open = if c == '!' { i + 1 } else { i };
            if let Some((text_end, url_end)) = find_link(&chars, open) {
                let inner: String = chars[open + 1..text_end].iter().collect();
                out.push_str(&clean_inline(&inner));
                i = url_end + 1;
                continue;
            }
        }
        if c == '<' {
            if let Some(end) = chars[i + 1..].iter().position(|&x| x == '>') {
                let inner: String = chars[i + 1..i + 1 + end].iter().collect();
                if inner.starts_with("http") || inner.contains('@') {
                    out.push_str(&inner);
                    i += end + 2;
                    continue;
                }
                let tag = inner.trim_start_matches('/').to_ascii_lowercase();
                if tag.starts_with("br")
                    || tag == "b"
                    || tag == "i"
                    || tag == "em"
                    || tag == "strong"
                {
                    if tag.starts_with("br") {
                        out.push(' ');
                    }
                    i += end + 2;
                    continue;
                }
            }
        }
        if c == '`' {
            i += 1;
            continue;
        }
        if (c == '*' || c == '_') && chars.get(i + 1) == Some(&c) {
            i += 2;
            continue;
        }
        if c == '*' {
            let prev_space = i == 0 || chars[i - 1].is_whitespace();
            let next_space = chars.get(i + 1).is_none_or(|n| n.is_whitespace());
            if !(prev_space && next_space) {
                i += 1;
                continue;
            }
        }
        if c == '\\' && chars.get(i + 1).is_some_and(|n| n.is_ascii_punctuation()) {
            out.push(chars[i + 1]);
            i += 2;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// For `[` at `open`, finds the matching `]` immediately followed by `(...)`.
fn find_link(chars: &[char], open: usize) -> Option<(usize, usize)> {
    let close = open + 1 + chars[open + 1..].iter().position(|&c| c == ']')?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let end = close + 2 + chars[close + 2..].iter().position(|&c| c == ')')?;
    Some((close, end))
}

/// Packs a section's paragraphs into chunk texts.
fn pack_section(paragraphs: &[String]) -> Vec<String> {
    // units no larger than MAX_WORDS
    let mut units: Vec<String> = Vec::new();
    for p in paragraphs {
        if word_count(p) <= MAX_WORDS {
            units.push(p.clone());
        } else {
            units.extend(split_long(p));
        }
    }
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut size = 0usize;
    for unit in units {
        let w = word_count(&unit);
        match chunks.last_mut() {
            Some(cur) if size + w <= MAX_WORDS => {
                cur.push(unit);
                size += w;
            }
            _ => {
                chunks.push(vec![unit]);
                size = w;
            }
        }
    }
    // fold a small tail into the chunk before it when that stays near the bound
    if chunks.len() >= 2 {
        let tail = word_count(&chunks[chunks.len() - 1].join("\n\n"));
        let before = word_count(&chunks[chunks.len() - 2].join("\n\n"));
        if tail < MIN_WORDS && tail + before <= MAX_WORDS + MAX_OVERLAP_WORDS {
            let last = chunks.pop().unwrap_or_default();
            if let Some(prev) = chunks.last_mut() {
                prev.extend(last);
            }
        }
    }
    let mut out: Vec<String> = Vec::with_capacity(chunks.len());
    for (i, units) in chunks.iter().enumerate() {
        let mut text = String::new();
        if i > 0 {
            if let Some(overlap) = chunks[i - 1]
                .last()
                .and_then(|u| split_sentences(u).last().copied())
            {
                if word_count(overlap) <= MAX_OVERLAP_WORDS {
                    text.push_str(overlap);
                    text.push_str("\n\n");
                }
            }
        }
        text.push_str(&units.join("\n\n"));
        out.push(text);
    }
    out
}

/// Splits an over-long paragraph at sentence boundaries into pieces of at most
/// MAX_WORDS; a single sentence longer than that is cut by words / characters.
fn split_long(p: &str) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut size = 0usize;
    for sentence in split_sentences(p) {
        for part in cut_sentence(sentence) {
            let w = word_count(&part);
            if size + w > MAX_WORDS && !cur.is_empty() {
                pieces.push(std::mem::take(&mut cur));
                size = 0;
            }
            if !cur.is_empty() && !joins_without_space(&cur, &part) {
                cur.push(' ');
            }
            cur.push_str(&part);
            size += w;
        }
    }
    if !cur.is_empty() {
        pieces.push(cur);
    }
    pieces
}

/// Cuts a sentence longer than MAX_WORDS into pieces that fit.
fn cut_sentence(sentence: &str) -> Vec<String> {
    if word_count(sentence) <= MAX_WORDS {
        return vec![sentence.to_string()];
    }
    let mut pieces = Vec::new();
    let mut cur = String::new();
    for c in sentence.chars() {
        cur.push(c);
        if (c.is_whitespace() || is_cjk(c)) && word_count(&cur) >= MAX_WORDS {
            pieces.push(cur.trim().to_string());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        pieces.push(cur.trim().to_string());
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_sections_keep_headings_and_clean_text() {
        let text = "# Plans and pricing\n\nWe offer **three** plans. See [the pricing page](https://example.com/p).\n\n\
## Pro plan\n\nThe Pro plan costs $29 per month.\n\n### Limits\n\n- Up to 10 seats\n- 100 GB storage\n\n\
## Comparison\n\n| Plan | Price |\n|---|---|\n| Basic | $9 |\n| Pro | $29 |\n";
        let chunks = chunk_document(&Document::new("pricing", "Plans and pricing", text));
        let got: Vec<(&str, &str)> = chunks
            .iter()
            .map(|c| (c.heading.as_str(), c.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("", "We offer three plans. See the pricing page."),
                ("Pro plan", "The Pro plan costs $29 per month."),
                ("Pro plan > Limits", "Up to 10 seats\n100 GB storage"),
                (
                    "Comparison",
                    "Plan: Basic; Price: $9\nPlan: Pro; Price: $29"
                ),
            ]
        );
        let ids: Vec<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["pricing#0", "pricing#1", "pricing#2", "pricing#3"]
        );
        assert!(chunks.iter().all(|c| c.doc_id == "pricing"
            && c.title == "Plans and pricing"
            && c.vector.is_none()));
    }

    #[test]
    fn long_sections_are_bounded_and_overlap() {
        let sentence = "Refunds are issued to the original payment method within five business days of approval.";
        let body: Vec<String> = (0..8)
            .map(|i| format!("Paragraph {i}. {}", [sentence; 6].join(" ")))
            .collect();
        let text = format!("## Refund policy\n\n{}", body.join("\n\n"));
        let chunks = chunk_document(&Document::new("refunds", "Refunds", &text));
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            let w = word_count(&c.text);
            assert!(
                w <= MAX_WORDS + MAX_OVERLAP_WORDS,
                "chunk {i} has {w} words"
            );
            assert!(w >= MIN_WORDS, "chunk {i} has {w} words");
            assert_eq!(c.heading, "Refund policy");
        }
        // every chunk after the first begins with the last sentence of the previous one
        for pair in chunks.windows(2) {
            let last = split_sentences(&pair[0].text)
                .last()
                .copied()
                .unwrap_or_default()
                .to_string();
            assert!(
                pair[1].text.starts_with(&last),
                "no overlap: {:?}",
                &pair[1].text[..60]
            );
        }
        // nothing is lost
        for i in 0..8 {
            assert!(chunks
                .iter()
                .any(|c| c.text.contains(&format!("Paragraph {i}."))));
        }
    }

    #[test]
    fn chinese_text_counts_characters_as_half_words() {
        let sentence = "如果您需要退款，请在订单页面点击申请退款按钮，我们会在三个工作日内处理。";
        let text = format!("# 退款说明\n\n## 如何申请退款\n\n{}", sentence.repeat(40));
        let chunks = chunk_document(&Document::new("refund.zh", "退款说明", &text));
        assert!(chunks.len() >= 2);
        for c in &chunks {
            assert_eq!(c.heading, "如何申请退款");
            assert!(word_count(&c.text) <= MAX_WORDS + MAX_OVERLAP_WORDS);
            assert!(c.text.chars().count() <= 2 * (MAX_WORDS + MAX_OVERLAP_WORDS));
            assert!(
                !c.text.contains(' '),
                "no spaces introduced into Chinese text"
            );
            // cuts fall on sentence ends
            assert!(c.text.ends_with('。'));
        }
    }

    #[test]
    fn plain_text_by_paragraphs() {
        let text = "Our office is open Monday to Friday.\nWe close on public holidays.\n\nCall us at 555-0100 for urgent issues.";
        let chunks = chunk_document(&Document::new("hours", "Opening hours", text));
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            chunks[0].text,
            "Our office is open Monday to Friday. We close on public holidays.\n\nCall us at 555-0100 for urgent issues."
        );
        assert_eq!(chunks[0].heading, "");
        assert!(
            chunk_document(&Document::new("empty", "Empty", "  \n\n# Only a title\n")).is_empty()
        );
    }

    #[test]
    fn odd_markdown_never_panics_and_loses_no_words() {
        let odd = [
            "[",
            "![",
            "[a](",
            "<",
            "<br",
            "```",
            "```\nunclosed",
            "|",
            "| a |",
            "|---|",
            "#",
            "##",
            "####### seven",
            "1.",
            "1. ",
            "- ",
            "**",
            "*",
            "\\",
            "> ",
            "———",
            "---",
            "* * *",
            "！？。",
            "¥",
            "é́",
            "👍🏽 ok",
            "a\u{0}b",
            "\r\n\r\n",
            "# T\n## H\n### I\n",
        ];
        for text in odd {
            for c in chunk_document(&Document::new("odd", "Odd", text)) {
                assert!(!c.text.trim().is_empty(), "{text:?} gave an empty chunk");
            }
        }
        let text = "Hello [link](http://x) and <b>bold</b> and `code` end.";
        let chunks = chunk_document(&Document::new("x", "X", text));
        assert_eq!(chunks[0].text, "Hello link and bold and code end.");
    }

    #[test]
    fn code_fences_are_kept_verbatim() {
        let text = "## API\n\nCall it like this:\n\n```\n## not a heading\ncurl -X POST\n```\n";
        let chunks = chunk_document(&Document::new("api", "API", text));
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].text.contains("## not a heading\ncurl -X POST"));
    }
}
