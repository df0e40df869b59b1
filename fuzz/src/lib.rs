//! Properties of kefu's handling of untrusted text, checked by the libFuzzer targets in
//! `fuzz_targets/`: tenant files, Markdown chunking, normalisation and word
//! segmentation, the lexical search built on them, the gateway's authentication, and the
//! channel service's webhook and WeChat parsers.
//! Every `check` panics when a property fails; libFuzzer reports that as a crash and
//! keeps the input in `fuzz/artifacts/<target>/`.

pub mod auth;
pub mod channels;
pub mod chunking;
pub mod search;
pub mod tenant;
pub mod text;

/// Whether the letters and digits of `part` occur in `whole` in the same order: text
/// may be trimmed, re-spaced or split, but nothing is lost or reordered.
pub fn keeps_content(part: &str, whole: &str) -> bool {
    let mut rest = whole.chars().filter(|c| c.is_alphanumeric());
    part.chars()
        .filter(|c| c.is_alphanumeric())
        .all(|c| rest.any(|d| d == c))
}
