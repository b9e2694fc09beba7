//! Runs the built-in crisis classifier over `tests/fixtures/safety_probe.jsonl`,
//! a blind probe of 277 labelled lines (same schema as
//! `../shared/safety-corpus`, English and Spanish) written by someone who
//! never saw the rules, the development corpus or the fresh set.
//!
//! Prints confusion tables for the whole file and the summary for its even
//! and odd halves (lines counted from 1). Fails if the whole file falls below
//! the numbers reached when the word-level signal-family layer landed, so a
//! regression shows at once. Run with
//! `cargo test --test safety_probe -- --nocapture`.
//!
//! The halves have different roles. Only the EVEN lines may be read while
//! tuning: `HEARTH_PROBE_MISSES=1` lists the even lines the classifier gets
//! wrong and never prints an odd line. The odd half stays unread, as a
//! semi-blind estimate of held-out performance (its labels still shape the
//! whole-file score, so it is only semi-blind).
//!
//! Scores (recall on high+imminent; share of gold `none` escalated):
//! - Blind, before any rule was changed for it: recall 0.607 (74/122), false
//!   escalations 0.026. That is the honest number for how the phrase rules
//!   generalised. Halves at that point: even 0.639 (39/61), 0.036 (2/56);
//!   odd 0.574 (35/61), 0.017 (1/58).
//! - After the cue layer (word/stem cue families combined by a rule table in
//!   `config/safety/common.toml`; tuned on the corpus, the fresh set and the
//!   even half only): whole file recall 0.811 (99/122), false escalations
//!   0.026 (3/114); even 0.984 (60/61), 0.036 (2/56); odd 0.639 (39/61),
//!   0.017 (1/58). The even half was read, so only the odd half's gain
//!   (+4 lines) says anything about held-out recall, and it is small. Two
//!   odd lines were quoted in the brief that asked for the layer, and the
//!   odd summary was seen once mid-way and the pass/fail of the whole-file
//!   false-escalation assertion while tuning, so the odd half is semi-blind
//!   at best.

mod common;

use common::labelled::{load, print_miss, wrong, Metrics};
use hearth::safety::classifier::Classifier;

/// What the whole file reached, rounded down (recall) and up (false
/// escalations), so a regression fails.
const RECALL_FLOOR: f64 = 0.81;
const FALSE_ESCALATION_CEILING: f64 = 0.03;

#[test]
fn probe_set_holds_the_reached_numbers() {
    let lines = load("safety_probe.jsonl");
    let classifier = Classifier::builtin().expect("the built-in safety config compiles");
    let show_misses = std::env::var_os("HEARTH_PROBE_MISSES").is_some();
    let (mut all, mut even, mut odd) = (Metrics::default(), Metrics::default(), Metrics::default());
    for l in &lines {
        let a = classifier.assess(&l.text, &l.room);
        all.add(l, &a);
        let is_even = l.n % 2 == 0;
        if is_even {
            even.add(l, &a);
        } else {
            odd.add(l, &a);
        }
        // Odd lines are the semi-blind half: never printed.
        if show_misses && wrong(l, &a) && is_even {
            print_miss(l, &a);
        }
    }
    println!();
    all.summary("probe");
    even.summary("probe even");
    odd.summary("probe odd");
    all.tables();
    assert!(
        all.recall() >= RECALL_FLOOR,
        "recall on high+imminent is {:.3}, below {RECALL_FLOOR}",
        all.recall()
    );
    assert!(
        all.false_escalation() <= FALSE_ESCALATION_CEILING,
        "{:.3} of gold-none lines were escalated to high or above (limit {FALSE_ESCALATION_CEILING})",
        all.false_escalation()
    );
}
