//! The download itself: resume, retries, hashing while streaming, and the atomic publish.
//!
//! The caller holds the file's lock (`lock.rs`) for the whole call. Bytes go to `<dest>.part`;
//! only after the SHA-256 of everything received matches is the partial file fsynced and renamed
//! to `dest`, so `dest` is either absent, the previous file, or the verified new one.

use super::backoff;
use super::disk;
use super::http::{self, Event, FailKind, Head, HttpConfig, RangeFrom};
use super::partial::{Partial, PartialMeta, Validator};
use crate::error::{Error, Result};
use crate::hash::{hash_file_into, to_hex, Hasher};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Body bytes are written to the partial file in pieces of this size.
const WRITE_BUFFER: usize = 4 << 20;

/// The longest wait before the one retry an unreachable host gets (see `Stop::Unreachable`).
const QUICK_RETRY: Duration = Duration::from_millis(500);

/// Said when the host cannot be reached at all: what to do on a machine without network access.
const OFFLINE_HINT: &str = "without network access, set CLIPFAST_OFFLINE=1 to use only cached files, \
     or CLIPFAST_MIRROR=scheme://host[:port][/prefix] to download from a mirror that can be reached";

#[derive(Clone, Debug)]
pub struct Options {
    pub connect_timeout: Duration,
    /// Longest silence while waiting for the response or for body bytes.
    pub read_timeout: Duration,
    /// Tries after the first one, on connection errors, timeouts, 408/429 and 5xx.
    pub retries: u32,
    /// The first wait between tries; it doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// The size the file must have, when the caller knows it.
    pub expected_size: Option<u64>,
    /// How often the observer is called while the download runs.
    pub tick_interval: Duration,
    /// Bytes per second below which a transfer, measured over a whole `read_timeout`, counts as
    /// stalled and is retried (a server that trickles bytes just often enough to defeat the read
    /// timeout: slow-loris); 0 disables it.
    pub min_rate: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            retries: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            expected_size: None,
            tick_interval: Duration::from_millis(100),
            min_rate: 1024,
        }
    }
}

/// Told how far the download is, at least every `tick_interval` (also while waiting); an error
/// returned from it (Ctrl-C) stops the download and keeps the partial file for a later resume.
pub trait Observer {
    fn tick(&mut self, done: u64, total: Option<u64>) -> Result<()>;
}

#[derive(Clone, Debug)]
pub struct Report {
    pub sha256: String,
    pub size: u64,
    /// Body bytes received over the network in this call.
    pub transferred: u64,
    /// Length of the earlier partial file this call resumed from (0 for a fresh download).
    pub resumed_from: u64,
    pub attempts: u32,
}

/// Why one try did not finish the file.
enum Stop {
    /// Try again after a pause (connection lost, timeout, 5xx).
    Retry {
        msg: String,
        retry_after: Option<Duration>,
    },
    /// The host name does not resolve, or the connection was refused or has no route: one quick
    /// retry, then give up (a machine without network access should not wait through backoff).
    Unreachable(String),
    /// The partial bytes cannot be used: drop them, then try again at once.
    Restart(String),
    Fatal(Error),
}

impl From<Error> for Stop {
    fn from(err: Error) -> Self {
        Stop::Fatal(err)
    }
}

/// What is on disk so far: the partial file, its record, and the hash of its bytes.
struct State<'a> {
    url: &'a str,
    partial: Partial,
    meta: Option<PartialMeta>,
    /// Length of `<dest>.part`.
    have: u64,
    /// SHA-256 of the first `hasher.len()` bytes of the partial file (always <= `have`).
    hasher: Hasher,
    total: Option<u64>,
    transferred: u64,
    /// The partial file joins bytes of several responses (or of an earlier process).
    spliced: bool,
    /// Why this try's body ended at a broken connection rather than a clean close (see
    /// `http::Event::End`): then a wrong hash may be a cut transfer, not wrong bytes.
    cut: Option<String>,
}

impl State<'_> {
    fn reset(&mut self) -> Result<()> {
        self.partial.discard()?;
        self.meta = None;
        self.have = 0;
        self.hasher = Hasher::new();
        self.total = None;
        self.spliced = false;
        Ok(())
    }
}

/// Downloads `url` to `dest`, checking the SHA-256 when `expected` is given.
pub fn fetch(
    url: &str,
    dest: &Path,
    expected: Option<[u8; 32]>,
    options: &Options,
    observer: &mut dyn Observer,
) -> Result<Report> {
    let dir = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let partial = Partial::for_dest(dest);
    let resumable = partial.take_resumable(url)?;
    let (meta, have) = match resumable {
        Some((meta, len)) => (Some(meta), len),
        None => (None, 0),
    };
    let resumed_from = have;
    let mut state = State {
        url,
        total: meta.as_ref().and_then(|m| m.total),
        partial,
        meta,
        have,
        hasher: Hasher::new(),
        transferred: 0,
        spliced: false,
        cut: None,
    };
    let agent = http::agent(
        HttpConfig {
            connect_timeout: options.connect_timeout,
            read_timeout: options.read_timeout,
        },
        url,
    );
    let mut attempts: u32 = 0;
    let mut unreachable: u32 = 0;
    let mut restarted_after_mismatch = false;
    // The length and hash of the last file taken for a cut transfer (see below).
    let mut cut_seen: Option<(u64, [u8; 32])> = None;
    loop {
        attempts += 1;
        let outcome = attempt(&agent, &mut state, &dir, options, observer);
        let failure = match outcome {
            Ok(()) => {
                let size = state.have;
                observer.tick(size, Some(size))?;
                let digest = state.hasher.clone().finish();
                let matches = expected.map(|want| digest == want);
                // Why this body, without a length, ended at a broken connection; moot once the
                // hash matches.
                let cut = state.cut.take().filter(|_| matches != Some(true));
                let seen = Some((size, digest));
                match cut.as_deref() {
                    // An unverified body without a length that ended at a broken connection: a
                    // cut transfer, as one with a length that ends early. Its bytes stay for the
                    // next try, which resumes (Range, If-Range), learns from a 416 that they are
                    // whole, or starts over. An empty one is always cut; two fresh bodies alike,
                    // cut at the same byte, are what the server has.
                    Some(why) if state.spliced || size == 0 || cut_seen != seen => {
                        cut_seen = seen;
                        (cut_message(why, size, expected.is_some()), None)
                    }
                    _ => {
                        if matches == Some(false) {
                            let spliced = state.spliced;
                            state.reset()?;
                            if spliced && !restarted_after_mismatch {
                                // The bytes kept from an earlier try may be what is wrong: once,
                                // start over.
                                restarted_after_mismatch = true;
                                continue;
                            }
                            let twice = if cut.is_some() {
                                format!(
                                    " (two tries each ended at byte {size} at a broken \
                                     connection, no length announced: taken for the server's \
                                     file)"
                                )
                            } else {
                                String::new()
                            };
                            return Err(Error::Checksum {
                                path: dest.to_path_buf(),
                                msg: format!(
                                    "SHA-256 of the downloaded {url} is {}, expected {}{twice}; \
                                     nothing was kept",
                                    to_hex(&digest),
                                    expected.map(|want| to_hex(&want)).unwrap_or_default()
                                ),
                            });
                        }
                        publish(&state.partial, dest, &dir)?;
                        return Ok(Report {
                            sha256: to_hex(&digest),
                            size,
                            transferred: state.transferred,
                            resumed_from,
                            attempts,
                        });
                    }
                }
            }
            Err(Stop::Fatal(err)) => return Err(err),
            Err(Stop::Restart(msg)) => {
                state.reset()?;
                (msg, Some(Duration::ZERO))
            }
            Err(Stop::Retry { msg, retry_after }) => (msg, retry_after),
            Err(Stop::Unreachable(msg)) => {
                unreachable += 1;
                if unreachable > 1 || attempts > options.retries {
                    return Err(Error::Download {
                        url: url.to_string(),
                        msg: format!("{msg} (gave up after {attempts} tries); {OFFLINE_HINT}"),
                    });
                }
                (msg, Some(options.backoff.min(QUICK_RETRY)))
            }
        };
        let (msg, retry_after) = failure;
        if attempts > options.retries {
            return Err(Error::Download {
                url: url.to_string(),
                msg: format!("{msg} (gave up after {attempts} tries)"),
            });
        }
        let wait = backoff::delay(attempts, options.backoff, options.max_backoff, retry_after);
        pause(wait, &state, options, observer)?;
    }
}

/// Why a try whose body (no length announced) ended at a broken connection (`why`) after `size`
/// bytes is taken for a cut transfer.
fn cut_message(why: &str, size: u64, hashed: bool) -> String {
    let at = if size == 0 {
        "before any body byte".to_string()
    } else {
        format!("after {size} bytes")
    };
    let hash = if hashed && size > 0 {
        ", which do not match the SHA-256"
    } else {
        ""
    };
    format!("{why} {at} (no length announced){hash}")
}

/// Waits `wait`, calling the observer meanwhile so Ctrl-C is seen.
fn pause(
    wait: Duration,
    state: &State<'_>,
    options: &Options,
    observer: &mut dyn Observer,
) -> Result<()> {
    let until = Instant::now() + wait;
    loop {
        observer.tick(state.have, state.total)?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(options.tick_interval));
    }
}

/// Waits for the next event, calling the observer every `tick_interval` meanwhile.
fn next_event(
    events: &Receiver<Event>,
    state: &State<'_>,
    options: &Options,
    observer: &mut dyn Observer,
    last_tick: &mut Instant,
) -> Result<Option<Event>> {
    loop {
        let left = options.tick_interval.saturating_sub(last_tick.elapsed());
        match events.recv_timeout(left) {
            Ok(event) => return Ok(Some(event)),
            Err(RecvTimeoutError::Timeout) => {
                observer.tick(state.have, state.total)?;
                *last_tick = Instant::now();
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

fn attempt(
    agent: &ureq::Agent,
    state: &mut State<'_>,
    dir: &Path,
    options: &Options,
    observer: &mut dyn Observer,
) -> Result<(), Stop> {
    let range = match (&state.meta, state.have) {
        (Some(meta), have) if have > 0 => Some(RangeFrom {
            offset: have,
            if_range: meta.validator.header_value().to_string(),
        }),
        _ => None,
    };
    let asked_range = range.is_some();
    state.cut = None;
    if !asked_range && state.have > 0 {
        // Bytes without a validator cannot be resumed safely.
        state.reset()?;
    }
    let events = http::start(agent.clone(), state.url.to_string(), range);
    let mut last_tick = Instant::now();
    let lost = || Stop::Retry {
        msg: "the transfer thread ended unexpectedly".into(),
        retry_after: None,
    };
    let head = match next_event(&events, state, options, observer, &mut last_tick)? {
        Some(Event::Head(head)) => head,
        Some(Event::Failed { msg, kind }) => {
            return Err(match kind {
                FailKind::Transient => Stop::Retry {
                    msg,
                    retry_after: None,
                },
                FailKind::Unreachable => Stop::Unreachable(msg),
                FailKind::Fatal => Stop::Fatal(Error::Download {
                    url: state.url.to_string(),
                    msg,
                }),
            })
        }
        Some(_) | None => return Err(lost()),
    };
    let file = match accept_head(&head, state, asked_range)? {
        Accepted::AlreadyComplete => {
            // Only the hash of the bytes already there is missing.
            open_partial(state, observer, options)?;
            return Ok(());
        }
        Accepted::Append => open_partial(state, observer, options)?,
    };
    if let (Some(announced), Some(wanted)) = (state.total, options.expected_size) {
        if announced != wanted {
            return Err(Stop::Fatal(Error::Download {
                url: state.url.to_string(),
                msg: format!("the server announces {announced} bytes, expected {wanted}"),
            }));
        }
    }
    // Without Content-Length the caller's expected size (when given) still bounds the body.
    state.total = state.total.or(options.expected_size);
    if let Some(total) = state.total {
        disk::ensure_free_space(dir, total.saturating_sub(state.have), state.url)?;
    }
    observer.tick(state.have, state.total)?;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
    let outcome = receive_body(&events, &mut writer, state, options, observer);
    // Whatever happened, the partial file must hold every byte the hasher has seen, so that the
    // next try (or process) resumes from a consistent state.
    let file = writer
        .into_inner()
        .map_err(|e| Error::io(&state.partial.part, e.into_error()))?;
    if outcome.is_ok() {
        file.sync_all()
            .map_err(|e| Error::io(&state.partial.part, e))?;
    }
    outcome
}

/// Writes and hashes body chunks until the body ends or fails.
fn receive_body(
    events: &Receiver<Event>,
    writer: &mut BufWriter<File>,
    state: &mut State<'_>,
    options: &Options,
    observer: &mut dyn Observer,
) -> Result<(), Stop> {
    let mut last_tick = Instant::now();
    // The low-speed window: when it started and how many bytes had arrived then.
    let mut window = (Instant::now(), state.have);
    loop {
        match next_event(events, state, options, observer, &mut last_tick)? {
            Some(Event::Chunk(bytes)) => {
                let len = bytes.len() as u64;
                after_chunk(state.have, len, state.total).map_err(Stop::Restart)?;
                let elapsed = window.0.elapsed();
                if elapsed >= options.read_timeout {
                    let received = state.have.saturating_sub(window.1);
                    if let Some(msg) =
                        too_slow(received, elapsed, options.read_timeout, options.min_rate)
                    {
                        // Keep what came (it resumes), and try again.
                        return Err(Stop::Retry {
                            msg,
                            retry_after: None,
                        });
                    }
                    window = (Instant::now(), state.have);
                }
                writer
                    .write_all(&bytes)
                    .map_err(|e| Error::io(&state.partial.part, e))?;
                state.hasher.update(&bytes);
                state.have += len;
                state.transferred += len;
                if last_tick.elapsed() >= options.tick_interval {
                    observer.tick(state.have, state.total)?;
                    last_tick = Instant::now();
                }
            }
            Some(Event::End { cut }) => {
                // With a length known, `at_end` tells a whole body from a cut one.
                state.cut = cut.filter(|_| state.total.is_none());
                return at_end(state.have, state.total).map_err(|msg| Stop::Retry {
                    msg,
                    retry_after: None,
                });
            }
            Some(Event::Failed { msg, .. }) => {
                let total = state
                    .total
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into());
                let msg = format!("{msg} after {} of {total} bytes", state.have);
                return Err(Stop::Retry {
                    msg,
                    retry_after: None,
                });
            }
            Some(Event::Head(_)) | None => {
                return Err(Stop::Retry {
                    msg: "the transfer thread ended unexpectedly".into(),
                    retry_after: None,
                })
            }
        }
    }
}

enum Accepted {
    /// Body bytes follow; append them to the partial file.
    Append,
    /// The partial file already holds the whole file (416 on a resume).
    AlreadyComplete,
}

/// What is known before a response arrives: the bytes kept so far and their record.
pub(crate) struct Known<'a> {
    /// Bytes in the partial file (hashed or not).
    pub have: u64,
    /// The request carried `Range: bytes=<have>-` with `If-Range`.
    pub asked_range: bool,
    pub meta: Option<&'a PartialMeta>,
}

/// What a response head means for the partial file: a pure function of the head and what is
/// known, so that it can be tested (and fuzzed) without a server or a file.
#[derive(Debug)]
pub(crate) enum Decision {
    /// A whole body follows: drop what is kept, expect `total` bytes (when announced), and record
    /// the validator (when the server gave one) for a later resume.
    Fresh {
        total: Option<u64>,
        validator: Option<Validator>,
    },
    /// The rest of the file follows, from byte `have`; the file has `total` bytes when known.
    Resume { total: Option<u64> },
    /// The partial file already holds the whole file (416 on a resume whose size is known).
    Complete,
    /// Try again after a pause (408, 429, 5xx), honouring `Retry-After`.
    Retry {
        msg: String,
        retry_after: Option<Duration>,
    },
    /// The kept bytes cannot be continued: drop them and start over at once.
    Restart(String),
    /// Trying again cannot help.
    Fatal(String),
}

pub(crate) fn decide(head: &Head, known: &Known<'_>) -> Decision {
    if let Some(encoding) = head.content_encoding.as_deref().map(str::trim) {
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            return Decision::Fatal(format!(
                "the server sent Content-Encoding: {encoding} although identity was asked"
            ));
        }
    }
    let known_total = known.meta.and_then(|m| m.total);
    match head.status {
        // A whole body: a fresh start (also what If-Range answers when the file changed).
        200 => Decision::Fresh {
            total: head.content_length,
            validator: Validator::from_headers(head.etag.as_deref(), head.last_modified.as_deref()),
        },
        206 if known.asked_range => {
            let Some((start, total)) = parse_content_range(head.content_range.as_deref()) else {
                return Decision::Restart(format!(
                    "unusable Content-Range {:?}",
                    head.content_range
                ));
            };
            if start != known.have {
                return Decision::Restart(format!(
                    "the server resumed at byte {start}, not {}",
                    known.have
                ));
            }
            if let (Some(known), Some(now)) = (known_total, total) {
                if known != now {
                    return Decision::Restart(format!(
                        "the file on the server changed size ({known} -> {now})"
                    ));
                }
            }
            let unchanged = known.meta.is_some_and(|m| {
                m.validator
                    .agrees_with(head.etag.as_deref(), head.last_modified.as_deref())
            });
            if !unchanged {
                return Decision::Restart("the file on the server changed".into());
            }
            Decision::Resume {
                total: total.or(known_total),
            }
        }
        206 => Decision::Fatal(
            "the server answered 206 Partial Content to a request without Range".into(),
        ),
        416 if known.asked_range => {
            // The length is what was recorded, or what the 416 says (`bytes */<length>`; a 416
            // to an If-Range request means the validator still matched).
            let said = parse_unsatisfied_range(head.content_range.as_deref());
            if known_total.or(said) == Some(known.have) {
                Decision::Complete
            } else {
                Decision::Restart("the server refused to resume (416)".into())
            }
        }
        408 | 429 | 500..=599 => Decision::Retry {
            msg: format!("HTTP {} from the server", head.status),
            retry_after: head.retry_after,
        },
        status => Decision::Fatal(format!("HTTP {status} {}", reason(status))),
    }
}

/// The byte count after a body chunk of `len` bytes, or why the chunk is refused.
pub(crate) fn after_chunk(have: u64, len: u64, total: Option<u64>) -> Result<u64, String> {
    let now = have.saturating_add(len);
    match total {
        Some(total) if now > total => Err(format!(
            "the server sent more than the {total} bytes it announced"
        )),
        _ => Ok(now),
    }
}

/// Why a transfer that received `received` bytes in the last `elapsed` (at least one whole
/// `window`) is too slow to go on, or None: less than `min_rate` bytes per second over it.
pub(crate) fn too_slow(
    received: u64,
    elapsed: Duration,
    window: Duration,
    min_rate: u64,
) -> Option<String> {
    if min_rate == 0 || window.is_zero() || elapsed < window {
        return None;
    }
    let wanted = (min_rate as f64 * elapsed.as_secs_f64()) as u64;
    (received < wanted).then(|| {
        format!(
            "the server sent {received} bytes in {:.0} s, slower than {min_rate} bytes/s",
            elapsed.as_secs_f64()
        )
    })
}

/// Whether a body that ended cleanly after `have` bytes is the whole file.
pub(crate) fn at_end(have: u64, total: Option<u64>) -> Result<(), String> {
    match total {
        Some(total) if have < total => Err(format!(
            "the connection closed after {have} of {total} bytes"
        )),
        _ => Ok(()),
    }
}

/// Applies [`decide`] to the partial file and `state`.
fn accept_head(head: &Head, state: &mut State<'_>, asked_range: bool) -> Result<Accepted, Stop> {
    let decision = decide(
        head,
        &Known {
            have: state.have,
            asked_range,
            meta: state.meta.as_ref(),
        },
    );
    match decision {
        Decision::Fresh { total, validator } => {
            state.reset()?;
            state.total = total;
            state.meta = validator.map(|validator| PartialMeta {
                url: state.url.to_string(),
                total,
                validator,
            });
            match &state.meta {
                Some(meta) => state.partial.save_meta(meta)?,
                None => state.partial.forget_meta()?,
            }
            Ok(Accepted::Append)
        }
        Decision::Resume { total } => {
            state.total = total;
            state.spliced = true;
            Ok(Accepted::Append)
        }
        Decision::Complete => {
            state.spliced = true;
            Ok(Accepted::AlreadyComplete)
        }
        Decision::Retry { msg, retry_after } => Err(Stop::Retry { msg, retry_after }),
        Decision::Restart(msg) => Err(Stop::Restart(msg)),
        Decision::Fatal(msg) => Err(Stop::Fatal(Error::Download {
            url: state.url.to_string(),
            msg,
        })),
    }
}

/// Opens the partial file for appending, first hashing the bytes an earlier try left there.
fn open_partial(
    state: &mut State<'_>,
    observer: &mut dyn Observer,
    options: &Options,
) -> Result<File, Stop> {
    let part = state.partial.part.clone();
    if state.hasher.len() != state.have {
        let mut hasher = Hasher::new();
        let mut last = Instant::now();
        let total = state.total;
        hash_file_into(&part, Some(state.have), &mut hasher, &mut |done| {
            if last.elapsed() >= options.tick_interval {
                last = Instant::now();
                observer.tick(done, total)?;
            }
            Ok(())
        })?;
        state.hasher = hasher;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|e| Error::io(&part, e))?;
    // The partial file must hold exactly the hashed bytes (a crash may have left more).
    file.set_len(state.have).map_err(|e| Error::io(&part, e))?;
    file.flush().map_err(|e| Error::io(&part, e))?;
    Ok(file)
}

/// The verified partial file becomes `dest` in one rename, made durable by fsyncing the folder.
fn publish(partial: &Partial, dest: &Path, dir: &Path) -> Result<()> {
    std::fs::rename(&partial.part, dest).map_err(|e| Error::io(dest, e))?;
    partial.forget_meta()?;
    disk::sync_dir(dir)
}

/// `bytes <start>-<end>/<total or *>` -> (start, total).
pub(crate) fn parse_content_range(value: Option<&str>) -> Option<(u64, Option<u64>)> {
    let rest = value?.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.trim().split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        text => {
            let total: u64 = text.parse().ok()?;
            if end >= total {
                return None;
            }
            Some(total)
        }
    };
    Some((start, total))
}

/// `bytes */<total>` (a 416's Content-Range: the length of the file) -> total.
pub(crate) fn parse_unsatisfied_range(value: Option<&str>) -> Option<u64> {
    let total = value?
        .trim()
        .strip_prefix("bytes")?
        .trim()
        .strip_prefix("*/")?;
    total.trim().parse().ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_over_a_whole_window_is_too_slow() {
        let minute = Duration::from_secs(60);
        assert!(too_slow(10, minute, minute, 1024).is_some());
        assert!(too_slow(61_440, minute, minute, 1024).is_none());
        assert!(too_slow(10, Duration::from_secs(59), minute, 1024).is_none());
        assert!(too_slow(0, minute, minute, 0).is_none());
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range(Some("bytes 100-199/200")),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range(Some("bytes 5-9/*")), Some((5, None)));
        assert_eq!(parse_content_range(Some("bytes 5-4/10")), None);
        assert_eq!(parse_content_range(Some("bytes 5-10/10")), None);
        assert_eq!(parse_content_range(Some("items 1-2/3")), None);
        assert_eq!(parse_content_range(None), None);
        assert_eq!(parse_unsatisfied_range(Some("bytes */200")), Some(200));
        assert_eq!(parse_unsatisfied_range(Some(" bytes  */ 7 ")), Some(7));
        assert_eq!(parse_unsatisfied_range(Some("bytes 0-9/200")), None);
        assert_eq!(parse_unsatisfied_range(Some("bytes */*")), None);
        assert_eq!(parse_unsatisfied_range(None), None);
    }
}
