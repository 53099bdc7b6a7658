//! One HTTP exchange on a worker thread, reported as a stream of events.
//!
//! The request and every body read block (up to the timeouts); running them on their own thread
//! lets the caller look for Ctrl-C and report progress every few milliseconds whatever the
//! network does. When the caller stops listening, the worker ends at its next event.

use std::io::{ErrorKind, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::Agent;

/// Size of the buffers handed from the network thread to the writer.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads (bounds memory to a few MiB).
const QUEUE: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct HttpConfig {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// What the response head says; everything the download logic decides on.
#[derive(Debug, Default)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    pub content_range: Option<String>,
    pub content_encoding: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub retry_after: Option<Duration>,
}

#[derive(Debug)]
pub enum Event {
    Head(Head),
    Chunk(Vec<u8>),
    End,
    /// The exchange failed; `retryable` is false when trying again cannot help (bad URL, TLS
    /// certificate refused, redirect loop).
    Failed {
        msg: String,
        retryable: bool,
    },
}

/// Roots of trust: the system store (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`), or Mozilla's
/// bundled roots where the system has none. Loaded once per process.
fn root_certs() -> RootCerts {
    static ROOTS: OnceLock<RootCerts> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let certs: Vec<Certificate<'static>> = found
                .certs
                .iter()
                .map(|der| Certificate::from_der(der.as_ref()).to_owned())
                .collect();
            if certs.is_empty() {
                RootCerts::WebPki
            } else {
                RootCerts::Specific(Arc::new(certs))
            }
        })
        .clone()
}

pub fn agent(config: HttpConfig) -> Agent {
    let tls = TlsConfig::builder().root_certs(root_certs()).build();
    Agent::config_builder()
        // Statuses are decisions for the caller (206, 416, 5xx ...), not errors.
        .http_status_as_error(false)
        .timeout_resolve(Some(config.connect_timeout))
        .timeout_connect(Some(config.connect_timeout))
        .timeout_send_request(Some(config.connect_timeout))
        .timeout_recv_response(Some(config.read_timeout))
        .timeout_per_read(Some(config.read_timeout))
        .max_redirects(10)
        .user_agent(concat!("clipfast/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        // ureq's default: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, with NO_PROXY.
        .proxy(ureq::Proxy::try_from_env())
        .build()
        .into()
}

/// A `Range` request from `offset`, guarded by `If-Range`.
pub struct RangeFrom {
    pub offset: u64,
    pub if_range: String,
}

/// Starts `GET url` on a worker thread; the events arrive on the returned channel.
pub fn start(agent: Agent, url: String, range: Option<RangeFrom>) -> Receiver<Event> {
    let (tx, rx) = sync_channel(QUEUE);
    thread::spawn(move || exchange(&agent, &url, range, &tx));
    rx
}

fn exchange(agent: &Agent, url: &str, range: Option<RangeFrom>, tx: &SyncSender<Event>) {
    // Bytes as they are on the server: a compressed body would neither hash nor resume.
    let mut request = agent.get(url).header("Accept-Encoding", "identity");
    if let Some(range) = &range {
        request = request
            .header("Range", format!("bytes={}-", range.offset))
            .header("If-Range", &range.if_range);
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(err) => {
            let retryable = is_retryable(&err);
            let _ = tx.send(Event::Failed {
                msg: describe(&err),
                retryable,
            });
            return;
        }
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let head = Head {
        status: response.status().as_u16(),
        content_length: header("content-length").and_then(|v| v.trim().parse().ok()),
        content_range: header("content-range"),
        content_encoding: header("content-encoding"),
        etag: header("etag"),
        last_modified: header("last-modified"),
        retry_after: header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
    };
    let wants_body = head.status == 200 || head.status == 206;
    if tx.send(Event::Head(head)).is_err() || !wants_body {
        return;
    }
    let mut reader = response.into_body().into_reader();
    loop {
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        // Fill most of the buffer before handing it over: fewer, larger writes and hash calls.
        let end = loop {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break true,
                Ok(n) => {
                    filled += n;
                    if filled >= CHUNK / 4 {
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if filled > 0 {
                        buf.truncate(filled);
                        let _ = tx.send(Event::Chunk(buf));
                    }
                    let _ = tx.send(Event::Failed {
                        msg: describe_io(&e),
                        retryable: true,
                    });
                    return;
                }
            }
        };
        if filled > 0 {
            buf.truncate(filled);
            if tx.send(Event::Chunk(buf)).is_err() {
                return;
            }
        }
        if end {
            let _ = tx.send(Event::End);
            return;
        }
    }
}

fn is_retryable(err: &ureq::Error) -> bool {
    !matches!(
        err,
        ureq::Error::BadUri(_)
            | ureq::Error::Http(_)
            | ureq::Error::TooManyRedirects
            | ureq::Error::RedirectFailed
            | ureq::Error::InvalidProxyUrl
            | ureq::Error::Tls(_)
            | ureq::Error::Rustls(_)
            | ureq::Error::RequireHttpsOnly(_)
            | ureq::Error::TlsRequired
    )
}

fn describe(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Timeout(which) => format!("timed out ({which})"),
        ureq::Error::Io(e) => describe_io(e),
        other => other.to_string(),
    }
}

fn describe_io(err: &std::io::Error) -> String {
    match err.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => format!("read timed out ({err})"),
        _ => err.to_string(),
    }
}
