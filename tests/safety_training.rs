//! The labelled sets the classifier's model is trained on beyond the corpus,
//! fresh and probe sets (`tests/fixtures/safety_*.jsonl`, listed in
//! `config/safety/README.md`; each written blind from the corpus README by
//! a different writer with a different brief), scored with the shipped
//! classifier.
//!
//! In-sample scores say nothing about generalisation (see `safety_blind`
//! for that). This test is here to catch a stale model: the model's
//! features include the rule families, so a change to the rules or to the
//! folding that is not followed by a retrain shows up as a drop here. The
//! fix is to retrain (the command is in `examples/train_classifier.rs` and
//! in `config/safety/README.md`) and commit the new `model.json`.

mod common;

use common::labelled::{load, Metrics};
use hearth::safety::classifier::Classifier;

#[test]
fn the_model_still_fits_what_it_was_trained_on() {
    let classifier = Classifier::builtin().expect("the built-in safety config compiles");
    let mut all = Metrics::default();
    for file in [
        "safety_more.jsonl",
        "safety_long.jsonl",
        "safety_short.jsonl",
        "safety_others.jsonl",
        "safety_boundary.jsonl",
        "safety_latam.jsonl",
        "safety_world.jsonl",
        "safety_teen.jsonl",
        "safety_using.jsonl",
        "safety_quiet.jsonl",
        "safety_espana.jsonl",
        "safety_grieflong.jsonl",
    ] {
        let mut m = Metrics::default();
        for l in &load(file) {
            let a = classifier.assess(&l.text, &l.room);
            m.add(l, &a);
            all.add(l, &a);
        }
        m.summary(file.trim_end_matches(".jsonl"));
    }
    all.summary("all");
    assert!(
        all.recall() >= 0.95 && all.false_escalation() <= 0.05,
        "the shipped model no longer fits its training sets (recall {:.3}, false escalations \
         {:.3}): retrain it with examples/train_classifier.rs and commit config/safety/model.json",
        all.recall(),
        all.false_escalation()
    );
}
