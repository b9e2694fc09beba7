//! An append-only, fsync'd JSON-lines log for safety data in embedded mode.
//!
//! Owns one file per log, `<data dir>/<name>` (the staff audit log now, the
//! escalation store later), and the scratch file `.<name>.compact` beside it
//! while [`DurableLog::retain_since`] rewrites the log. It must not touch
//! anything else in the directory, and it knows nothing about what a record
//! means beyond its `id`: what goes into a record (and so what the privacy
//! promises allow to be kept) is the caller's business.
//!
//! The contract says safety data is never lost and an escalation is stored
//! durably before anyone is notified, so [`DurableLog::append`] returns an id
//! only once the line has been written and `fsync`ed. Each record is one line
//! of JSON, `{"id":"<ms>-<n>",…}`; ids strictly increase down the file, which
//! is what lets a page be read from the end and a retention pass stop at the
//! first record it keeps.
//!
//! A crash can leave a partial last line: [`DurableLog::open`] cuts it off,
//! since that record was never acknowledged. Damage anywhere else is an error
//! naming the line: the log is never silently shortened. Nothing from a
//! record's contents is ever written to the process log.
//!
//! One handle per file: opening the same file twice in one process is
//! refused. Another process opening it is not detected.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::Value;

/// The largest record, as its JSON line (id included, newline excluded).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The most records one [`DurableLog::page`] returns.
pub const MAX_PAGE: usize = 1000;

/// The log holds sensitive safety data: owner only.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// A line, newline included, can never be longer than this; anything longer
/// was not written by this module.
const MAX_LINE_BYTES: usize = MAX_RECORD_BYTES + 1;

/// How much is read at a time when scanning the file backwards.
const READ_CHUNK: usize = 64 * 1024;

/// Every log file open in this process. Two handles on one file would each
/// number records on their own and interleave them, and the file would then
/// refuse to open on the next start.
static OPEN_LOGS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Why an operation on a [`DurableLog`] failed. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("Could not {action} the durable log {path}: {source}.")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "The durable log {path} is damaged at {place}: {reason}. It was left as it is; \
         repair it or move it aside by hand."
    )]
    Corrupt {
        path: PathBuf,
        place: String,
        reason: String,
    },
    #[error("The durable log name {name:?} in {dir} must be a plain file name.")]
    BadName { dir: PathBuf, name: String },
    #[error("The durable log {path} is already open in this process; share that handle.")]
    AlreadyOpen { path: PathBuf },
    #[error("A record for the durable log {path} must be a JSON object.")]
    NotAnObject { path: PathBuf },
    #[error("A record for the durable log {path} already has an \"id\"; the log assigns ids.")]
    IdAlreadySet { path: PathBuf },
    #[error(
        "A record for the durable log {path} is larger than {max} bytes, so it was refused \
         and nothing was written."
    )]
    TooLarge { path: PathBuf, max: usize },
    #[error("{cursor:?} is not a record id of the durable log {path}.")]
    BadCursor { path: PathBuf, cursor: String },
    #[error("The durable log {path} has used up its id space and cannot number another record.")]
    IdsExhausted { path: PathBuf },
    #[error(
        "The durable log {path} refuses writes: an earlier failed write could not be undone. \
         Restart to recover."
    )]
    Poisoned { path: PathBuf },
    #[error("The I/O task for the durable log {path} did not finish: {source}.")]
    Task {
        path: PathBuf,
        source: tokio::task::JoinError,
    },
}

/// Splits an id `"<ms>-<n>"` into its two numbers; `None` unless both are
/// plain decimal digits that fit a `u64`.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, n) = id.split_once('-')?;
    Some((decimal(ms)?, decimal(n)?))
}

fn decimal(s: &str) -> Option<u64> {
    // `u64::from_str` would also take a leading '+'.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

type Id = (u64, u64);

/// An append-only, fsync'd JSON-lines log. Share it behind an `Arc`.
pub struct DurableLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    dir: PathBuf,
    scratch: PathBuf,
    /// Held for the whole of an append or a compaction, which is what
    /// serialises them.
    writer: Mutex<Writer>,
    /// What readers may see: the current file and how much of it is
    /// committed. Kept apart from `writer` so a reader never waits for an
    /// fsync; it is swapped together with the file by a compaction.
    committed: Mutex<Snapshot>,
    _registration: Registration,
}

struct Writer {
    file: Arc<File>,
    /// Bytes of `file` that are whole, fsync'd records.
    len: u64,
    last: Option<Id>,
    /// A compaction renamed the file but could not fsync the directory; the
    /// next append retries it, so that an acknowledged record cannot end up
    /// in a file that a crash unlinks again.
    dir_unsynced: bool,
    poisoned: bool,
}

#[derive(Clone)]
struct Snapshot {
    file: Arc<File>,
    len: u64,
}

struct Registration(PathBuf);

impl Registration {
    fn claim(path: &Path) -> Result<Self, DurableError> {
        if OPEN_LOGS.lock().insert(path.to_path_buf()) {
            Ok(Self(path.to_path_buf()))
        } else {
            Err(DurableError::AlreadyOpen {
                path: path.to_path_buf(),
            })
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        OPEN_LOGS.lock().remove(&self.0);
    }
}

impl fmt::Debug for DurableLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableLog")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl DurableLog {
    /// Opens `dir/name`, creating the directory (mode 0700) and the file
    /// (mode 0600) if needed. Reads the whole file to check it and find the
    /// last id. A torn last line (no trailing newline, or not valid JSON) is
    /// cut off with a warning; any other damage is an error naming the line.
    ///
    /// Blocking: call it at start-up or from `spawn_blocking`.
    pub fn open(dir: &Path, name: &str) -> Result<DurableLog, DurableError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(DurableError::BadName {
                dir: dir.to_path_buf(),
                name: name.to_owned(),
            });
        }
        let created_dir = !dir.is_dir();
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io_error("create the directory of", &dir.join(name)))?;
        // Canonical, so that two spellings of one directory still count as
        // the same file for `OPEN_LOGS`.
        let dir = dir
            .canonicalize()
            .map_err(io_error("resolve the directory of", &dir.join(name)))?;
        let path = dir.join(name);
        // Claimed before the file is read: another handle could be halfway
        // through a write, which would look like a torn line.
        let registration = Registration::claim(&path)?;
        let scratch = dir.join(format!(".{name}.compact"));
        // Left by a crash during a compaction; the log itself is whole.
        remove_if_present(&scratch)
            .map_err(io_error("remove the leftover scratch file of", &path))?;

        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io_error("open", &path))?;
        restrict_mode(&file, &path)?;
        let (len, last) = recover(&file, &path)?;
        // The file's directory entry must be durable before any record in it
        // is acknowledged.
        sync_dir(&dir).map_err(io_error("fsync the directory of", &path))?;
        if created_dir {
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(io_error("fsync the directory above", &path))?;
            }
        }

        let file = Arc::new(file);
        Ok(DurableLog {
            inner: Arc::new(Inner {
                committed: Mutex::new(Snapshot {
                    file: Arc::clone(&file),
                    len,
                }),
                writer: Mutex::new(Writer {
                    file,
                    len,
                    last,
                    dir_unsynced: false,
                    poisoned: false,
                }),
                path,
                dir,
                scratch,
                _registration: registration,
            }),
        })
    }

    /// The file this log writes.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends `record` (a JSON object without an `id`) as one line, with a
    /// new id `"<ms>-<n>"` as its `id` field, and returns the id once the
    /// line is fsync'd. Ids strictly increase: `ms` is the wall clock but
    /// never goes below the previous id's, and `n` counts within one `ms`.
    ///
    /// On an error the record is not known to be durable; it is normally
    /// absent, but if the fsync itself failed it may still turn up after a
    /// restart. Dropping the future does not stop a write already handed to
    /// the blocking pool.
    pub async fn append(&self, record: Value) -> Result<String, DurableError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.append_blocking(record))
            .await
            .map_err(|e| self.inner.task_error(e))?
    }

    /// Newest first: the records with an id below `before` (all when
    /// `None`), at most `limit` of them (capped at [`MAX_PAGE`]). Passing the
    /// last id of one page as `before` gives the next page.
    pub async fn page(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>, DurableError> {
        let before = match before {
            None => None,
            Some(cursor) => Some(parse_id(cursor).ok_or_else(|| DurableError::BadCursor {
                path: self.inner.path.clone(),
                cursor: cursor.to_owned(),
            })?),
        };
        let limit = limit.min(MAX_PAGE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.page_blocking(before, limit))
            .await
            .map_err(|e| self.inner.task_error(e))?
    }

    /// Every record, oldest first, e.g. to reload open escalations at start.
    ///
    /// Blocking: call it at start-up or from `spawn_blocking`.
    pub fn read_all(&self) -> Result<Vec<Value>, DurableError> {
        let inner = &self.inner;
        let snap = inner.committed.lock().clone();
        let mut records = Vec::new();
        for_each_line(range(&snap.file, 0, snap.len), &inner.path, |line| {
            let (_, record) = parse_record(line.bytes)
                .map_err(|reason| inner.corrupt(format!("line {}", line.number), reason))?;
            records.push(record);
            Ok(ControlFlow::<()>::Continue(()))
        })?;
        Ok(records)
    }

    /// Drops the records whose id time is before `cutoff_ms` and returns how
    /// many. The kept ones are copied to a scratch file that is fsync'd and
    /// renamed over the log, then the directory is fsync'd. Appends wait
    /// until it is done. If nothing is old enough the file is not rewritten.
    pub async fn retain_since(&self, cutoff_ms: u64) -> Result<usize, DurableError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.retain_blocking(cutoff_ms))
            .await
            .map_err(|e| self.inner.task_error(e))?
    }
}

impl Inner {
    fn append_blocking(&self, record: Value) -> Result<String, DurableError> {
        let body = self.encode(record)?;
        let mut w = self.writer.lock();
        if w.poisoned {
            return Err(DurableError::Poisoned {
                path: self.path.clone(),
            });
        }
        if w.dir_unsynced {
            sync_dir(&self.dir).map_err(io_error("fsync the directory of", &self.path))?;
            w.dir_unsynced = false;
        }
        let id = next_id(w.last, now_ms()).ok_or_else(|| DurableError::IdsExhausted {
            path: self.path.clone(),
        })?;
        let id_text = format!("{}-{}", id.0, id.1);
        let line = frame(&id_text, &body);
        if line.len() > MAX_LINE_BYTES {
            return Err(self.too_large());
        }
        self.write_durably(&mut w, &line)?;
        w.last = Some(id);
        Ok(id_text)
    }

    /// The record serialised without its id and without its opening brace
    /// (see [`frame`]), refusing oversized records before they are fully
    /// buffered.
    fn encode(&self, record: Value) -> Result<Vec<u8>, DurableError> {
        let Value::Object(map) = record else {
            return Err(DurableError::NotAnObject {
                path: self.path.clone(),
            });
        };
        if map.contains_key("id") {
            return Err(DurableError::IdAlreadySet {
                path: self.path.clone(),
            });
        }
        let mut out = Capped {
            buf: Vec::new(),
            cap: MAX_RECORD_BYTES,
        };
        // Serialising a `Map` fails only through the writer, i.e. the cap.
        serde_json::to_writer(&mut out, &map).map_err(|_| self.too_large())?;
        if out.buf.first() != Some(&b'{') {
            return Err(DurableError::NotAnObject {
                path: self.path.clone(),
            });
        }
        out.buf.remove(0);
        Ok(out.buf)
    }

    fn write_durably(&self, w: &mut Writer, line: &[u8]) -> Result<(), DurableError> {
        let written = (&*w.file)
            .write_all(line)
            .map_err(io_error("append to", &self.path))
            .and_then(|()| w.file.sync_data().map_err(io_error("fsync", &self.path)));
        match written {
            Ok(()) => {
                w.len += line.len() as u64;
                self.committed.lock().len = w.len;
                Ok(())
            }
            Err(e) => {
                // Cut the file back to whole records, or a later append would
                // land after a fragment and damage the middle of the file.
                if let Err(undo) = w.file.set_len(w.len).and_then(|()| w.file.sync_data()) {
                    w.poisoned = true;
                    tracing::error!(
                        path = %self.path.display(),
                        error = %undo,
                        "could not undo a failed write; the durable log refuses writes until restart"
                    );
                }
                Err(e)
            }
        }
    }

    fn page_blocking(&self, before: Option<Id>, limit: usize) -> Result<Vec<Value>, DurableError> {
        let snap = self.committed.lock().clone();
        let mut lines = RevLines {
            file: &snap.file,
            start: snap.len,
            buf: Vec::new(),
        };
        let mut out = Vec::with_capacity(limit);
        while out.len() < limit {
            let Some((offset, line)) = lines.next_line(self)? else {
                break;
            };
            if let (Some(before), Some(id)) = (before, peek_id(&line)) {
                if id >= before {
                    continue;
                }
            }
            let (id, record) = parse_record(&line)
                .map_err(|reason| self.corrupt(format!("byte {offset}"), reason))?;
            if before.is_some_and(|before| id >= before) {
                continue;
            }
            out.push(record);
        }
        Ok(out)
    }

    fn retain_blocking(&self, cutoff_ms: u64) -> Result<usize, DurableError> {
        let mut w = self.writer.lock();
        if w.poisoned {
            return Err(DurableError::Poisoned {
                path: self.path.clone(),
            });
        }
        // Ids increase down the file, so the old records are a prefix.
        let mut dropped = 0usize;
        let keep_from = for_each_line(range(&w.file, 0, w.len), &self.path, |line| {
            let id = match peek_id(line.bytes) {
                Some(id) => id,
                None => {
                    parse_record(line.bytes)
                        .map_err(|reason| self.corrupt(format!("line {}", line.number), reason))?
                        .0
                }
            };
            if id.0 >= cutoff_ms {
                return Ok(ControlFlow::Break(line.offset));
            }
            dropped += 1;
            Ok(ControlFlow::Continue(()))
        })?
        .unwrap_or(w.len);
        if dropped == 0 {
            return Ok(0);
        }

        let scratch = self.write_scratch(&w.file, keep_from, w.len)?;
        if let Err(e) = fs::rename(&self.scratch, &self.path) {
            let _ = fs::remove_file(&self.scratch);
            return Err(io_error("replace", &self.path)(e));
        }
        // The old file is unlinked now: from here on every write must go to
        // the new one, even if the directory fsync below fails.
        let scratch = Arc::new(scratch);
        w.file = Arc::clone(&scratch);
        w.len = w.len.saturating_sub(keep_from);
        *self.committed.lock() = Snapshot {
            file: scratch,
            len: w.len,
        };
        if let Err(e) = sync_dir(&self.dir) {
            w.dir_unsynced = true;
            return Err(io_error("fsync the directory of", &self.path)(e));
        }
        Ok(dropped)
    }

    /// Copies `from[start..end]` into a new scratch file and fsyncs it.
    fn write_scratch(&self, from: &File, start: u64, end: u64) -> Result<File, DurableError> {
        remove_if_present(&self.scratch)
            .map_err(io_error("remove the scratch file of", &self.path))?;
        let scratch = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&self.scratch)
            .map_err(io_error("create the scratch file of", &self.path))?;
        let copied = io::copy(&mut range(from, start, end), &mut &scratch)
            .and_then(|n| {
                if n == end.saturating_sub(start) {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the log was shorter than expected",
                    ))
                }
            })
            .and_then(|()| scratch.sync_all());
        if let Err(e) = copied {
            let _ = fs::remove_file(&self.scratch);
            return Err(io_error("rewrite", &self.path)(e));
        }
        Ok(scratch)
    }

    fn corrupt(&self, place: String, reason: String) -> DurableError {
        DurableError::Corrupt {
            path: self.path.clone(),
            place,
            reason,
        }
    }

    fn too_large(&self) -> DurableError {
        DurableError::TooLarge {
            path: self.path.clone(),
            max: MAX_RECORD_BYTES,
        }
    }

    fn task_error(&self, source: tokio::task::JoinError) -> DurableError {
        DurableError::Task {
            path: self.path.clone(),
            source,
        }
    }
}

/// Checks the whole file, cuts off a torn last line and returns the length
/// of the whole records and the last id.
fn recover(file: &File, path: &Path) -> Result<(u64, Option<Id>), DurableError> {
    let file_len = file.metadata().map_err(io_error("inspect", path))?.len();
    let mut len = 0u64;
    let mut last: Option<Id> = None;
    // A line that is not JSON is a torn write only if nothing follows it.
    let mut suspect: Option<(u64, String)> = None;
    for_each_line(range(file, 0, file_len), path, |line| {
        let place = |number: u64| format!("line {number}");
        if let Some((number, reason)) = suspect.take() {
            return Err(corrupt_at(path, place(number), reason));
        }
        if !line.complete {
            suspect = Some((line.number, "it has no newline".to_owned()));
            return Ok(ControlFlow::<()>::Continue(()));
        }
        let value: Value = match serde_json::from_slice(line.bytes) {
            Ok(value) => value,
            Err(e) => {
                suspect = Some((line.number, json_reason(&e)));
                return Ok(ControlFlow::Continue(()));
            }
        };
        let id =
            record_id(&value).map_err(|reason| corrupt_at(path, place(line.number), reason))?;
        if let Some(previous) = last {
            if id <= previous {
                return Err(corrupt_at(
                    path,
                    place(line.number),
                    format!(
                        "its id {}-{} is not after the previous id {}-{}",
                        id.0, id.1, previous.0, previous.1
                    ),
                ));
            }
        }
        last = Some(id);
        len = line.offset + line.bytes.len() as u64 + 1;
        Ok(ControlFlow::Continue(()))
    })?;

    if let Some((number, reason)) = suspect {
        file.set_len(len)
            .and_then(|()| file.sync_data())
            .map_err(io_error("cut the torn last line off", path))?;
        tracing::warn!(
            path = %path.display(),
            line = number,
            dropped_bytes = file_len - len,
            why = %reason,
            "dropped a torn last record left by an interrupted write"
        );
    } else if len != file_len {
        // Only possible if the file changed while it was being read.
        return Err(corrupt_at(
            path,
            format!("byte {len}"),
            "the file changed while it was being opened".to_owned(),
        ));
    }
    Ok((len, last))
}

fn corrupt_at(path: &Path, place: String, reason: String) -> DurableError {
    DurableError::Corrupt {
        path: path.to_path_buf(),
        place,
        reason,
    }
}

/// The reason a line is not JSON, without quoting any of it: serde_json's
/// messages for syntax errors never include the input, but be explicit.
fn json_reason(e: &serde_json::Error) -> String {
    format!("it is not valid JSON (column {})", e.column())
}

fn record_id(value: &Value) -> Result<Id, String> {
    let Some(object) = value.as_object() else {
        return Err("it is not a JSON object".to_owned());
    };
    let Some(id) = object.get("id").and_then(Value::as_str) else {
        return Err("it has no string \"id\"".to_owned());
    };
    parse_id(id).ok_or_else(|| "its \"id\" is not of the form <ms>-<n>".to_owned())
}

fn parse_record(line: &[u8]) -> Result<(Id, Value), String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| json_reason(&e))?;
    Ok((record_id(&value)?, value))
}

/// The id of a line this module wrote (they all start with it), without
/// parsing the rest; `None` for anything else, which then gets parsed.
fn peek_id(line: &[u8]) -> Option<Id> {
    let rest = line.strip_prefix(b"{\"id\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    parse_id(std::str::from_utf8(rest.get(..end)?).ok()?)
}

/// `{"id":"<id>",` then the rest of the record's JSON (from [`Inner::encode`],
/// so without its opening brace) and a newline. The id goes first so a line
/// can be skipped by its id without parsing it, and so the file reads well
/// with `grep`.
fn frame(id: &str, rest: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(rest.len() + id.len() + 10);
    line.extend_from_slice(b"{\"id\":\"");
    line.extend_from_slice(id.as_bytes());
    line.push(b'"');
    if rest != b"}" {
        line.push(b',');
    }
    line.extend_from_slice(rest);
    line.push(b'\n');
    line
}

fn next_id(last: Option<Id>, now: u64) -> Option<Id> {
    match last {
        Some((ms, n)) if now <= ms => match n.checked_add(1) {
            Some(n) => Some((ms, n)),
            None => Some((ms.checked_add(1)?, 0)),
        },
        _ => Some((now, 0)),
    }
}

fn now_ms() -> u64 {
    // A clock before 1970 reads as 0; `next_id` keeps ids increasing anyway.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Tightens a file that was created by something else with wider rights.
fn restrict_mode(file: &File, path: &Path) -> Result<(), DurableError> {
    let mode = file
        .metadata()
        .map_err(io_error("inspect", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(io_error("restrict the permissions of", path))?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{:o}", mode & 0o777),
            "durable log was readable by others; set it to 600"
        );
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DurableError {
    let path = path.to_path_buf();
    move |source| DurableError::Io {
        action,
        path,
        source,
    }
}

/// A writer that fails once more than `cap` bytes are written to it.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(io::Error::other("record too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads `file[pos..end]` with positional reads, so readers share the
/// writer's file without touching its offset and never see past what is
/// committed.
struct Range<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

fn range(file: &File, pos: u64, end: u64) -> Range<'_> {
    Range { file, pos, end }
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        let Some(buf) = buf.get_mut(..want) else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

struct Line<'a> {
    /// 1-based.
    number: u64,
    /// Byte offset of the line's start.
    offset: u64,
    /// Without the newline.
    bytes: &'a [u8],
    /// Ended with a newline.
    complete: bool,
}

/// Calls `f` for each line from the start; returns what `f` broke with.
/// A line longer than any this module writes is an error, which also keeps
/// a garbage file from being read into memory whole.
fn for_each_line<B>(
    reader: impl Read,
    path: &Path,
    mut f: impl FnMut(Line<'_>) -> Result<ControlFlow<B>, DurableError>,
) -> Result<Option<B>, DurableError> {
    let mut reader = BufReader::with_capacity(READ_CHUNK, reader);
    let mut buf = Vec::new();
    let mut number = 0u64;
    let mut offset = 0u64;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buf)
            .map_err(io_error("read", path))?;
        if n == 0 {
            return Ok(None);
        }
        number += 1;
        let (bytes, complete) = match buf.strip_suffix(b"\n") {
            Some(bytes) => (bytes, true),
            None if n >= MAX_LINE_BYTES => {
                return Err(corrupt_at(
                    path,
                    format!("line {number}"),
                    "it is longer than any record this log writes".to_owned(),
                ));
            }
            None => (&buf[..], false),
        };
        if let ControlFlow::Break(b) = f(Line {
            number,
            offset,
            bytes,
            complete,
        })? {
            return Ok(Some(b));
        }
        offset += n as u64;
    }
}

/// Lines from the end of the committed part of a file backwards, read in
/// chunks so a page of recent records costs a page of reading.
struct RevLines<'a> {
    file: &'a File,
    /// File offset of `buf[0]`.
    start: u64,
    /// Bytes not returned yet; ends with a newline unless empty.
    buf: Vec<u8>,
}

impl RevLines<'_> {
    /// The previous line, without its newline, and its byte offset.
    fn next_line(&mut self, log: &Inner) -> Result<Option<(u64, Vec<u8>)>, DurableError> {
        loop {
            let body = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            if let Some(i) = body.iter().rposition(|&b| b == b'\n') {
                let line = body.get(i + 1..).unwrap_or_default().to_vec();
                let offset = self.start + i as u64 + 1;
                self.buf.truncate(i + 1);
                return Ok(Some((offset, line)));
            }
            if self.start == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = body.to_vec();
                self.buf.clear();
                return Ok(Some((0, line)));
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(log.corrupt(
                    format!("byte {}", self.start),
                    "a line is longer than any record this log writes".to_owned(),
                ));
            }
            let n = self.start.min(READ_CHUNK as u64);
            let start = self.start - n;
            let mut chunk = vec![0; n as usize];
            self.file
                .read_exact_at(&mut chunk, start)
                .map_err(io_error("read", &log.path))?;
            chunk.extend_from_slice(&self.buf);
            self.buf = chunk;
            self.start = start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::MetadataExt;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let random = RandomState::new().build_hasher().finish();
            let dir = std::env::temp_dir().join(format!(
                "hearth-durable-{}-{random:016x}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ids(records: &[Value]) -> Vec<Id> {
        records
            .iter()
            .map(|r| parse_id(r["id"].as_str().expect("id is a string")).expect("id parses"))
            .collect()
    }

    fn strictly_increasing(ids: &[Id]) -> bool {
        ids.windows(2).all(|w| w[0] < w[1])
    }

    fn file_lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .expect("read log")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn handles_and_errors_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<DurableLog>();
        send_sync::<DurableError>();
    }

    #[test]
    fn frame_puts_the_id_first() {
        assert_eq!(frame("1-0", b"}"), b"{\"id\":\"1-0\"}\n");
        assert_eq!(frame("1-0", b"\"a\":1}"), b"{\"id\":\"1-0\",\"a\":1}\n");
    }

    #[test]
    fn parse_id_accepts_only_plain_numbers() {
        assert_eq!(parse_id("1763900000000-0"), Some((1_763_900_000_000, 0)));
        assert_eq!(parse_id("0-42"), Some((0, 42)));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "+1-2",
            "1-+2",
            "1-2-3",
            "a-1",
            "1 -2",
            "1",
            "99999999999999999999-0",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn next_id_never_goes_back() {
        assert_eq!(next_id(None, 5), Some((5, 0)));
        assert_eq!(next_id(Some((5, 0)), 5), Some((5, 1)));
        assert_eq!(next_id(Some((5, 7)), 6), Some((6, 0)));
        // The clock stepped back: stay on the last ms and keep counting.
        assert_eq!(next_id(Some((9, 3)), 5), Some((9, 4)));
        assert_eq!(next_id(Some((9, u64::MAX)), 5), Some((10, 0)));
        assert_eq!(next_id(Some((u64::MAX, u64::MAX)), 5), None);
    }

    #[tokio::test]
    async fn append_then_read_all_and_page_round_trip() {
        let tmp = TempDir::new();
        let log = DurableLog::open(&tmp.0, "audit.jsonl").expect("open");
        let a = log
            .append(json!({"action": "mute", "by": "s_1", "target": "p_1"}))
            .await
            .expect("append a");
        let b = log.append(json!({})).await.expect("append b");
        let c = log
            .append(json!({"action": "note", "text": "line\nbreak \"quoted\""}))
            .await
            .expect("append c");
        assert!(parse_id(&a) < parse_id(&b) && parse_id(&b) < parse_id(&c));

        let all = log.read_all().expect("read_all");
        assert_eq!(
            all,
            vec![
                json!({"id": a, "action": "mute", "by": "s_1", "target": "p_1"}),
                json!({"id": b}),
                json!({"id": c, "action": "note", "text": "line\nbreak \"quoted\""}),
            ]
        );
        let page = log.page(None, 10).await.expect("page");
        assert_eq!(page, all.iter().rev().cloned().collect::<Vec<_>>());
        assert_eq!(
            log.page(None, 0).await.expect("empty page"),
            Vec::<Value>::new()
        );

        let lines = file_lines(log.path());
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(&format!("{{\"id\":\"{a}\",")));
    }

    #[tokio::test]
    async fn many_appends_in_one_ms_get_increasing_ids() {
        let tmp = TempDir::new();
        let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open");
        let mut returned = Vec::new();
        for i in 0..300 {
            let id = log.append(json!({ "i": i })).await.expect("append");
            returned.push(parse_id(&id).expect("id parses"));
        }
        assert!(strictly_increasing(&returned));
        assert_eq!(ids(&log.read_all().expect("read_all")), returned);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_are_serialised() {
        let tmp = TempDir::new();
        let log = Arc::new(DurableLog::open(&tmp.0, "a.jsonl").expect("open"));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..100 {
                        let id = log.append(json!({"t": t, "i": i})).await.expect("append");
                        mine.push(parse_id(&id).expect("id parses"));
                    }
                    mine
                })
            })
            .collect();
        let mut all = BTreeSet::new();
        for task in tasks {
            let mine = task.await.expect("task");
            assert!(strictly_increasing(&mine));
            all.extend(mine);
        }
        assert_eq!(all.len(), 800);
        assert_eq!(file_lines(log.path()).len(), 800);
        let in_file = ids(&log.read_all().expect("read_all"));
        assert!(strictly_increasing(&in_file));
        assert_eq!(in_file, all.into_iter().collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn reopen_continues_above_the_last_id() {
        let tmp = TempDir::new();
        let first = {
            let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open");
            log.append(json!({"n": 1})).await.expect("append")
        };
        let log = DurableLog::open(&tmp.0, "a.jsonl").expect("reopen");
        let second = log.append(json!({"n": 2})).await.expect("append");
        assert!(parse_id(&second) > parse_id(&first));
        drop(log);

        // A last id from the future (a clock that has since stepped back):
        // the next one stays on its ms and counts on.
        fs::write(
            tmp.file("b.jsonl"),
            "{\"id\":\"99999999999999-5\",\"x\":1}\n",
        )
        .expect("write");
        let log = DurableLog::open(&tmp.0, "b.jsonl").expect("open b");
        assert_eq!(
            log.append(json!({})).await.expect("append"),
            "99999999999999-6"
        );
    }

    #[tokio::test]
    async fn a_second_handle_on_one_file_is_refused() {
        let tmp = TempDir::new();
        let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open");
        // Another spelling of the same directory is still the same file.
        let other = tmp.0.join(".").join("a.jsonl");
        let dir = other.parent().expect("parent");
        assert!(matches!(
            DurableLog::open(dir, "a.jsonl"),
            Err(DurableError::AlreadyOpen { .. })
        ));
        drop(log);
        DurableLog::open(&tmp.0, "a.jsonl").expect("open after drop");
    }

    #[test]
    fn a_leftover_scratch_file_is_removed_on_open() {
        let tmp = TempDir::new();
        fs::write(tmp.file(".a.jsonl.compact"), "{\"id\":\"1-0\"}\n").expect("write");
        let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open");
        assert!(!tmp.file(".a.jsonl.compact").exists());
        assert_eq!(log.read_all().expect("read_all"), Vec::<Value>::new());
    }

    #[test]
    fn names_must_be_plain() {
        let tmp = TempDir::new();
        for bad in ["", ".", "..", "x/y", "../a.jsonl"] {
            assert!(
                matches!(
                    DurableLog::open(&tmp.0, bad),
                    Err(DurableError::BadName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off() {
        let tmp = TempDir::new();
        let whole = {
            let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open");
            log.append(json!({"n": 1})).await.expect("append");
            log.append(json!({"n": 2})).await.expect("append");
            fs::read(log.path()).expect("read")
        };
        for torn in [
            &b"{\"id\":\"5-0\",\"n\":"[..],
            b"\0\0\0\n",
            b"{\"id\":\"9-0\"}",
        ] {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(torn);
            fs::write(tmp.file("a.jsonl"), &bytes).expect("write");

            let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open torn");
            assert_eq!(fs::read(log.path()).expect("read"), whole, "{torn:?}");
            assert_eq!(log.read_all().expect("read_all").len(), 2);
            log.append(json!({"n": 3}))
                .await
                .expect("append after torn");
            let records = log.read_all().expect("read_all");
            assert_eq!(records.len(), 3);
            assert!(strictly_increasing(&ids(&records)));
            drop(log);
            fs::write(tmp.file("a.jsonl"), &whole).expect("restore");
        }
    }

    #[test]
    fn a_damaged_middle_line_is_an_error_naming_it() {
        let tmp = TempDir::new();
        let good = "{\"id\":\"1-0\"}\n";
        let later = "{\"id\":\"2-0\"}\n";
        let cases = [
            (format!("{good}not json\n{later}"), "line 2"),
            (format!("{good}{good}not json\n{later}"), "line 2"),
            (format!("{good}[1]\n"), "line 2"),
            (format!("{good}{{\"x\":1}}\n"), "line 2"),
            (format!("{later}{good}"), "line 2"),
            (format!("{good}{{\"id\":\"1-0x\"}}\n{later}"), "line 2"),
            (format!("{good}{later}\n{later}"), "line 3"),
        ];
        for (contents, place) in cases {
            fs::write(tmp.file("a.jsonl"), &contents).expect("write");
            let err = DurableLog::open(&tmp.0, "a.jsonl").expect_err(&contents);
            let text = err.to_string();
            assert!(matches!(err, DurableError::Corrupt { .. }), "{text}");
            assert!(text.contains(place), "{text}");
            assert!(text.contains("a.jsonl"), "{text}");
            // Nothing was cut off.
            assert_eq!(
                fs::read_to_string(tmp.file("a.jsonl")).expect("read"),
                contents
            );
        }
    }

    #[tokio::test]
    async fn paging_with_the_last_id_visits_everything_once() {
        let tmp = TempDir::new();
        let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open");
        // Some records bigger than a read chunk, so lines straddle chunks.
        for i in 0..40 {
            let pad = if i % 7 == 3 {
                "x".repeat(150_000)
            } else {
                String::new()
            };
            log.append(json!({ "i": i, "pad": pad }))
                .await
                .expect("append");
        }
        let all = log.read_all().expect("read_all");
        for limit in [1, 3, 7, 40, 100] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = log.page(cursor.as_deref(), limit).await.expect("page");
                assert!(page.len() <= limit);
                let Some(last) = page.last() else { break };
                cursor = Some(last["id"].as_str().expect("id").to_owned());
                seen.extend(page);
            }
            assert_eq!(
                seen,
                all.iter().rev().cloned().collect::<Vec<_>>(),
                "limit {limit}"
            );
        }
        // A cursor between ids and one above them all.
        let third = all[2]["id"].as_str().expect("id");
        let (ms, n) = parse_id(third).expect("id parses");
        let page = log
            .page(Some(&format!("{ms}-{}", n + 1)), 100)
            .await
            .expect("page");
        assert_eq!(
            ids(&page),
            ids(&all[..3]).into_iter().rev().collect::<Vec<_>>()
        );
        let page = log
            .page(Some("18446744073709551615-0"), 2)
            .await
            .expect("page");
        assert_eq!(page, vec![all[39].clone(), all[38].clone()]);
        assert!(matches!(
            log.page(Some("yesterday"), 5).await,
            Err(DurableError::BadCursor { .. })
        ));
    }

    #[tokio::test]
    async fn a_page_is_capped() {
        let tmp = TempDir::new();
        let contents: String = (1..=1005)
            .map(|i| format!("{{\"id\":\"{i}-0\"}}\n"))
            .collect();
        fs::write(tmp.file("a.jsonl"), contents).expect("write");
        let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open");
        let page = log.page(None, usize::MAX).await.expect("page");
        assert_eq!(page.len(), MAX_PAGE);
        assert_eq!(page[0]["id"], "1005-0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn retain_since_drops_old_records_and_keeps_appends() {
        let tmp = TempDir::new();
        fs::write(
            tmp.file("a.jsonl"),
            "{\"id\":\"1000-0\",\"old\":1}\n{\"id\":\"1000-1\",\"old\":2}\n{\"x\":3,\"id\":\"2000-0\"}\n",
        )
        .expect("write");
        let log = Arc::new(DurableLog::open(&tmp.0, "a.jsonl").expect("open"));
        let inode = fs::metadata(log.path()).expect("stat").ino();
        let mut kept = Vec::new();
        for i in 0..3 {
            kept.push(log.append(json!({ "new": i })).await.expect("append"));
        }

        // Nothing is that old: the file is left alone.
        assert_eq!(log.retain_since(500).await.expect("retain"), 0);
        assert_eq!(fs::metadata(log.path()).expect("stat").ino(), inode);

        // Appends racing the compaction all land.
        let racers: Vec<_> = (0..40)
            .map(|i| {
                let log = Arc::clone(&log);
                tokio::spawn(async move { log.append(json!({ "racer": i })).await })
            })
            .collect();
        let cutoff = now_ms() - 60_000;
        assert_eq!(log.retain_since(cutoff).await.expect("retain"), 3);
        for racer in racers {
            kept.push(racer.await.expect("task").expect("append"));
        }
        kept.push(
            log.append(json!({"after": true}))
                .await
                .expect("append after"),
        );

        let check = |records: Vec<Value>| {
            let mut got: Vec<String> = records
                .iter()
                .map(|r| r["id"].as_str().expect("id").to_owned())
                .collect();
            assert!(strictly_increasing(&ids(&records)));
            got.sort();
            let mut want = kept.clone();
            want.sort();
            assert_eq!(got, want);
        };
        check(log.read_all().expect("read_all"));
        let mut newest_first = log.page(None, 1000).await.expect("page");
        newest_first.reverse();
        check(newest_first);
        assert_eq!(
            fs::metadata(log.path()).expect("stat").mode() & 0o777,
            0o600
        );
        assert!(!tmp.file(".a.jsonl.compact").exists());
        let log = Arc::into_inner(log).expect("sole owner");
        drop(log);
        check(
            DurableLog::open(&tmp.0, "a.jsonl")
                .expect("reopen")
                .read_all()
                .expect("read_all"),
        );
    }

    #[tokio::test]
    async fn dropping_everything_keeps_ids_increasing() {
        let tmp = TempDir::new();
        let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open");
        let before = log.append(json!({})).await.expect("append");
        assert_eq!(log.retain_since(u64::MAX).await.expect("retain"), 1);
        assert_eq!(fs::metadata(log.path()).expect("stat").len(), 0);
        let after = log.append(json!({})).await.expect("append");
        assert!(parse_id(&after) > parse_id(&before));
        assert_eq!(log.read_all().expect("read_all").len(), 1);
    }

    #[tokio::test]
    async fn the_file_is_private() {
        let tmp = TempDir::new();
        let dir = tmp.0.join("fresh").join("data");
        let log = DurableLog::open(&dir, "a.jsonl").expect("open");
        log.append(json!({})).await.expect("append");
        let mode = |p: &Path| fs::metadata(p).expect("stat").mode() & 0o777;
        assert_eq!(mode(log.path()), 0o600);
        assert_eq!(mode(&dir), 0o700);
        drop(log);

        // A file someone else created world-readable gets tightened.
        fs::write(tmp.file("b.jsonl"), "").expect("write");
        fs::set_permissions(tmp.file("b.jsonl"), Permissions::from_mode(0o644)).expect("chmod");
        let log = DurableLog::open(&tmp.0, "b.jsonl").expect("open b");
        assert_eq!(mode(log.path()), 0o600);
    }

    #[tokio::test]
    async fn bad_records_are_refused_and_nothing_is_written() {
        let tmp = TempDir::new();
        let log = DurableLog::open(&tmp.0, "a.jsonl").expect("open");
        let huge = json!({ "pad": "x".repeat(MAX_RECORD_BYTES) });
        let err = log.append(huge).await.expect_err("too large");
        assert!(matches!(err, DurableError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("a.jsonl"));
        // Under the limit on its own, over it once the id is added.
        let near = json!({ "pad": "x".repeat(MAX_RECORD_BYTES - 15) });
        assert!(matches!(
            log.append(near).await,
            Err(DurableError::TooLarge { .. })
        ));
        assert!(matches!(
            log.append(json!({"id": "1-0"})).await,
            Err(DurableError::IdAlreadySet { .. })
        ));
        assert!(matches!(
            log.append(json!(["not", "an", "object"])).await,
            Err(DurableError::NotAnObject { .. })
        ));
        assert_eq!(fs::metadata(log.path()).expect("stat").len(), 0);

        let big = json!({ "pad": "x".repeat(MAX_RECORD_BYTES - 100) });
        log.append(big.clone()).await.expect("fits");
        let all = log.read_all().expect("read_all");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0]["pad"], big["pad"]);
    }
}
