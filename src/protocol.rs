//! Wire types: the JSON frames of `shared/PROTOCOL.md` and nothing else.
//!
//! Owns the serde shapes of client and server frames, the error codes with
//! their human sentences, and the close codes. It must not hold state, do
//! I/O or decide policy; `session` decodes with it and `hub` encodes with it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Close codes, in one place, with whether a client should reconnect.
pub mod close {
    /// Normal closure (the client left, or its session moved to a newer connection).
    pub const NORMAL: u16 = 1000;
    /// Policy violation: the session is banned. Do not reconnect until the ban ends.
    pub const POLICY: u16 = 1008;
    /// A frame exceeded the size limit. Reconnecting is fine; resend smaller frames.
    pub const TOO_BIG: u16 = 1009;
    /// The server is restarting: reconnect with `resume` (and `join` with `since`).
    pub const RESTARTING: u16 = 1012;
    /// No `hello` within the handshake timeout.
    pub const HANDSHAKE_TIMEOUT: u16 = 4001;
    /// Bad or expired staff token.
    pub const UNAUTHORIZED: u16 = 4003;
    /// The client kept sending after being rate-limited.
    pub const FLOODING: u16 = 4008;
    /// The client's outbound queue overflowed: reconnect with `resume` and `since`.
    pub const TOO_SLOW: u16 = 4009;
}

/// A client's `ref`: a string or an integer, echoed unchanged on replies.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Ref(pub Value);

/// The longest `ref` the contract allows, in characters.
pub const MAX_REF_CHARS: usize = 64;

impl Ref {
    /// Validates a `ref` value: a string of at most 64 chars or an integer.
    pub fn parse(v: Value) -> Option<Ref> {
        match &v {
            Value::String(s) if s.chars().count() <= MAX_REF_CHARS => Some(Ref(v)),
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                (n.to_string().len() <= MAX_REF_CHARS).then_some(Ref(v))
            }
            _ => None,
        }
    }
}

/// `since` on `join`: where the client's copy of a room's history ends.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Since {
    pub seq: u64,
    pub epoch: String,
}

#[derive(Debug, Deserialize)]
pub struct Hello {
    #[serde(default)]
    pub resume: Option<String>,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Join {
    pub room: String,
    #[serde(default)]
    pub since: Option<Since>,
}

#[derive(Debug, Deserialize)]
pub struct RoomOnly {
    pub room: String,
}

#[derive(Debug, Deserialize)]
pub struct Send {
    pub room: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
pub struct Report {
    pub room: String,
    pub message: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A decoded client frame. Staff frames are recognised so that peers get
/// `forbidden` rather than `unknown_type`.
#[derive(Debug)]
pub enum ClientFrame {
    Hello(Hello),
    Join(Join),
    Leave(RoomOnly),
    Send(Send),
    Typing(RoomOnly),
    Report(Report),
    /// A staff-only frame (`watch`, `mute`, …): its name (peers get
    /// `forbidden` whatever its fields) and the frame if it decoded.
    Staff(&'static str, Result<StaffFrame, DecodeError>),
}

/// Frames only staff may send.
#[derive(Debug)]
pub enum StaffFrame {
    Watch(RoomOnly),
    Unwatch(RoomOnly),
    Mute(Mute),
    Kick(Kick),
    Ban(Ban),
    Delete(MessageRef),
    SlowMode(SlowMode),
    Lock(Lock),
    Release(MessageRef),
    Announce(Send),
    DismissReport(DismissReport),
    Ack(EscalationRef),
    Resolve(Resolve),
    Care(EscalationRef),
}

#[derive(Debug, Deserialize)]
pub struct Mute {
    pub room: String,
    pub peer: String,
    /// 0 lifts the mute.
    pub seconds: u64,
}

#[derive(Debug, Deserialize)]
pub struct Kick {
    pub room: String,
    pub peer: String,
}

#[derive(Debug, Deserialize)]
pub struct Ban {
    pub peer: String,
    /// 0 lifts the ban.
    pub seconds: u64,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MessageRef {
    pub room: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
pub struct SlowMode {
    pub room: String,
    /// 0 turns slow mode off.
    pub seconds: u64,
}

#[derive(Debug, Deserialize)]
pub struct Lock {
    pub room: String,
    pub locked: bool,
}

#[derive(Debug, Deserialize)]
pub struct DismissReport {
    pub report: String,
}

#[derive(Debug, Deserialize)]
pub struct EscalationRef {
    pub escalation: String,
}

#[derive(Debug, Deserialize)]
pub struct Resolve {
    pub escalation: String,
    #[serde(default)]
    pub note: Option<String>,
}

/// Frame types only staff may send; peers get `forbidden`.
pub const STAFF_TYPES: &[&str] = &[
    "watch",
    "unwatch",
    "mute",
    "kick",
    "ban",
    "delete",
    "slow_mode",
    "lock",
    "release",
    "announce",
    "ack",
    "resolve",
    "care",
    "dismiss_report",
];

/// Why a client frame could not be decoded; always answered with an error
/// frame, never by closing the connection.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("That frame is not valid JSON.")]
    NotJson,
    #[error("A frame must be a JSON object.")]
    NotObject,
    #[error("A frame needs a string field \"type\".")]
    NoType,
    #[error("\"ref\" must be a string of at most 64 characters or an integer.")]
    BadRef,
    #[error("Unknown frame type \"{0}\".")]
    UnknownType(String),
    #[error("The \"{ty}\" frame has a problem with {field}: {why}.")]
    BadField {
        ty: &'static str,
        field: String,
        why: String,
    },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// Decodes one text frame. On failure, the `ref` is still returned when it
/// could be read, so the error reply can echo it.
pub fn decode(text: &str) -> (Option<Ref>, Result<ClientFrame, DecodeError>) {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return (None, Err(DecodeError::NotJson)),
    };
    let Value::Object(mut map) = value else {
        return (None, Err(DecodeError::NotObject));
    };
    let rf = match map.remove("ref") {
        None | Some(Value::Null) => None,
        Some(v) => match Ref::parse(v) {
            Some(r) => Some(r),
            None => return (None, Err(DecodeError::BadRef)),
        },
    };
    let ty = match map.remove("type") {
        Some(Value::String(s)) => s,
        _ => return (rf, Err(DecodeError::NoType)),
    };
    let frame = match ty.as_str() {
        "hello" => typed(map, "hello").map(ClientFrame::Hello),
        "join" => typed(map, "join").map(ClientFrame::Join),
        "leave" => typed(map, "leave").map(ClientFrame::Leave),
        "send" => typed(map, "send").map(ClientFrame::Send),
        "typing" => typed(map, "typing").map(ClientFrame::Typing),
        "report" => typed(map, "report").map(ClientFrame::Report),
        other => match STAFF_TYPES.iter().find(|t| **t == other) {
            Some(t) => Ok(ClientFrame::Staff(t, staff_frame(t, map))),
            None => Err(DecodeError::UnknownType(truncate(other, 40))),
        },
    };
    (rf, frame)
}

fn staff_frame(ty: &'static str, map: Map<String, Value>) -> Result<StaffFrame, DecodeError> {
    Ok(match ty {
        "watch" => StaffFrame::Watch(typed(map, ty)?),
        "unwatch" => StaffFrame::Unwatch(typed(map, ty)?),
        "mute" => StaffFrame::Mute(typed(map, ty)?),
        "kick" => StaffFrame::Kick(typed(map, ty)?),
        "ban" => StaffFrame::Ban(typed(map, ty)?),
        "delete" => StaffFrame::Delete(typed(map, ty)?),
        "slow_mode" => StaffFrame::SlowMode(typed(map, ty)?),
        "lock" => StaffFrame::Lock(typed(map, ty)?),
        "release" => StaffFrame::Release(typed(map, ty)?),
        "announce" => StaffFrame::Announce(typed(map, ty)?),
        "dismiss_report" => StaffFrame::DismissReport(typed(map, ty)?),
        "ack" => StaffFrame::Ack(typed(map, ty)?),
        "resolve" => StaffFrame::Resolve(typed(map, ty)?),
        // STAFF_TYPES holds nothing else.
        _ => StaffFrame::Care(typed(map, ty)?),
    })
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn typed<T: serde::de::DeserializeOwned>(
    map: Map<String, Value>,
    ty: &'static str,
) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports a missing field at the root path ".", naming it in the message.
        let (field, why) = match inner.strip_prefix("missing field ") {
            Some(name) => (format!("field {name}"), "it is required".to_string()),
            None => (
                format!("field `{path}`"),
                inner.split(" at line").next().unwrap_or("").to_string(),
            ),
        };
        DecodeError::BadField { ty, field, why }
    })
}

/// Every error code in the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Unauthorized,
    Forbidden,
    NoSuchRoom,
    RoomFull,
    RoomLocked,
    NotJoined,
    TooLarge,
    Empty,
    RateLimited,
    SlowMode,
    Muted,
    Banned,
    Blocked,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The default sentence a person reads for this code.
    pub fn sentence(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "That request was not understood.",
            ErrorCode::UnknownType => "That kind of request is not known here.",
            ErrorCode::Unauthorized => "That sign-in token is not valid or has expired.",
            ErrorCode::Forbidden => "Only moderators and clinicians can do that.",
            ErrorCode::NoSuchRoom => "There is no room with that name.",
            ErrorCode::RoomFull => {
                "This room is full right now. Please try again in a little while, or try another room."
            }
            ErrorCode::RoomLocked => "This room is not taking new members right now.",
            ErrorCode::NotJoined => "Join the room before doing that.",
            ErrorCode::TooLarge => "That message is too long. Please shorten it and send again.",
            ErrorCode::Empty => "That message is empty.",
            ErrorCode::RateLimited => "Slow down a little, then send again.",
            ErrorCode::SlowMode => "This room is in slow mode; you can send again shortly.",
            ErrorCode::Muted => "You are muted in this room for now.",
            ErrorCode::Banned => "You cannot join this room at the moment.",
            ErrorCode::Blocked => "That message could not be sent.",
            ErrorCode::Unavailable => {
                "The service is having trouble right now. Please try again in a moment."
            }
            ErrorCode::Internal => "Something went wrong on our side. Please try again.",
        }
    }
}

/// An identity as others see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Peer,
    Moderator,
    Clinician,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomInfo {
    pub id: String,
    pub title: String,
    pub description: String,
    pub members: usize,
    pub capacity: usize,
    pub locked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub max_text_chars: usize,
    pub messages_per_10s: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub version: &'static str,
    pub node: String,
}

/// The `message` event. Serialised once per message; its bytes are shared
/// by every recipient and by the history store.
#[derive(Debug, Clone, Serialize)]
pub struct MessageEvent<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub room: &'a str,
    pub id: &'a str,
    pub seq: u64,
    pub ts: u64,
    pub from: &'a Member,
    pub text: &'a str,
}

/// A presence change: exactly one of `joined` / `left` is set.
#[derive(Debug, Serialize)]
pub struct PresenceEvent<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined: Option<&'a Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left: Option<MemberId<'a>>,
}

#[derive(Debug, Serialize)]
pub struct MemberId<'a> {
    pub id: &'a str,
}

/// Frames the server sends. Replies carry the client's `ref`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        rf: Option<&'a Ref>,
        session: &'a str,
        you: &'a Member,
        resumed: bool,
        rooms: Vec<RoomInfo>,
        /// Rooms this session is already a member of (after `resume`);
        /// send `join` with `since` to receive their messages again.
        joined: Vec<String>,
        limits: Limits,
        server: ServerInfo,
    },
    Joined {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        rf: Option<&'a Ref>,
        room: &'a str,
        epoch: &'a str,
        seq: u64,
        guidelines: &'a str,
        members: Vec<Member>,
        staff_watching: usize,
        history: Vec<&'a RawValue>,
        gap: bool,
    },
    Left {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        rf: Option<&'a Ref>,
        room: &'a str,
    },
    Ok {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        rf: Option<&'a Ref>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        held: Option<bool>,
    },
    Typing {
        room: &'a str,
        from: &'a Member,
    },
    /// To a member removed from a room by staff.
    Kicked {
        room: &'a str,
    },
    /// To everyone in the room (and its watchers): a message was removed.
    Deleted {
        room: &'a str,
        message: &'a str,
    },
    /// Reply to `watch`: an `ok` carrying the room as staff see it, with
    /// its history, so the watcher's stream continues from `seq` without a
    /// gap.
    #[serde(rename = "ok")]
    Watching {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        rf: Option<&'a Ref>,
        room: &'a str,
        epoch: &'a str,
        seq: u64,
        members: Vec<Member>,
        staff_watching: usize,
        locked: bool,
        slow_mode: u64,
        history: Vec<&'a RawValue>,
        gap: bool,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        rf: Option<&'a Ref>,
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
    },
}

impl ServerFrame<'_> {
    /// Encodes the frame. Serialising these types cannot fail (no maps with
    /// non-string keys, no fallible `Serialize` impls), so failure is a bug
    /// and is reported as an `internal` error frame rather than a panic.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"Something went wrong on our side. Please try again."}"#
                .to_string()
        })
    }
}

/// Normalises message text as the contract says: NFC, and control
/// characters other than `\n` stripped.
pub fn normalise_text(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    // Most messages are plain printable ASCII, which is already NFC.
    if text
        .bytes()
        .all(|b| b == b'\n' || (0x20..0x7f).contains(&b))
    {
        return text.to_owned();
    }
    text.nfc()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_send_with_ref() {
        let (rf, f) = decode(r#"{"type":"send","ref":7,"room":"anxiety","text":"hi","x":1}"#);
        assert_eq!(rf, Some(Ref(Value::from(7))));
        match f {
            Ok(ClientFrame::Send(s)) => {
                assert_eq!(s.room, "anxiety");
                assert_eq!(s.text, "hi");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_inputs_are_classified() {
        assert_eq!(decode("nope").1.err(), Some(DecodeError::NotJson));
        assert_eq!(decode("[1]").1.err(), Some(DecodeError::NotObject));
        assert_eq!(decode(r#"{"a":1}"#).1.err(), Some(DecodeError::NoType));
        assert_eq!(decode(r#"{"type":5}"#).1.err(), Some(DecodeError::NoType));
        assert_eq!(
            decode(r#"{"type":"x","ref":{}}"#).1.err(),
            Some(DecodeError::BadRef)
        );
        let long = "r".repeat(65);
        assert_eq!(
            decode(&format!(r#"{{"type":"x","ref":"{long}"}}"#)).1.err(),
            Some(DecodeError::BadRef)
        );
        let (rf, e) = decode(r#"{"type":"dance","ref":"a"}"#);
        assert_eq!(rf, Some(Ref(Value::from("a"))));
        assert_eq!(e.err().map(|e| e.code()), Some(ErrorCode::UnknownType));
    }

    #[test]
    fn field_errors_name_the_field() {
        let e = decode(r#"{"type":"send","room":"a"}"#).1.err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("text"), "{msg}");
        let e = decode(r#"{"type":"send","room":3,"text":"x"}"#).1.err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("room"), "{msg}");
    }

    #[test]
    fn staff_frames_are_recognised() {
        assert!(matches!(
            decode(r#"{"type":"mute","room":"a"}"#).1,
            Ok(ClientFrame::Staff("mute", _))
        ));
    }

    #[test]
    fn ascii_fast_path_still_strips_controls() {
        assert_eq!(
            normalise_text("plain text\nline two"),
            "plain text\nline two"
        );
        assert_eq!(normalise_text("tab\there\r\n"), "tabhere\n");
        assert_eq!(normalise_text("del\u{7f}"), "del");
    }

    #[test]
    fn text_is_normalised() {
        // e + combining acute becomes é; tab and bell are stripped; newline stays.
        assert_eq!(normalise_text("e\u{301}\t\u{7}a\nb"), "éa\nb");
    }

    #[test]
    fn error_frames_echo_ref() {
        let r = Ref(Value::from("x1"));
        let s = ServerFrame::Error {
            rf: Some(&r),
            code: ErrorCode::RateLimited,
            message: "m",
            retry_after_ms: Some(5),
            until: None,
        }
        .encode();
        assert_eq!(
            s,
            r#"{"type":"error","ref":"x1","code":"rate_limited","message":"m","retry_after_ms":5}"#
        );
    }
}
