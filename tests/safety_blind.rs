//! Runs the built-in crisis classifier (rules and the trained model) over
//! `tests/fixtures/safety_blind.jsonl`: 320 labelled lines (190 English,
//! 130 Spanish; same schema as `../shared/safety-corpus`) written for Hearth
//! by someone who saw only the corpus README, never the rules, the model or
//! any other labelled set.
//!
//! This set is never trained on and its lines are never read while tuning:
//! it is the project's own stand-in for the release held-out set. Its score
//! was taken once, when the model landed; the floors below are that score,
//! so a later change that makes it worse fails here. Do not tune against
//! it: when it has been read, write a new blind set and move this one into
//! training. Run with `cargo test --test safety_blind -- --nocapture` (it
//! prints only totals and tables, never a line).
//!
//! Scores (recall on high+imminent predicted high or above; share of gold
//! `none` predicted high or above), one reading per model, never used to
//! choose between settings (each model was adopted before it was scored):
//! - rules alone: recall 0.552 (79/143), false escalations 0.047 (6/129);
//! - rules + the first model (trained on the corpus and seven other sets,
//!   2 461 lines): recall 0.832 (119/143), false escalations 0.047;
//! - rules + the second model (the same settings, ten sets, 3 520
//!   lines): recall 0.874 (125/143), false escalations 0.047 (6/129);
//! - rules + the model shipped now (fifteen sets, 5 520 lines, and the
//!   model may lower a rules escalation it is confident about to
//!   `concern`): recall 0.895, false escalations 0.023.
//!
//! `safety_blind2.jsonl` (`tests/safety_blind2.rs`) is a second set of the
//! same kind, written later by another writer.

mod common;

use common::labelled::{load, Metrics};
use hearth::safety::classifier::Classifier;

const RECALL_FLOOR: f64 = 0.89;
const FALSE_ESCALATION_CEILING: f64 = 0.05;

#[test]
fn blind_set_holds_the_measured_numbers() {
    let lines = load("safety_blind.jsonl");
    let classifier = Classifier::builtin().expect("the built-in safety config compiles");
    let mut m = Metrics::default();
    for l in &lines {
        m.add(l, &classifier.assess(&l.text, &l.room));
    }
    println!();
    m.summary("blind set");
    m.tables();
    assert!(
        m.recall() >= RECALL_FLOOR,
        "recall on high+imminent is {:.3}, below {RECALL_FLOOR}",
        m.recall()
    );
    assert!(
        m.false_escalation() <= FALSE_ESCALATION_CEILING,
        "{:.3} of gold-none lines were escalated to high or above (limit {FALSE_ESCALATION_CEILING})",
        m.false_escalation()
    );
}
