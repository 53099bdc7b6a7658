//! One HTTP exchange on a worker thread, reported as a stream of events.
//!
//! The request and every body read block (up to the timeouts); running them on their own thread
//! lets the caller look for Ctrl-C and report progress every few milliseconds whatever the
//! network does. When the caller stops listening, the worker ends at its next event.

use std::cell::RefCell;
use std::io::{ErrorKind, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport,
};
use ureq::Agent;

/// The most one body read asks for.
const READ_BUFFER: usize = 256 << 10;
/// Chunks in flight between the two threads (bounds memory to a few MiB).
const QUEUE: usize = 32;

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

impl Head {
    /// The head of a response with `status`, reading headers (by lower-case name) with `header`:
    /// a pure function, so that it can be fuzzed without a server. Values that do not parse
    /// (a Content-Length that is no number, a Retry-After date) count as absent.
    pub fn parse<'a>(status: u16, header: impl Fn(&str) -> Option<&'a str>) -> Head {
        let text = |name: &str| header(name).map(str::to_string);
        let number = |name: &str| {
            let value = header(name)?.trim();
            // Digits only: Rust's parser would also take a leading '+'.
            value
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| value.parse().ok())?
        };
        Head {
            status,
            content_length: number("content-length"),
            content_range: text("content-range"),
            content_encoding: text("content-encoding"),
            etag: text("etag"),
            last_modified: text("last-modified"),
            retry_after: number("retry-after").map(Duration::from_secs),
        }
    }
}

#[derive(Debug)]
pub enum Event {
    Head(Head),
    Chunk(Vec<u8>),
    /// The body ended where the reader found no more bytes. `cut`: why the connection ended
    /// without a clean close (reset, or TLS without close_notify), where it did: a body without a
    /// length then ends there all the same (see [`NoteCuts`]), so it may be cut short.
    End {
        cut: Option<String>,
    },
    /// The exchange failed.
    Failed {
        msg: String,
        kind: FailKind,
    },
}

/// What a failed exchange says about trying again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// Trying again cannot help (bad URL, TLS certificate refused, redirect loop).
    Fatal,
    /// The host name does not resolve, or the host refused the connection or has no route: what a
    /// machine without network access sees at once. Waiting rarely helps; one quick retry covers
    /// a passing hiccup.
    Unreachable,
    /// A timeout or a dropped connection: retried with backoff.
    Transient,
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

/// The system's resolver, except that names under `.invalid` fail at once without a query, as
/// RFC 6761 (section 6.4) asks of resolver libraries (glibc sends them to the DNS server).
#[derive(Debug, Default)]
struct SpecialNames(DefaultResolver);

impl Resolver for SpecialNames {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        if uri.host().is_some_and(is_invalid_name) {
            return Err(ureq::Error::HostNotFound);
        }
        self.0.resolve(uri, config, timeout)
    }
}

/// `invalid`, `x.invalid`, `X.Invalid.` ...
fn is_invalid_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let tail = host.len().saturating_sub(".invalid".len());
    host.eq_ignore_ascii_case("invalid")
        || (host.is_char_boundary(tail) && host[tail..].eq_ignore_ascii_case(".invalid"))
}

/// The proxy curl uses for `url`, from the environment: for `https` URLs `https_proxy` (or
/// `HTTPS_PROXY`), for `http` URLs `http_proxy` only (curl ignores an upper-case `HTTP_PROXY`, which
/// a CGI program gets from a request's `Proxy:` header), then `all_proxy` / `ALL_PROXY`; none when
/// `NO_PROXY` / `no_proxy` names the host. (ureq's `Proxy::try_from_env` takes the first of
/// `ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY` set, whatever the URL's scheme.) Returns the proxy and
/// the variable it came from.
pub(crate) fn proxy_for(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Option<(String, String)> {
    let uri = url.parse::<Uri>().ok()?;
    let names: &[&str] = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => {
            &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
        }
        _ => &["http_proxy", "all_proxy", "ALL_PROXY"],
    };
    let (name, value) = names.iter().find_map(|name| {
        let value = env(name)?;
        let value = value.trim();
        (!value.is_empty()).then(|| (name.to_string(), value.to_string()))
    })?;
    let no_proxy = env("no_proxy")
        .or_else(|| env("NO_PROXY"))
        .unwrap_or_default();
    if no_proxy_matches(&no_proxy, uri.host().unwrap_or("")) {
        return None;
    }
    Some((value, name))
}

/// curl's `NO_PROXY`: comma-separated names, each matching the host and its subdomains (a leading
/// `.` or `*.` is ignored), `*` matching every host; case-insensitive.
fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    list.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry.strip_prefix("*.").unwrap_or(entry);
        let entry = entry.strip_prefix('.').unwrap_or(entry);
        let entry = entry.trim_start_matches('[').trim_end_matches(']');
        let entry = entry
            .strip_suffix('.')
            .unwrap_or(entry)
            .to_ascii_lowercase();
        !entry.is_empty()
            && (host == entry
                || (host.len() > entry.len()
                    && host.ends_with(&entry)
                    && host.as_bytes()[host.len() - entry.len() - 1] == b'.'))
    })
}

thread_local! {
    /// Why the last connection this thread read from ended without a clean close, until taken.
    /// Each exchange runs on a thread of its own, and ureq reads on the calling thread.
    static CUT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Takes (and clears) what [`CUT`] holds for this thread.
fn take_cut() -> Option<String> {
    CUT.with(|cut| cut.borrow_mut().take())
}

/// Wraps every connection ureq opens in [`Noted`]. ureq ends a body at a reset connection (or a
/// TLS stream closed without close_notify) as at a clean close; for a body with no length
/// (close-delimited) nothing else tells a cut transfer from a whole one, so the download asks.
#[derive(Debug)]
struct NoteCuts;

impl Connector<Box<dyn Transport>> for NoteCuts {
    type Out = Noted;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Noted>, ureq::Error> {
        Ok(chained.map(Noted))
    }
}

/// A connection that notes in [`CUT`] the reads that found it reset or closed uncleanly.
#[derive(Debug)]
struct Noted(Box<dyn Transport>);

impl Transport for Noted {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.0.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.0.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let result = self.0.await_input(timeout);
        if let Err(ureq::Error::Io(err)) = &result {
            // The kinds ureq takes for the end of a body without a length.
            if matches!(
                err.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
            ) {
                let why = describe_io(err);
                CUT.with(|cut| *cut.borrow_mut() = Some(why));
            }
        }
        result
    }

    fn is_open(&mut self) -> bool {
        self.0.is_open()
    }

    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
}

/// An agent for `url`: its proxy (see [`proxy_for`]) is chosen once, for the URL asked for.
pub fn agent(config: HttpConfig, url: &str) -> Agent {
    let proxy = proxy_for(url, |name| std::env::var(name).ok())
        .and_then(|(value, _)| ureq::Proxy::new(&value).ok());
    let tls = TlsConfig::builder().root_certs(root_certs()).build();
    let config = Agent::config_builder()
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
        .proxy(proxy)
        .build();
    let connector = DefaultConnector::new().chain(NoteCuts);
    Agent::with_parts(config, connector, SpecialNames::default())
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
            let kind = classify(&err);
            let mut msg = describe(&err);
            if kind == FailKind::Unreachable {
                msg = match agent.config().proxy() {
                    // Through a proxy, what cannot be reached is the proxy.
                    Some(proxy) => format!(
                        "cannot reach the proxy {}:{} (from {}): {msg}",
                        proxy.host(),
                        proxy.port(),
                        proxy_for(url, |name| std::env::var(name).ok())
                            .map(|(_, name)| name)
                            .unwrap_or_else(|| "the environment".into())
                    ),
                    None => {
                        let host = url.parse::<Uri>().ok();
                        let host = host.as_ref().and_then(Uri::host).unwrap_or("the host");
                        format!("cannot reach {host}: {msg}")
                    }
                };
            }
            let _ = tx.send(Event::Failed { msg, kind });
            return;
        }
    };
    let head = Head::parse(response.status().as_u16(), |name| {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    });
    let wants_body = head.status == 200 || head.status == 206;
    if tx.send(Event::Head(head)).is_err() || !wants_body {
        return;
    }
    let mut reader = response.into_body().into_reader();
    // Each read is handed over at once (a slow server's few bytes show in the progress at once);
    // the writer batches them into large writes.
    let mut buf = vec![0u8; READ_BUFFER];
    take_cut(); // only the reads of this body count
    loop {
        match reader.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Event::End { cut: take_cut() });
                return;
            }
            Ok(n) => {
                if tx.send(Event::Chunk(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Event::Failed {
                    msg: describe_io(&e),
                    kind: FailKind::Transient,
                });
                return;
            }
        }
    }
}

fn classify(err: &ureq::Error) -> FailKind {
    match err {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => FailKind::Unreachable,
        ureq::Error::Io(e) => match e.kind() {
            // rustls reports a refused certificate or a failed handshake as InvalidData: trying
            // again cannot help (a dropped or reset connection has other kinds).
            ErrorKind::InvalidData => FailKind::Fatal,
            ErrorKind::ConnectionRefused
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::NetworkDown
            | ErrorKind::AddrNotAvailable => FailKind::Unreachable,
            _ if is_lookup_failure(e) => FailKind::Unreachable,
            _ => FailKind::Transient,
        },
        ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::TooManyRedirects
        | ureq::Error::RedirectFailed
        | ureq::Error::InvalidProxyUrl
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::TlsRequired => FailKind::Fatal,
        _ => FailKind::Transient,
    }
}

/// A name that did not resolve: the standard library reports `getaddrinfo`'s failures (no such
/// name, no answer from the resolver) as an uncategorized error with this message; a resolver
/// that answers nothing in time is a timeout instead (retried).
fn is_lookup_failure(err: &std::io::Error) -> bool {
    err.to_string()
        .starts_with("failed to lookup address information")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names() {
        for name in ["invalid", "x.invalid", "a.b.INVALID", "x.invalid."] {
            assert!(is_invalid_name(name), "{name}");
        }
        for name in [
            "invalid.com",
            "xinvalid",
            "example.org",
            "127.0.0.1",
            "[::1]",
            "é.invalidé",
        ] {
            assert!(!is_invalid_name(name), "{name}");
        }
    }

    #[test]
    fn proxies_as_curl_reads_them() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let got = |url: &str, vars: &'static [(&'static str, &'static str)]| {
            proxy_for(url, env(vars)).map(|(_, name)| name)
        };
        let https = "https://example.org/x";
        let http = "http://example.org/x";
        // Each scheme its own variable; upper-case HTTP_PROXY is never read.
        assert_eq!(
            got(https, &[("HTTP_PROXY", "p:1"), ("http_proxy", "p:1")]),
            None
        );
        assert_eq!(got(http, &[("HTTPS_PROXY", "p:1")]), None);
        assert_eq!(got(http, &[("HTTP_PROXY", "p:1")]), None);
        assert_eq!(
            got(http, &[("http_proxy", "p:1")]).as_deref(),
            Some("http_proxy")
        );
        assert_eq!(
            got(https, &[("HTTPS_PROXY", "p:1")]).as_deref(),
            Some("HTTPS_PROXY")
        );
        assert_eq!(
            got(https, &[("ALL_PROXY", "a:1"), ("https_proxy", "p:1")]).as_deref(),
            Some("https_proxy")
        );
        assert_eq!(
            got(http, &[("ALL_PROXY", "a:1")]).as_deref(),
            Some("ALL_PROXY")
        );
        assert_eq!(got(http, &[("http_proxy", "  ")]), None);
        // NO_PROXY: the host and its subdomains, `.x` and `*.x` alike, `*` for all.
        for list in [
            "example.org",
            ".example.org",
            "*.example.org",
            "a, EXAMPLE.org",
            "*",
        ] {
            let vars: &'static [(&'static str, &'static str)] =
                Box::leak(vec![("https_proxy", "p:1"), ("NO_PROXY", list)].into_boxed_slice());
            assert_eq!(got(https, vars), None, "{list}");
            assert_eq!(got("https://cdn.example.org/x", vars), None, "{list}");
        }
        assert!(got(
            "https://notexample.org/x",
            &[("https_proxy", "p:1"), ("no_proxy", "example.org")]
        )
        .is_some());
        assert!(!no_proxy_matches("", "example.org"));
        assert!(no_proxy_matches("::1", "[::1]"));
    }

    #[test]
    fn failures_are_classified() {
        use std::io::Error as IoError;
        let io = |kind: ErrorKind| ureq::Error::Io(IoError::new(kind, "x"));
        assert_eq!(classify(&ureq::Error::HostNotFound), FailKind::Unreachable);
        assert_eq!(
            classify(&io(ErrorKind::ConnectionRefused)),
            FailKind::Unreachable
        );
        assert_eq!(
            classify(&io(ErrorKind::NetworkUnreachable)),
            FailKind::Unreachable
        );
        assert_eq!(
            classify(&io(ErrorKind::ConnectionReset)),
            FailKind::Transient
        );
        assert_eq!(classify(&io(ErrorKind::InvalidData)), FailKind::Fatal);
        assert_eq!(
            classify(&ureq::Error::Timeout(ureq::Timeout::Connect)),
            FailKind::Transient
        );
        // What the standard library reports for a name getaddrinfo cannot resolve (its message;
        // not produced by a real lookup here, which would send a query to the DNS server).
        let lookup =
            IoError::other("failed to lookup address information: Name or service not known");
        assert_eq!(classify(&ureq::Error::Io(lookup)), FailKind::Unreachable);
    }
}
