//! The two wire protocols a scenario can speak, reduced to what it needs:
//! say hello, join, send, leave, and read replies and room messages.
//!
//! - [`Protocol::Hearth`]: Hearth's protocol (`shared/PROTOCOL.md`), also
//!   spoken by `loadtest bare`.
//! - [`Protocol::SocketIo`]: Engine.IO v4 / Socket.IO v5 over a raw
//!   WebSocket, against `loadtest/baselines/socketio/server.js`, whose event
//!   payloads and acknowledgements are shaped like Hearth's frames
//!   (`{"type":"joined","seq":…}`, `{"type":"message","seq":…,"text":…}`),
//!   so one decoder serves both.
//!
//! Hot path: every `message` frame is decoded into a borrowed [`Wire`]
//! (no allocation for plain ASCII texts), never into a `serde_json::Value`.

use std::borrow::Cow;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Which protocol the target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Hearth, or `loadtest bare` (same protocol).
    Hearth,
    /// The Socket.IO 4 baseline server (Engine.IO v4 / Socket.IO v5).
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
}

/// The fields of a server frame the load generator looks at. Unknown
/// fields are skipped.
#[derive(Debug, Deserialize)]
pub(crate) struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) ty: Cow<'a, str>,
    #[serde(rename = "ref", default, deserialize_with = "lenient_ref")]
    pub(crate) reference: Option<u64>,
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    #[serde(default, borrow)]
    pub(crate) code: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub(crate) text: Option<Str<'a>>,
}

/// A string borrowed from the frame unless it holds escapes. (A bare
/// `Option<Cow<str>>` field always allocates: serde borrows a `Cow` only
/// when it is the field's type itself.)
#[derive(Debug, Deserialize)]
pub(crate) struct Str<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// `ref` as a number; a string `ref` (not sent by the load generator, e.g.
/// on a reply to something else) reads as `None` instead of failing.
fn lenient_ref<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_u64())
}

/// One decoded server frame.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    /// A Hearth-shaped frame (for Socket.IO: an event payload, or an ack
    /// whose `reference` is the ack id).
    Frame(Wire<'a>),
    /// Engine.IO ping: answer with [`Protocol::pong`].
    Ping,
    /// Anything else (Engine.IO/Socket.IO control packets, other events).
    Other,
}

impl Protocol {
    /// The URL to open for `url` as given: Socket.IO needs its Engine.IO
    /// path and query; a bare `ws://host:port` (or `/`) gets them added.
    pub(crate) fn url(self, url: &str) -> String {
        match self {
            Protocol::Hearth => url.to_string(),
            Protocol::SocketIo => {
                let after_scheme = url.find("://").map_or(0, |i| i + 3);
                match url[after_scheme..].find('/') {
                    None => format!("{url}/socket.io/?EIO=4&transport=websocket"),
                    Some(i) if url[after_scheme + i..] == *"/" => {
                        format!("{url}socket.io/?EIO=4&transport=websocket")
                    }
                    Some(_) => url.to_string(),
                }
            }
        }
    }

    /// Decodes one text frame.
    pub(crate) fn decode(self, text: &str) -> anyhow::Result<Incoming<'_>> {
        match self {
            Protocol::Hearth => Ok(Incoming::Frame(
                serde_json::from_str(text).context("server sent a frame that is not JSON")?,
            )),
            Protocol::SocketIo => decode_socketio(text),
        }
    }

    /// The reply to an Engine.IO ping.
    pub(crate) fn pong(self) -> Option<&'static str> {
        match self {
            Protocol::Hearth => None,
            Protocol::SocketIo => Some("3"),
        }
    }

    /// The first frame(s) a client sends once the WebSocket is open; for
    /// Socket.IO, after the server's Engine.IO `open` packet.
    pub(crate) fn hello(self) -> &'static str {
        match self {
            Protocol::Hearth => r#"{"type":"hello","ref":0}"#,
            Protocol::SocketIo => "40",
        }
    }

    /// `join` with reply id `r`.
    pub(crate) fn join(self, r: u64, room: &str) -> String {
        match self {
            Protocol::Hearth => format!(r#"{{"type":"join","ref":{r},"room":"{room}"}}"#),
            Protocol::SocketIo => format!(r#"42{r}["join",{{"room":"{room}"}}]"#),
        }
    }

    /// `leave` with reply id `r`.
    pub(crate) fn leave(self, r: u64, room: &str) -> String {
        match self {
            Protocol::Hearth => format!(r#"{{"type":"leave","ref":{r},"room":"{room}"}}"#),
            Protocol::SocketIo => format!(r#"42{r}["leave",{{"room":"{room}"}}]"#),
        }
    }

    /// `send` with reply id `r`. `text` must need no JSON escaping (the
    /// load generator's texts are ASCII letters, digits and spaces).
    pub(crate) fn send(self, r: u64, room: &str, text: &str) -> String {
        debug_assert!(!text.contains(['"', '\\']));
        match self {
            Protocol::Hearth => {
                format!(r#"{{"type":"send","ref":{r},"room":"{room}","text":"{text}"}}"#)
            }
            Protocol::SocketIo => {
                format!(r#"42{r}["send",{{"room":"{room}","text":"{text}"}}]"#)
            }
        }
    }
}

fn decode_socketio(text: &str) -> anyhow::Result<Incoming<'_>> {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(b'2') if bytes.len() == 1 => return Ok(Incoming::Ping),
        Some(b'4') => {}
        Some(b'1') => bail!("the Socket.IO server closed the session"),
        _ => return Ok(Incoming::Other),
    }
    match bytes.get(1) {
        // EVENT: 42["name",payload] (namespace "/", no ack id from the server).
        Some(b'2') => {
            let (name, wire): (Cow<'_, str>, Wire<'_>) =
                serde_json::from_str(&text[2..]).context("bad Socket.IO event")?;
            if name == "message" || name == "presence" {
                Ok(Incoming::Frame(wire))
            } else {
                Ok(Incoming::Other)
            }
        }
        // ACK: 43<id>[payload]
        Some(b'3') => {
            let digits = text[2..].bytes().take_while(u8::is_ascii_digit).count();
            let id: u64 = text[2..2 + digits].parse().context("ack without id")?;
            let (mut wire,): (Wire<'_>,) =
                serde_json::from_str(&text[2 + digits..]).context("bad Socket.IO ack")?;
            wire.reference = Some(id);
            Ok(Incoming::Frame(wire))
        }
        // CONNECT_ERROR
        Some(b'4') => bail!("Socket.IO connect refused: {}", &text[2..]),
        _ => Ok(Incoming::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: Incoming<'_>) -> Wire<'_> {
        match i {
            Incoming::Frame(w) => w,
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn hearth_frames_decode_without_values() {
        let p = Protocol::Hearth;
        let w = frame(
            p.decode(r#"{"type":"message","room":"r1","id":"m_x","seq":12,"ts":1,"from":{"id":"p"},"text":"a b"}"#)
                .expect("decode"),
        );
        assert_eq!(
            (&*w.ty, w.seq, w.text.as_deref()),
            ("message", Some(12), Some("a b"))
        );
        assert!(matches!(w.text, Some(Str(Cow::Borrowed(_)))));
        let w = frame(
            p.decode(r#"{"type":"ok","ref":7,"id":"m","seq":3}"#)
                .expect("ok"),
        );
        assert_eq!((&*w.ty, w.reference, w.seq), ("ok", Some(7), Some(3)));
        let w = frame(
            p.decode(r#"{"type":"message","seq":1,"text":"line\nbreak"}"#)
                .expect("escapes"),
        );
        assert_eq!(w.text.as_deref(), Some("line\nbreak"));
        let w = frame(
            p.decode(r#"{"type":"error","ref":"hello","code":"rate_limited"}"#)
                .expect("error"),
        );
        assert_eq!(
            (w.reference, w.code.as_deref()),
            (None, Some("rate_limited"))
        );
        assert!(p.decode("nope").is_err());
        assert_eq!(
            p.send(3, "r0", "x y"),
            r#"{"type":"send","ref":3,"room":"r0","text":"x y"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&p.join(1, "r0")).expect("json");
        assert_eq!(v["room"], "r0");
    }

    #[test]
    fn socketio_packets_decode() {
        let p = Protocol::SocketIo;
        assert!(matches!(p.decode("2").expect("ping"), Incoming::Ping));
        assert!(matches!(
            p.decode(r#"0{"sid":"x","pingInterval":25000}"#)
                .expect("open"),
            Incoming::Other
        ));
        assert!(matches!(
            p.decode(r#"40{"sid":"y"}"#).expect("connect"),
            Incoming::Other
        ));
        let w = frame(
            p.decode(r#"42["message",{"type":"message","room":"r0","seq":5,"text":"hi"}]"#)
                .expect("event"),
        );
        assert_eq!(
            (&*w.ty, w.seq, w.text.as_deref()),
            ("message", Some(5), Some("hi"))
        );
        let w = frame(p.decode(r#"4312[{"type":"ok","seq":9}]"#).expect("ack"));
        assert_eq!((&*w.ty, w.reference, w.seq), ("ok", Some(12), Some(9)));
        assert!(p.decode(r#"44{"message":"nope"}"#).is_err());
        assert_eq!(
            p.send(4, "r1", "t"),
            r#"424["send",{"room":"r1","text":"t"}]"#
        );
        assert_eq!(
            p.url("ws://127.0.0.1:3000"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            p.url("ws://127.0.0.1:3000/"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(p.url("ws://h:1/custom?EIO=4"), "ws://h:1/custom?EIO=4");
    }
}
