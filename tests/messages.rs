//! Messages: send, fan-out, numbering, ordering, text rules, and room
//! history on join (with and without `since`).

mod common;

use common::{assert_error, TestClient, TestHub};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test]
async fn send_is_acknowledged_and_delivered_to_every_member() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    let mut outsider = TestClient::joined_peer(&hub, "bereavement").await;
    a.recv_type("presence").await;

    let before = now_ms();
    let ok = a
        .request(json!({"type": "send", "ref": 7, "room": "anxiety",
                        "text": "Has anyone tried box breathing?"}))
        .await;
    let after = now_ms();
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(ok["ref"], 7);
    let id = ok["id"].as_str().expect("ok.id");
    assert!(id.starts_with("m_") && id.len() > 2, "{ok}");
    assert_eq!(ok["seq"], 1);
    assert!(ok.get("held").is_none() || ok["held"] == false, "{ok}");

    let (a_id, a_name) = (a.id.clone(), a.name.clone());
    for (who, c) in [("sender", &mut a), ("other", &mut b)] {
        let m = c.recv_type("message").await;
        assert_eq!(m["room"], "anxiety", "{who}: {m}");
        assert_eq!(m["id"], id, "{who}: {m}");
        assert_eq!(m["seq"], 1, "{who}: {m}");
        assert_eq!(m["text"], "Has anyone tried box breathing?");
        assert_eq!(m["from"]["id"], a_id.as_str());
        assert_eq!(m["from"]["name"], a_name.as_str());
        assert_eq!(m["from"]["role"], "peer");
        let ts = m["ts"].as_u64().expect("ts integer ms");
        assert!(
            ts + 1000 >= before && ts <= after + 1000,
            "ts {ts} not near {before}..{after}"
        );
        assert!(m.get("ref").is_none(), "events carry no ref: {m}");
    }
    assert!(outsider
        .recv_within(Duration::from_millis(200))
        .await
        .is_none());
}

#[tokio::test]
async fn seq_grows_by_one_across_senders() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "substance-use").await;
    let mut b = TestClient::joined_peer(&hub, "substance-use").await;
    let mut seqs = Vec::new();
    for i in 0..6 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        let (_, seq) = c.say("substance-use", &format!("msg {i}")).await;
        seqs.push(seq);
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    // Rooms number independently.
    let mut c = TestClient::joined_peer(&hub, "bereavement").await;
    let (_, seq) = c.say("bereavement", "first here").await;
    assert_eq!(seq, 1);
}

#[tokio::test]
async fn send_without_joining_is_not_joined() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    let e = c
        .request(json!({"type": "send", "ref": "n", "room": "anxiety", "text": "hi"}))
        .await;
    assert_error(&e, "not_joined");
    assert_eq!(e["ref"], "n");
    c.join("bereavement").await;
    let e = c.send_text("anxiety", "hi").await;
    assert_error(&e, "not_joined");
}

#[tokio::test]
async fn empty_text_is_empty() {
    let hub = TestHub::start().await;
    let mut c = TestClient::joined_peer(&hub, "anxiety").await;
    for text in ["", " ", "\n\n", "\t \u{7}", "\u{1b}\u{0}"] {
        let e = c.send_text("anxiety", text).await;
        assert_error(&e, "empty");
    }
    // Nothing was published.
    let (_, seq) = c.say("anxiety", "now something").await;
    assert_eq!(seq, 1);
}

#[tokio::test]
async fn too_large_counts_characters_not_bytes() {
    let hub = TestHub::start().await;
    let mut c = TestClient::joined_peer(&hub, "anxiety").await;
    // tests/config/test.toml: limits.max_text_chars = 2000.
    let max = 2000;
    // Exactly the limit in multi-byte characters (2 and 4 bytes each) fits.
    for ch in ['é', '🙂'] {
        let text: String = std::iter::repeat_n(ch, max).collect();
        let (_, _) = c.say("anxiety", &text).await;
        let m = c.recv_type("message").await;
        assert_eq!(m["text"].as_str().map(|t| t.chars().count()), Some(max));
    }
    // One more is too large.
    for ch in ['é', '🙂', 'a'] {
        let text: String = std::iter::repeat_n(ch, max + 1).collect();
        let e = c.send_text("anxiety", &text).await;
        assert_error(&e, "too_large");
    }
    // Decomposed input that NFC-normalises down to the limit fits:
    // 2000 × ("e" + U+0301) is 4000 chars raw, 2000 after NFC.
    let text = "e\u{301}".repeat(max);
    c.say("anxiety", &text).await;
}

#[tokio::test]
async fn text_is_nfc_normalised_and_control_chars_stripped() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    let cases = [
        ("e\u{301}\u{7}x", "éx"),
        ("line one\nline two", "line one\nline two"),
        ("tab\there", "tabhere"),
        ("cr\r\nlf", "cr\nlf"),
        ("A\u{30a}ngstr\u{f6}m", "Ångström"),
        ("\u{1b}[31mred", "[31mred"),
    ];
    for (raw, want) in cases {
        a.say("anxiety", raw).await;
        let m = b.recv_type("message").await;
        assert_eq!(m["text"], want, "{raw:?}");
        let m = a.recv_type("message").await;
        assert_eq!(m["text"], want, "{raw:?}");
    }
}

/// Collects `n` message events, returning `(seq, id, text)` in arrival order.
async fn collect_messages(c: &mut TestClient, n: usize) -> Vec<(u64, String, String)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = c.recv().await;
        if v["type"] == "message" {
            out.push((
                v["seq"].as_u64().expect("seq"),
                v["id"].as_str().expect("id").to_string(),
                v["text"].as_str().expect("text").to_string(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn members_see_identical_seq_ordered_streams() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    let mut watcher = TestClient::joined_peer(&hub, "anxiety").await;
    const EACH: usize = 100;

    // Both senders pipeline their frames without waiting for replies, at
    // the same time, and read everything that comes back.
    async fn blast(c: &mut TestClient, tag: &str) -> (Vec<Value>, Vec<(u64, String, String)>) {
        for i in 0..EACH {
            c.send_json(json!({"type": "send", "ref": format!("{tag}{i}"),
                               "room": "anxiety", "text": format!("{tag} {i}")}))
                .await;
        }
        let mut oks = Vec::new();
        let mut msgs = Vec::new();
        while oks.len() < EACH || msgs.len() < 2 * EACH {
            let v = c.recv().await;
            match v["type"].as_str() {
                Some("ok") => oks.push(v),
                Some("message") => msgs.push((
                    v["seq"].as_u64().expect("seq"),
                    v["id"].as_str().expect("id").to_string(),
                    v["text"].as_str().expect("text").to_string(),
                )),
                Some("presence") => {}
                _ => panic!("unexpected frame {v}"),
            }
        }
        (oks, msgs)
    }
    let ((oks_a, seen_a), (oks_b, seen_b), seen_w) = tokio::join!(
        blast(&mut a, "a"),
        blast(&mut b, "b"),
        collect_messages(&mut watcher, 2 * EACH)
    );

    let want: Vec<u64> = (1..=(2 * EACH) as u64).collect();
    let seqs = |v: &[(u64, String, String)]| v.iter().map(|m| m.0).collect::<Vec<_>>();
    assert_eq!(seqs(&seen_a), want, "sender a saw gaps or disorder");
    assert_eq!(seen_a, seen_b, "a and b saw different streams");
    assert_eq!(seen_a, seen_w, "watcher saw a different stream");

    // Each sender's own messages appear in the order it sent them, and
    // its oks match the ids and seqs that were delivered.
    for (tag, oks) in [("a", &oks_a), ("b", &oks_b)] {
        let mine: Vec<&(u64, String, String)> = seen_a
            .iter()
            .filter(|m| m.2.starts_with(&format!("{tag} ")))
            .collect();
        let texts: Vec<String> = mine.iter().map(|m| m.2.clone()).collect();
        let want: Vec<String> = (0..EACH).map(|i| format!("{tag} {i}")).collect();
        assert_eq!(texts, want);
        for (i, ok) in oks.iter().enumerate() {
            assert_eq!(ok["ref"], format!("{tag}{i}"), "oks in order");
            assert_eq!(ok["seq"], mine[i].0);
            assert_eq!(ok["id"], mine[i].1.as_str());
        }
    }
}

// ---------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------

/// on_join = 3, max = 5: small enough to see trimming.
async fn history_hub() -> TestHub {
    TestHub::start_with(|t| {
        common::set(t, "history", "on_join", "3");
        common::set(t, "history", "max", "5");
    })
    .await
}

fn history_seqs(joined: &Value) -> Vec<u64> {
    joined["history"]
        .as_array()
        .expect("history array")
        .iter()
        .map(|m| m["seq"].as_u64().expect("history item seq"))
        .collect()
}

#[tokio::test]
async fn join_without_since_gets_the_last_on_join_messages() {
    let hub = history_hub().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut ids = Vec::new();
    for i in 1..=4 {
        ids.push(a.say("anxiety", &format!("m{i}")).await.0);
    }
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join("anxiety").await;
    assert_eq!(j["seq"], 4);
    assert_eq!(j["gap"], false);
    assert_eq!(history_seqs(&j), vec![2, 3, 4], "oldest first: {j}");
    let h = j["history"].as_array().expect("history");
    for (item, (n, id)) in h.iter().zip([(2, &ids[1]), (3, &ids[2]), (4, &ids[3])]) {
        assert_eq!(item["type"], "message");
        assert_eq!(item["room"], "anxiety");
        assert_eq!(item["id"], id.as_str());
        assert_eq!(item["text"], format!("m{n}"));
        assert_eq!(item["from"]["id"], a.id.as_str());
        assert!(item["ts"].is_u64());
    }
}

#[tokio::test]
async fn join_with_since_gets_exactly_the_later_messages() {
    let hub = history_hub().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let epoch = a.join("anxiety").await["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    for i in 1..=5 {
        a.say("anxiety", &format!("m{i}")).await;
    }
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join_since("anxiety", 1, &epoch).await;
    assert_eq!(j["epoch"], epoch.as_str());
    assert_eq!(j["seq"], 5);
    // More than on_join (3): `since` returns every retained later message.
    assert_eq!(history_seqs(&j), vec![2, 3, 4, 5], "{j}");
    assert_eq!(j["gap"], false);

    let j = b.join_since("anxiety", 4, &epoch).await;
    assert_eq!(history_seqs(&j), vec![5]);
    assert_eq!(j["gap"], false);

    let j = b.join_since("anxiety", 5, &epoch).await;
    assert_eq!(history_seqs(&j), Vec::<u64>::new());
    assert_eq!(j["gap"], false);

    // Live traffic continues right after the history, without duplicates.
    a.say("anxiety", "m6").await;
    let m = b.recv_type("message").await;
    assert_eq!(m["seq"], 6);
}

#[tokio::test]
async fn since_older_than_retained_history_is_a_gap() {
    let hub = history_hub().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let epoch = a.join("anxiety").await["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    for i in 1..=8 {
        a.say("anxiety", &format!("m{i}")).await;
    }
    // max = 5: only 4..=8 are retained.
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join_since("anxiety", 1, &epoch).await;
    assert_eq!(j["gap"], true, "{j}");
    assert_eq!(history_seqs(&j), vec![4, 5, 6, 7, 8]);
    let j = b.join_since("anxiety", 0, &epoch).await;
    assert_eq!(j["gap"], true, "{j}");
    // Exactly at the edge of what is retained: no gap.
    let j = b.join_since("anxiety", 3, &epoch).await;
    assert_eq!(j["gap"], false, "{j}");
    assert_eq!(history_seqs(&j), vec![4, 5, 6, 7, 8]);
}

#[tokio::test]
async fn since_with_a_different_epoch_is_a_gap() {
    let hub = history_hub().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    for i in 1..=4 {
        a.say("anxiety", &format!("m{i}")).await;
    }
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join_since("anxiety", 2, "not-the-epoch").await;
    assert_eq!(j["gap"], true, "{j}");
    assert_ne!(j["epoch"], "not-the-epoch");
    assert_eq!(j["seq"], 4);
    // The client gets what the server has (the last on_join messages).
    assert_eq!(history_seqs(&j), vec![2, 3, 4]);
}

#[tokio::test]
async fn epochs_differ_between_rooms_and_restarts() {
    let h1 = TestHub::start().await;
    let h2 = TestHub::start().await;
    let mut a = TestClient::joined_peer(&h1, "anxiety").await;
    let mut b = TestClient::joined_peer(&h2, "anxiety").await;
    let e1 = a.join("anxiety").await["epoch"].clone();
    let e2 = b.join("anxiety").await["epoch"].clone();
    assert_ne!(e1, e2, "a new process must not reuse an epoch");
}

#[tokio::test]
async fn history_is_kept_at_most_history_ttl() {
    let hub = TestHub::start_with(|t| common::set(t, "history", "ttl_secs", "1")).await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let epoch = a.join("anxiety").await["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    a.say("anxiety", "soon forgotten").await;
    a.say("anxiety", "me too").await;
    let sent = std::time::Instant::now();
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join("anxiety").await;
    assert_eq!(history_seqs(&j), vec![1, 2]);
    // Poll until the messages have expired.
    let j = loop {
        let j = b.join("anxiety").await;
        if history_seqs(&j).is_empty() {
            break j;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "history older than ttl_secs = 1 still served: {j}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "history expired early"
    );
    assert_eq!(j["seq"], 2, "numbering continues");
    let j = b.join_since("anxiety", 0, &epoch).await;
    assert_eq!(j["gap"], true, "{j}");
    assert_eq!(history_seqs(&j), Vec::<u64>::new());
    // Numbering continues after expiry.
    let (_, seq) = a.say("anxiety", "new").await;
    assert_eq!(seq, 3);
}
