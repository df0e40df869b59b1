//! `kefu_nlp::text`: normalisation is a normal form (idempotent, trimmed, single
//! spaces, no controls) and segmentation keeps every letter and digit.
use kefu_nlp::text::{detect_language, normalize, words};

pub fn check(text: &str) {
    let norm = normalize(text);
    assert_eq!(normalize(&norm), norm, "normalize is not idempotent");
    assert_eq!(norm.trim(), norm, "normalized text is not trimmed");
    assert!(!norm.contains("  "), "normalized text has a double space");
    assert!(
        norm.chars()
            .all(|c| c == ' ' || !(c.is_whitespace() || c.is_control())),
        "normalized text keeps whitespace other than a space, or a control character"
    );

    let segmented = words(text);
    for word in &segmented {
        assert!(!word.is_empty(), "an empty word");
        assert_eq!(&normalize(word), word, "a word that is not normalized");
        assert!(!word.contains(' '), "a word with a space: {word:?}");
    }
    assert_eq!(
        words(&norm),
        segmented,
        "words differ on the normalized text"
    );
    // Only punctuation and symbols are dropped.
    let joined = segmented.concat();
    assert!(
        crate::keeps_content(&norm, &joined) && crate::keeps_content(&joined, &norm),
        "segmentation lost or invented letters: {segmented:?}"
    );
    let _ = detect_language(text);
}
