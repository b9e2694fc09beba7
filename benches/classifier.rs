//! `cargo bench --bench classifier`: nanoseconds per `Classifier::assess`
//! over a representative mix of messages (short chat, a long paragraph,
//! Spanish, crisis, obfuscated, policy hits), each measured on its own and
//! as a round-robin mix. Plain `std::time::Instant` and
//! `std::hint::black_box`, no bench framework (`harness = false`).
//!
//! Goal: well under 10 µs for a typical message on one core.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hearth::safety::classifier::Classifier;

const LONG: &str = "so today was a lot. i woke up late again because i couldn't sleep, \
    missed the bus, and my manager had a go at me in front of everyone for something that \
    wasn't even my fault. i held it together until lunch and then cried in the toilets for \
    ten minutes. my therapist says i should write down three things that went ok each day, \
    so: the coffee was good, my sister texted me a picture of her cat, and i'm here talking \
    to you lot instead of sitting alone with it. thanks for reading this far, honestly. \
    tomorrow i'm going to try the breathing thing before work and see if it helps at all.";

const MIX: &[(&str, &str, &str)] = &[
    (
        "short chat",
        "anxiety",
        "had a rough day but the breathing exercise helped a bit",
    ),
    ("short idiom", "anxiety", "lol this exam is killing me 💀"),
    ("long paragraph", "anxiety", LONG),
    (
        "spanish chat",
        "anxiety",
        "hoy fue un día largo, pero mañana arranco terapia, che",
    ),
    (
        "spanish crisis",
        "anxiety",
        "ya escribí las cartas para mi familia. esta noche lo hago",
    ),
    (
        "crisis en",
        "anxiety",
        "gave my cat to next door. wont need her where im going. tonight",
    ),
    (
        "overdose now",
        "substance-use",
        "took a bunch of xanax w vodka and i cant feel my legs",
    ),
    ("obfuscated", "anxiety", "i w a n t to k1ll mys3lf fr"),
    (
        "grief",
        "bereavement",
        "my grandad took his own life when i was 9. miss him loads",
    ),
    (
        "policy",
        "anxiety",
        "add me on snap if u wanna chat: heron.x.22 or 07700 900123",
    ),
];

fn time(c: &Classifier, text: &str, room: &str, iters: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(c.assess(black_box(text), black_box(room)));
    }
    start.elapsed() / iters
}

fn main() {
    let build = Instant::now();
    let built = || match Classifier::builtin() {
        Ok(c) => c,
        Err(e) => panic!("built-in safety config: {e}"),
    };
    let c = built();
    // The same rules without the learned layer, measured side by side so
    // the model's own cost shows whatever else the machine is doing.
    let rules = built().with_model(None);
    println!("classifier built in {:?}", build.elapsed());
    // `cargo bench` passes `--bench`; without it (`cargo test
    // --all-targets` runs this binary too, unoptimised) or with `--quick`, a
    // short run only checks that the bench works.
    let quick =
        std::env::args().any(|a| a == "--quick") || !std::env::args().any(|a| a == "--bench");
    let iters: u32 = if quick { 50 } else { 20_000 };

    // Warm up caches and the thread-local scratch buffers.
    for (_, room, text) in MIX {
        for _ in 0..iters / 10 {
            black_box(c.assess(text, room));
        }
    }

    println!(
        "{:<16} {:>6} {:>10} {:>10} {:>8}",
        "message", "chars", "ns/assess", "rules only", "level"
    );
    for (name, room, text) in MIX {
        let per = time(&c, text, room, iters);
        let per_rules = time(&rules, text, room, iters);
        let level = c.assess(text, room).level;
        println!(
            "{name:<16} {:>6} {:>10} {:>10} {:>8}",
            text.chars().count(),
            per.as_nanos(),
            per_rules.as_nanos(),
            level.as_str()
        );
    }

    let rounds = iters * 4;
    let start = Instant::now();
    for i in 0..rounds {
        let (_, room, text) = MIX[i as usize % MIX.len()];
        black_box(c.assess(black_box(text), black_box(room)));
    }
    let per = start.elapsed() / rounds;
    println!(
        "mix              {:>6} {:>10}     (mean over {rounds} messages)",
        "-",
        per.as_nanos()
    );
}
