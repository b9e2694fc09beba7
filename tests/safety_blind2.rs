//! Runs the built-in crisis classifier (rules and the trained model) over
//! `tests/fixtures/safety_blind2.jsonl`: 360 labelled lines (234 English
//! in seven registers, 126 Spanish; same schema as
//! `../shared/safety-corpus`) written for Hearth by someone who saw only the
//! corpus README, never the rules, the model or any other labelled set; a
//! broad mix "like a real night" on the service.
//!
//! This set is never trained on and its lines are never read while tuning:
//! it is the project's own stand-in for the release held-out set. Its score
//! was taken once, when the model landed; the floors below are that score,
//! so a later change that makes it worse fails here. Do not tune against
//! it: when it has been read, write a new blind set and move this one into
//! training. Run with `cargo test --test safety_blind2 -- --nocapture` (it
//! prints only totals and tables, never a line).
//!
//! Scores (recall on high+imminent predicted high or above; share of gold
//! `none` predicted high or above), one reading per model, never used to
//! choose between settings:
//! - rules alone: recall 0.681, false escalations 0.031;
//! - rules + the previous model (3 520 lines): recall 0.889, false 0.037;
//! - rules + the model shipped now (5 520 lines, with the veto): recall
//!   0.910 (131/144), false escalations 0.049 (8/162).

mod common;

use common::labelled::{load, Metrics};
use hearth::safety::classifier::Classifier;

const RECALL_FLOOR: f64 = 0.90;
const FALSE_ESCALATION_CEILING: f64 = 0.05;

#[test]
fn second_blind_set_holds_the_measured_numbers() {
    let lines = load("safety_blind2.jsonl");
    let classifier = Classifier::builtin().expect("the built-in safety config compiles");
    let mut m = Metrics::default();
    for l in &lines {
        m.add(l, &classifier.assess(&l.text, &l.room));
    }
    println!();
    m.summary("second blind set");
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
