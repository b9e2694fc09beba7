//! Safety: the checks every `send` passes before it is published.
//!
//! Owns rate limits (`limits`), the text checks, the crisis classifier and
//! policy filters (`classifier`, with its private `normalize` and `policy`
//! scanners; rules in `config/safety/`), and the choice of support
//! resources (`support`) and the per-identity risk memory (`context`). It
//! is pure: no I/O, no clock, no room state, no sockets; `hub` calls it and
//! acts on the answer.

pub mod classifier;
pub mod context;
pub mod limits;
pub mod model;
mod normalize;
mod policy;
pub mod support;

pub use limits::{ConnectionLimits, Limited, Limiters};

/// What happens to a message that passed the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Publish it to the room.
    Deliver,
    /// Keep it for staff review; the sender gets `ok` with `held`.
    Hold,
    /// Refuse it, with a sentence for the sender saying why.
    Block(&'static str),
}

/// Why a text cannot be sent at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("message is empty")]
    Empty,
    #[error("message has {chars} characters; the limit is {max}")]
    TooLarge { chars: usize, max: usize },
}

/// Normalises a message (NFC, control characters but `\n` stripped) and
/// checks its length in characters against `max_chars`.
pub fn prepare_text(raw: &str, max_chars: usize) -> Result<String, TextError> {
    // Refuse absurdly long input before normalising it. A character is at
    // most 4 bytes and NFC grows text only slightly, so 16 bytes per allowed
    // character can never cut a message that would have fitted.
    if raw.len() > max_chars.saturating_mul(16) {
        return Err(TextError::TooLarge {
            chars: raw.chars().count(),
            max: max_chars,
        });
    }
    let text = crate::protocol::normalise_text(raw);
    if text.trim().is_empty() {
        return Err(TextError::Empty);
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(TextError::TooLarge {
            chars,
            max: max_chars,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_whitespace_are_empty() {
        assert_eq!(prepare_text("", 10), Err(TextError::Empty));
        assert_eq!(prepare_text(" \n\t ", 10), Err(TextError::Empty));
        assert_eq!(prepare_text("\u{7}\u{1b}", 10), Err(TextError::Empty));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(prepare_text("ééééé", 5).as_deref(), Ok("ééééé"));
        assert_eq!(
            prepare_text("ééééé!", 5),
            Err(TextError::TooLarge { chars: 6, max: 5 })
        );
    }

    #[test]
    fn huge_input_is_refused_early() {
        let big = "a".repeat(10_000);
        assert!(matches!(
            prepare_text(&big, 100),
            Err(TextError::TooLarge { .. })
        ));
    }
}
