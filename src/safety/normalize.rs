//! Text folding for the crisis classifier: turns a message into the token
//! stream the lexicon is matched against.
//!
//! Owns only the folding rules (compatibility decomposition, case, accents,
//! homoglyphs, leetspeak, spaced and dotted letters, masked letters, repeated
//! letters, clause boundaries). It knows nothing about families, levels or
//! rooms, and it must not touch the message that is stored or published: the
//! folded text exists only for matching. The lexicon is folded by the very
//! same function, so a rule written as `kill myself` matches `K1LL mys3lf`,
//! `k i l l myself` and `kiiiill myself` without listing them.
//!
//! The folded text is tokens separated by single spaces. Sentence ends become
//! a `|` token and clause breaks (comma, colon, dash, brackets) a `,` token,
//! so no lexicon phrase can match across them and negation scope can be
//! judged per clause. Every token keeps the byte range of its source in the
//! original message.

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// What a folded token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokKind {
    /// Letters, possibly with digits.
    Word,
    /// Digits, possibly with `.`, `,` or `:` between them (`7:30`, `0.5`).
    Number,
    /// One pictograph (skin tones, joiners and variation selectors dropped).
    Emoji,
    /// `|`: the end of a sentence (`.`, `!`, `?`, `;`, newline).
    Strong,
    /// `,`: a clause break inside a sentence (`,`, `:`, dashes, brackets).
    Weak,
}

/// One token of the folded text.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tok {
    /// Byte range in the folded text.
    pub(crate) start: u32,
    pub(crate) end: u32,
    /// Where the source of this token ends in the original message (the
    /// policy scanners read what follows, e.g. a handle after "snap").
    pub(crate) src_end: u32,
    pub(crate) kind: TokKind,
    /// Sentence and clause counters; a clause never spans two sentences.
    pub(crate) sentence: u32,
    pub(crate) clause: u32,
    /// The leading integer of a token that starts with a digit (`40`, `50mg`).
    pub(crate) value: Option<u32>,
}

/// The folded form of one text. Reused between calls to avoid allocating.
#[derive(Default, Debug)]
pub(crate) struct Folded {
    pub(crate) text: String,
    pub(crate) toks: Vec<Tok>,
}

impl Folded {
    pub(crate) fn tok_text(&self, i: usize) -> &str {
        match self.toks.get(i) {
            Some(t) => self
                .text
                .get(t.start as usize..t.end as usize)
                .unwrap_or(""),
            None => "",
        }
    }
}

/// Resolves masked words (`s*icidio`, `k*ll`) against the words the lexicon
/// uses. Built once from the lexicon, unfolded for repeats, by length.
#[derive(Default, Debug)]
pub(crate) struct MaskIndex {
    by_len: Vec<Vec<Vec<char>>>,
}

impl MaskIndex {
    pub(crate) fn insert(&mut self, word: &str) {
        let chars: Vec<char> = word.chars().collect();
        // Short words are too ambiguous to guess from a mask.
        if chars.len() < 4 || !chars.iter().all(|c| c.is_alphabetic()) {
            return;
        }
        if self.by_len.len() <= chars.len() {
            self.by_len.resize_with(chars.len() + 1, Vec::new);
        }
        let bucket = &mut self.by_len[chars.len()];
        if !bucket.contains(&chars) {
            bucket.push(chars);
        }
    }

    pub(crate) fn finish(&mut self) {
        for bucket in &mut self.by_len {
            bucket.sort();
        }
    }

    /// The first lexicon word that fits every unmasked letter, if at least
    /// half of the letters are visible.
    fn resolve(&self, token: &[char]) -> Option<&[char]> {
        let masked = token.iter().filter(|c| is_mask(**c)).count();
        if masked == 0 || masked * 2 > token.len() {
            return None;
        }
        let bucket = self.by_len.get(token.len())?;
        bucket
            .iter()
            .find(|w| w.iter().zip(token).all(|(a, b)| is_mask(*b) || *a == *b))
            .map(|w| w.as_slice())
    }
}

/// Options for one fold.
#[derive(Clone, Copy)]
pub(crate) struct FoldOptions<'a> {
    /// Collapse runs of one repeated letter (`sooo` → `so`, `kill` → `kil`).
    /// Off only while collecting the words for the mask index.
    pub(crate) collapse: bool,
    pub(crate) mask: Option<&'a MaskIndex>,
}

/// Reusable buffers for `fold_into`.
#[derive(Default, Debug)]
pub(crate) struct FoldScratch {
    chars: Vec<(char, u32)>,
    raw: Vec<RawTok>,
    word: Vec<char>,
}

#[derive(Clone, Copy, Debug)]
struct RawTok {
    /// Index range into `FoldScratch::chars`.
    start: usize,
    end: usize,
    emoji: bool,
    /// Separators before this token: how many, the single one if exactly
    /// one, and the strongest boundary among them.
    gap_len: u32,
    gap_char: char,
    gap_boundary: Boundary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Boundary {
    None,
    Weak,
    Strong,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Alnum,
    /// `@` and `$`: letters in leetspeak, kept inside tokens.
    Leet,
    /// `!` and `|`: letters only between two letters (`su!cide`).
    Bang,
    Apostrophe,
    Mask,
    /// `.`, `,`, `:`: part of a number between two digits.
    NumPunct(Boundary),
    Emoji,
    Ignore,
    /// Zero-width joiner: it and the character after it are dropped
    /// (`🤦‍♀️` is one facepalm).
    Joiner,
    Sep(Boundary),
}

fn is_mask(c: char) -> bool {
    c == '*'
}

fn is_emoji(c: char) -> bool {
    let u = c as u32;
    (0x1F000..=0x1FAFF).contains(&u)
        || (0x2600..=0x27BF).contains(&u)
        || (0x2B00..=0x2BFF).contains(&u)
        || u == 0x2764
}

fn classify(c: char) -> Class {
    match c {
        '\u{200D}' => Class::Joiner,
        '\u{FE0E}' | '\u{FE0F}' | '\u{1F3FB}'..='\u{1F3FF}' | '\u{20E3}' => Class::Ignore,
        '\u{E0020}'..='\u{E007F}' => Class::Ignore,
        c if c.is_alphanumeric() => Class::Alnum,
        '@' | '$' => Class::Leet,
        '!' => Class::Bang,
        '|' => Class::Bang,
        '\'' | '\u{2019}' | '\u{2018}' | '`' | '\u{00B4}' | '\u{02BC}' => Class::Apostrophe,
        '*' => Class::Mask,
        '.' => Class::NumPunct(Boundary::Strong),
        ',' | ':' => Class::NumPunct(Boundary::Weak),
        '?' | ';' | '\n' | '\r' | '\u{2026}' | '\u{3002}' => Class::Sep(Boundary::Strong),
        '\u{2014}' | '\u{2013}' | '(' | ')' | '[' | ']' | '"' | '\u{201C}' | '\u{201D}'
        | '\u{00AB}' | '\u{00BB}' => Class::Sep(Boundary::Weak),
        c if is_emoji(c) => Class::Emoji,
        _ => Class::Sep(Boundary::None),
    }
}

/// Lookalike letters from other scripts, folded to Latin for matching.
fn homoglyph(c: char) -> char {
    match c {
        'а' | 'α' => 'a',
        'в' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' => 'e',
        'ɡ' => 'g',
        'һ' | 'н' => 'h',
        'і' | 'ι' | 'ı' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' => 'u',
        'ν' => 'v',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        _ => c,
    }
}

fn leet(c: char) -> char {
    match c {
        '0' => 'o',
        '1' | '!' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        '8' => 'b',
        '9' => 'g',
        '|' => 'l',
        _ => c,
    }
}

/// Pushes the folded characters of `text` (decomposed, marks dropped,
/// lowercased, homoglyphs folded) with the byte offset of their source.
fn push_chars(text: &str, out: &mut Vec<(char, u32)>) {
    for (at, c) in text.char_indices() {
        let at = u32::try_from(at).unwrap_or(u32::MAX);
        if c.is_ascii() {
            out.push((c.to_ascii_lowercase(), at));
            continue;
        }
        if c == 'ß' {
            out.push(('s', at));
            out.push(('s', at));
            continue;
        }
        decompose_compatible(c, |d| {
            if is_combining_mark(d) {
                return;
            }
            for l in d.to_lowercase() {
                out.push((homoglyph(l), at));
            }
        });
    }
}

/// Folds `text` into `out`. See the module documentation for the rules.
pub(crate) fn fold_into(
    text: &str,
    opts: FoldOptions<'_>,
    scratch: &mut FoldScratch,
    out: &mut Folded,
) {
    out.text.clear();
    out.toks.clear();
    scratch.chars.clear();
    scratch.raw.clear();
    push_chars(text, &mut scratch.chars);
    tokenize(&scratch.chars, &mut scratch.raw);
    emit(text.len(), opts, scratch, out);
}

/// Splits the folded characters into raw tokens, remembering the
/// separators between them.
struct Tokenizer<'a> {
    raw: &'a mut Vec<RawTok>,
    cur_start: Option<usize>,
    gap_len: u32,
    gap_char: char,
    gap_boundary: Boundary,
}

impl Tokenizer<'_> {
    fn push(&mut self, start: usize, end: usize, emoji: bool) {
        self.raw.push(RawTok {
            start,
            end,
            emoji,
            gap_len: self.gap_len,
            gap_char: self.gap_char,
            gap_boundary: self.gap_boundary,
        });
        self.gap_len = 0;
        self.gap_char = ' ';
        self.gap_boundary = Boundary::None;
    }

    fn flush(&mut self, end: usize) {
        if let Some(s) = self.cur_start.take() {
            self.push(s, end, false);
        }
    }

    fn sep(&mut self, at: usize, c: char, b: Boundary) {
        self.flush(at);
        self.gap_len += 1;
        self.gap_char = c;
        self.gap_boundary = self.gap_boundary.max(b);
    }
}

fn tokenize(chars: &[(char, u32)], raw: &mut Vec<RawTok>) {
    let n = chars.len();
    let class_at = |i: usize| chars.get(i).map(|(c, _)| classify(*c));
    let is_alnum_at = |i: usize| matches!(class_at(i), Some(Class::Alnum));
    let is_digit_at = |i: usize| chars.get(i).is_some_and(|(c, _)| c.is_numeric());
    let mut t = Tokenizer {
        raw,
        cur_start: None,
        gap_len: 0,
        gap_char: ' ',
        gap_boundary: Boundary::None,
    };
    let mut i = 0;
    while i < n {
        let c = chars[i].0;
        match classify(c) {
            Class::Alnum | Class::Leet => {
                if t.cur_start.is_none() {
                    t.cur_start = Some(i);
                }
            }
            Class::Apostrophe => {
                // Inside a word it is dropped when emitted (`don't` → `dont`,
                // `she's` → `shes`), which is also how people type without it.
                if !(t.cur_start.is_some() && is_alnum_at(i + 1)) {
                    t.sep(i, ' ', Boundary::None);
                }
            }
            Class::Mask => {
                let mut j = i;
                while matches!(class_at(j), Some(Class::Mask)) {
                    j += 1;
                }
                if is_alnum_at(j) {
                    // `s*icidio`, `*uicide`: masked letters inside a word.
                    if t.cur_start.is_none() {
                        t.cur_start = Some(i);
                    }
                } else {
                    // A trailing mask (`f***`) or a lone star is punctuation.
                    t.sep(i, c, Boundary::None);
                }
                i = j;
                continue;
            }
            Class::Bang => {
                let inside =
                    t.cur_start.is_some() && i > 0 && is_alnum_at(i - 1) && is_alnum_at(i + 1);
                if inside {
                    // A leet letter (`su!cide`).
                } else if c == '!' {
                    t.sep(i, c, Boundary::Strong);
                } else {
                    t.sep(i, c, Boundary::None);
                }
            }
            Class::NumPunct(b) => {
                let in_number =
                    t.cur_start.is_some() && i > 0 && is_digit_at(i - 1) && is_digit_at(i + 1);
                if !in_number {
                    // `7:30`, `0.5`, `1,000` stay one number; else a boundary.
                    t.sep(i, c, b);
                }
            }
            Class::Emoji => {
                t.flush(i);
                t.push(i, i + 1, true);
            }
            Class::Ignore => {}
            Class::Joiner => {
                i += 2;
                continue;
            }
            Class::Sep(b) => t.sep(i, c, b),
        }
        i += 1;
    }
    t.flush(n);
}

/// Units that may follow a number inside one token (`3am`, `50mg`, `5k`):
/// such a token is a quantity, never leetspeak.
fn emit(src_len: usize, opts: FoldOptions<'_>, scratch: &mut FoldScratch, out: &mut Folded) {
    let FoldScratch { chars, raw, word } = scratch;
    let src_len = u32::try_from(src_len).unwrap_or(u32::MAX);
    let mut sentence = 0u32;
    let mut clause = 0u32;
    let mut i = 0;
    while i < raw.len() {
        // Spaced or dotted single letters (`k i l l`, `k.i.l.l`,
        // `m a t a r m e`) are one word when three or more are in a row.
        let mut j = i;
        if is_single_letter(&raw[i], chars) {
            while j + 1 < raw.len()
                && is_single_letter(&raw[j + 1], chars)
                && raw[j + 1].gap_len == 1
                && matches!(raw[j + 1].gap_char, ' ' | '.' | '-' | '_' | '*')
            {
                j += 1;
            }
            if j - i < 2 {
                j = i;
            }
        }

        let first = raw[i];
        // Boundary before this token (never before the first one).
        if !out.toks.is_empty() && first.gap_boundary != Boundary::None {
            let (sym, kind) = if first.gap_boundary == Boundary::Strong {
                ("|", TokKind::Strong)
            } else {
                (",", TokKind::Weak)
            };
            if first.gap_boundary == Boundary::Strong {
                sentence += 1;
            }
            clause += 1;
            let at = chars.get(first.start).map(|c| c.1).unwrap_or(src_len);
            push_tok(out, sym, kind, at, sentence, clause);
        }

        word.clear();
        for t in &raw[i..=j] {
            for (c, _) in &chars[t.start..t.end] {
                if classify(*c) != Class::Apostrophe {
                    word.push(*c);
                }
            }
        }
        let src_start = chars.get(first.start).map(|c| c.1).unwrap_or(src_len);
        let last = raw[j];
        let src_end = chars
            .get(last.end)
            .map(|c| c.1)
            .unwrap_or(src_len)
            .max(src_start);

        if first.emoji {
            let mut s = [0u8; 4];
            let sym: &str = word.first().map(|c| &*c.encode_utf8(&mut s)).unwrap_or("");
            push_tok(out, sym, TokKind::Emoji, src_end, sentence, clause);
            i = j + 1;
            continue;
        }

        let (kind, value) = fold_word(word, opts);
        if !word.is_empty() {
            if !out.text.is_empty() {
                out.text.push(' ');
            }
            let tstart = out.text.len();
            out.text.extend(word.iter());
            let t = Tok {
                start: u32::try_from(tstart).unwrap_or(u32::MAX),
                end: u32::try_from(out.text.len()).unwrap_or(u32::MAX),
                src_end,
                kind,
                sentence,
                clause,
                value,
            };
            out.toks.push(t);
        }
        i = j + 1;
    }
}

fn push_tok(out: &mut Folded, sym: &str, kind: TokKind, src_end: u32, sentence: u32, clause: u32) {
    if sym.is_empty() {
        return;
    }
    if !out.text.is_empty() {
        out.text.push(' ');
    }
    let start = u32::try_from(out.text.len()).unwrap_or(u32::MAX);
    out.text.push_str(sym);
    out.toks.push(Tok {
        start,
        end: u32::try_from(out.text.len()).unwrap_or(u32::MAX),
        src_end,
        kind,
        sentence,
        clause,
        value: None,
    });
}

fn is_single_letter(t: &RawTok, chars: &[(char, u32)]) -> bool {
    !t.emoji && t.end == t.start + 1 && chars.get(t.start).is_some_and(|c| c.0.is_alphabetic())
}

/// Leetspeak, masks, leading `@`/`$` and repeated letters for one word, in
/// place. Returns the token kind and its leading number, if any.
fn fold_word(word: &mut Vec<char>, opts: FoldOptions<'_>) -> (TokKind, Option<u32>) {
    let has_letter = word.iter().any(|c| c.is_alphabetic());
    let starts_with_digit = word.first().is_some_and(|c| c.is_ascii_digit());
    if !has_letter {
        // `$50`, `@@`: symbols around a number are not letters.
        word.retain(|c| !matches!(c, '@' | '$' | '!' | '|' | '*'));
        let value = leading_number(word);
        let kind = if word.is_empty() {
            TokKind::Word
        } else {
            TokKind::Number
        };
        return (kind, value);
    }
    if starts_with_digit {
        // `3am`, `50mg`, `5k`: a number with a unit, never leetspeak.
        let value = leading_number(word);
        word.retain(|c| !matches!(c, '@' | '$' | '!' | '|' | '*'));
        return (TokKind::Word, value);
    }
    for c in word.iter_mut() {
        *c = leet(*c);
    }
    if word.iter().any(|c| is_mask(*c)) {
        let resolved = opts
            .mask
            .and_then(|m| m.resolve(word))
            .map(<[char]>::to_vec);
        match resolved {
            Some(w) => *word = w,
            None => word.retain(|c| !is_mask(*c)),
        }
    }
    if opts.collapse {
        word.dedup_by(|a, b| *a == *b && a.is_alphabetic());
    }
    (TokKind::Word, None)
}

fn leading_number(word: &[char]) -> Option<u32> {
    let mut v: Option<u32> = None;
    for c in word {
        match c.to_digit(10) {
            Some(d) => v = Some(v.unwrap_or(0).saturating_mul(10).saturating_add(d)),
            None => break,
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(s: &str) -> String {
        let mut scratch = FoldScratch::default();
        let mut out = Folded::default();
        let opts = FoldOptions {
            collapse: true,
            mask: None,
        };
        fold_into(s, opts, &mut scratch, &mut out);
        out.text
    }

    #[test]
    fn case_accents_apostrophes() {
        assert_eq!(fold("I'm NOT Suicidal"), "im not suicidal");
        assert_eq!(fold("Quién vende"), "quien vende");
        assert_eq!(fold("she’s"), "shes");
    }

    #[test]
    fn leetspeak_and_repeats() {
        assert_eq!(fold("k1ll mys3lf"), "kil myself");
        assert_eq!(fold("su1c1dal"), "suicidal");
        assert_eq!(fold("m4t4rme"), "matarme");
        assert_eq!(fold("soooo tiiired"), "so tired");
        // A number with a unit is left alone.
        assert_eq!(fold("50mg at 3am"), "50mg at 3am");
    }

    #[test]
    fn spaced_and_dotted_letters_join() {
        assert_eq!(fold("i want to k.i.l.l myself"), "i want to kil myself");
        assert_eq!(fold("quiero m a t a r m e"), "quiero matarme");
        assert_eq!(fold("commit s u i c i d e"), "comit suicide");
        // Two single letters are not a spelled word.
        assert_eq!(fold("s/h"), "s h");
    }

    #[test]
    fn boundaries_and_numbers() {
        assert_eq!(fold("not today. tomorrow, ok"), "not today | tomorow , ok");
        assert_eq!(fold("at 7:30 took 0.5"), "at 7:30 tok 0.5");
        assert_eq!(fold("bye x 💊💊"), "bye x 💊 💊");
        assert_eq!(fold("kms 🤦‍♀️"), "kms 🤦");
    }

    #[test]
    fn masks_resolve_against_the_lexicon() {
        let mut m = MaskIndex::default();
        m.insert("suicidio");
        m.finish();
        let mut scratch = FoldScratch::default();
        let mut out = Folded::default();
        let opts = FoldOptions {
            collapse: true,
            mask: Some(&m),
        };
        fold_into("pienso en el s*icidio", opts, &mut scratch, &mut out);
        assert_eq!(out.text, "pienso en el suicidio");
    }

    #[test]
    fn homoglyphs_fold_to_latin() {
        // Cyrillic а, е and о.
        assert_eq!(fold("kіll mysеlf"), "kil myself");
    }
}
