//! The HTTP layer under fetch: one `ureq` agent with automatic redirects OFF, so each hop's
//! headers stay readable (the Hub puts `X-Linked-Etag` / `X-Linked-Size` on the 302 of an
//! LFS file, not on the CDN's answer) and so the token never follows a redirect to another
//! origin; status codes mapped to errors that say what to do; bounded retries with
//! exponential backoff for what a retry can fix (no connection, a dropped transfer, 5xx, 429).
//! TLS trusts the machine's CA certificates, as curl and pip do ([`root_certs`]).

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use ureq::http::{HeaderMap, Response};
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use super::Error;

/// How hard to try. `Policy::default()` is for people; tests shrink the waits to
/// milliseconds.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Tries per request (and per file transfer, each resuming where the last one stopped).
    pub attempts: u32,
    /// Wait before the second try; doubled after each further failure.
    pub backoff: Duration,
    /// Longest wait between tries.
    pub backoff_max: Duration,
    /// Limit for opening a connection (DNS, TCP, TLS).
    pub connect_timeout: Duration,
    /// Limit for one read from the socket, so a stalled transfer fails and resumes.
    pub read_timeout: Duration,
    /// Draw progress bars (on a terminal only; indicatif hides them otherwise).
    pub progress: bool,
    /// Bounds for unpacking archives.
    pub unzip: super::unzip::UnzipLimits,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempts: 5,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
            progress: true,
            unzip: super::unzip::UnzipLimits::default(),
        }
    }
}

impl Policy {
    /// Wait after failed try number `attempt` (1-based).
    fn delay(&self, attempt: u32) -> Duration {
        crate::util::backoff_delay(self.backoff, self.backoff_max, attempt.saturating_sub(1))
    }
}

/// A Hub token. Its `Debug` never shows the value, so no log or error can leak it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(value: String) -> Option<Token> {
        let value = value.trim().to_string();
        (!value.is_empty()).then_some(Token(value))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
}

/// The agent, the token and the one origin the token may be sent to.
pub(crate) struct Client {
    agent: ureq::Agent,
    token: Option<Token>,
    token_origin: String,
    pub(crate) policy: Policy,
}

impl Client {
    pub(crate) fn new(token: Option<Token>, token_origin: &str, policy: Policy) -> Client {
        let config = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            // Byte ranges and sizes refer to the stored bytes: no transparent gzip.
            .accept_encoding("identity")
            .user_agent(concat!("vlguard-ort/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(policy.connect_timeout))
            .timeout_per_read(Some(policy.read_timeout))
            .tls_config(TlsConfig::builder().root_certs(root_certs()).build())
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            token,
            token_origin: origin(token_origin).to_string(),
            policy,
        }
    }

    /// Whether `url` is on the Hub's own origin (where the token goes).
    pub(crate) fn is_hub(&self, url: &str) -> bool {
        origin(url) == self.token_origin
    }

    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// One request, one hop (no redirect followed). The token goes only to the Hub's own
    /// origin, like `requests` drops `Authorization` when a redirect changes host.
    /// An error here means no answer came back at all: the host could not be reached.
    pub(crate) fn send(
        &self,
        method: Method,
        url: &str,
        range_from: Option<u64>,
    ) -> Result<Response<ureq::Body>, Error> {
        self.request(method, url, range_from, None)
    }

    /// [`Client::send`] with an `Accept` header when one is given.
    fn request(
        &self,
        method: Method,
        url: &str,
        range_from: Option<u64>,
        accept: Option<&str>,
    ) -> Result<Response<ureq::Body>, Error> {
        let mut req = match method {
            Method::Get => self.agent.get(url),
            Method::Head => self.agent.head(url),
        };
        if let Some(token) = &self.token {
            if self.is_hub(url) {
                req = req.header("Authorization", format!("Bearer {}", token.0));
            }
        }
        if let Some(from) = range_from {
            req = req.header("Range", format!("bytes={from}-"));
        }
        if let Some(accept) = accept {
            req = req.header("Accept", accept);
        }
        req.call().map_err(|e| match e {
            // An answer came, but not one HTTP allows (`Content-Length: -5`): the server,
            // not the network, is at fault, and no retry changes it.
            ureq::Error::Protocol(_) | ureq::Error::Http(_) => Error::BadResponse {
                url: url.to_string(),
                what: format!("the server's reply is not valid HTTP ({e})"),
            },
            e => Error::Unreachable {
                host: host_of(url).to_string(),
                detail: e.to_string(),
                attempts: 1,
                via: super::VIA_ENDPOINT,
            },
        })
    }

    /// GET (or HEAD) following every redirect, for small documents: API answers and the
    /// reference answers. Returns the final URL and response; statuses are not judged.
    pub(crate) fn send_following(
        &self,
        method: Method,
        url: &str,
    ) -> Result<(String, Response<ureq::Body>), Error> {
        self.follow(method, url, None)
    }

    /// [`Client::send_following`] asking for one of the media types in `accept` (content
    /// negotiation, e.g. a package index's JSON or HTML page), on every hop.
    pub(crate) fn get_accepting(
        &self,
        url: &str,
        accept: &str,
    ) -> Result<(String, Response<ureq::Body>), Error> {
        self.follow(Method::Get, url, Some(accept))
    }

    fn follow(
        &self,
        method: Method,
        url: &str,
        accept: Option<&str>,
    ) -> Result<(String, Response<ureq::Body>), Error> {
        let mut url = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let resp = self.request(method, &url, None, accept)?;
            match redirect_target(&url, &resp) {
                Some(next) => url = next,
                None => return Ok((url, resp)),
            }
        }
        Err(Error::BadResponse {
            url,
            what: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Runs `op` until it succeeds, fails for good, or the tries run out; waits between
    /// tries by the policy. `op` gets the try number (1-based).
    pub(crate) fn with_retries<T>(
        &self,
        mut op: impl FnMut(u32) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let attempts = self.policy.attempts.max(1);
        let mut attempt = 1;
        loop {
            match op(attempt) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < attempts => {
                    let delay = self.policy.delay(attempt);
                    eprintln!("{}", retry_line(attempt, attempts, &e, delay));
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                Err(e) => return Err(e.with_attempts(attempt)),
            }
        }
    }
}

/// The CA certificates TLS trusts: the machine's (`SSL_CERT_FILE` / `SSL_CERT_DIR`, else
/// the system bundle), so a TLS-inspecting proxy's or an in-house index's CA works as it
/// does for curl and pip; Mozilla's roots, built in, where the machine has none (a minimal
/// container without ca-certificates). Read once per process.
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
                RootCerts::from(certs)
            }
        })
        .clone()
}

pub(crate) const MAX_REDIRECTS: usize = 10;

/// Where a 3xx answer points, resolved against the request URL; `None` for other answers.
pub(crate) fn redirect_target(url: &str, resp: &Response<ureq::Body>) -> Option<String> {
    if !resp.status().is_redirection() {
        return None;
    }
    let location = header(resp.headers(), "location")?;
    Some(resolve(url, location))
}

/// Resolves a `Location` value against the URL it came from.
pub(crate) fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let joined = if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("https");
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let path_end = base.find(['?', '#']).unwrap_or(base.len());
        let dir_end = base[..path_end]
            .rfind('/')
            .filter(|&i| i >= origin(base).len())
            .map_or(path_end, |i| i + 1);
        let sep = if dir_end == origin(base).len() {
            "/"
        } else {
            ""
        };
        format!("{}{sep}{location}", &base[..dir_end])
    };
    remove_dot_segments(joined)
}

/// `a/./b/../c` as `a/c` in a URL's path (RFC 3986 section 5.2.4), as package indexes'
/// relative links (`../../packages/...`) need.
fn remove_dot_segments(url: String) -> String {
    let start = origin(&url).len();
    let end = url[start..]
        .find(['?', '#'])
        .map_or(url.len(), |i| start + i);
    let segments: Vec<&str> = url[start..end].split('/').collect();
    if !segments.iter().any(|s| *s == "." || *s == "..") {
        return url;
    }
    let mut out: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate().skip(1) {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
        if last && (*segment == "." || *segment == "..") {
            out.push("");
        }
    }
    format!("{}/{}{}", &url[..start], out.join("/"), &url[end..])
}

/// `scheme://host[:port]` of a URL.
pub(crate) fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// `host[:port]` of a URL, for messages.
pub(crate) fn host_of(url: &str) -> &str {
    let o = origin(url);
    o.find("://").map_or(o, |i| &o[i + 3..])
}

/// A header as text (first value), `None` when absent or not visible ASCII.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What the server said about a failure: the Hub's `X-Error-Code` / `X-Error-Message`
/// headers, else the start of the body.
pub(crate) fn server_message(resp: &mut Response<ureq::Body>) -> String {
    let code = header(resp.headers(), "x-error-code").map(str::to_string);
    let message = header(resp.headers(), "x-error-message").map(str::to_string);
    let text = match (code, message) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        (None, Some(m)) => m,
        (None, None) => resp
            .body_mut()
            .with_config()
            .limit(4096)
            .lossy_utf8(true)
            .read_to_string()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect::<String>()
            .trim()
            .to_string(),
    };
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

/// Turns a non-success status into the error a user can act on.
pub(crate) fn status_error(client: &Client, url: &str, resp: &mut Response<ureq::Body>) -> Error {
    let status = resp.status().as_u16();
    let server = server_message(resp);
    match status {
        401 | 403 => Error::Denied {
            url: url.to_string(),
            status,
            server,
            token_set: client.has_token(),
        },
        404 => Error::NotFound {
            url: url.to_string(),
            server,
        },
        _ => Error::Status {
            url: url.to_string(),
            status,
            server,
        },
    }
}

/// The line printed when try `attempt` of `attempts` failed with `err` and the next one
/// follows after `delay`.
fn retry_line(attempt: u32, attempts: u32, err: &Error, delay: Duration) -> String {
    format!(
        "fetch: try {attempt} of {attempts} failed: {}; try {} of {attempts} in {delay:?}",
        err.brief(),
        attempt + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_lines_count_tries_from_one() {
        let err = Error::Unreachable {
            host: "127.0.0.1:9".into(),
            detail: "io: Connection refused (os error 111)".into(),
            attempts: 1,
            via: super::super::VIA_ENDPOINT,
        };
        assert_eq!(
            retry_line(1, 5, &err, Duration::from_secs(2)),
            "fetch: try 1 of 5 failed: cannot reach 127.0.0.1:9 (io: Connection refused (os error 111)); try 2 of 5 in 2s"
        );
        let err = Error::Transfer {
            url: "http://h/x".into(),
            detail: "timeout".into(),
            attempts: 1,
        };
        assert_eq!(
            retry_line(4, 5, &err, Duration::from_millis(1500)),
            "fetch: try 4 of 5 failed: http://h/x: transfer failed (timeout); try 5 of 5 in 1.5s"
        );
        // The final error counts every try, "1 try" in the singular.
        assert!(err
            .with_attempts(1)
            .to_string()
            .contains("transfer failed after 1 try (timeout)"));
    }

    #[test]
    fn resolves_locations_like_a_browser() {
        // Expected values: RFC 3986 section 5.4 reference resolution, by hand.
        let base = "http://127.0.0.1:8080/datasets/a/b/resolve/main/test.zip";
        assert_eq!(resolve(base, "https://cdn.x/y?z=1"), "https://cdn.x/y?z=1");
        assert_eq!(
            resolve(base, "/api/x"),
            "http://127.0.0.1:8080/api/x".to_string()
        );
        assert_eq!(resolve(base, "//cdn.x/y"), "http://cdn.x/y");
        assert_eq!(
            resolve(base, "other.zip"),
            "http://127.0.0.1:8080/datasets/a/b/resolve/main/other.zip"
        );
        assert_eq!(resolve("http://h:1", "x"), "http://h:1/x");
        let rfc = "http://a/b/c/d;p?q";
        assert_eq!(resolve(rfc, "../../g"), "http://a/g");
        assert_eq!(resolve(rfc, "./g"), "http://a/b/c/g");
        assert_eq!(resolve(rfc, ".."), "http://a/b/");
        assert_eq!(resolve(rfc, "/./g"), "http://a/g");
        assert_eq!(resolve(rfc, "../../../g"), "http://a/g");
        assert_eq!(
            resolve("https://i/simple/pkg/", "../../packages/x.whl#sha256=ab"),
            "https://i/packages/x.whl#sha256=ab"
        );
        assert_eq!(
            origin("https://huggingface.co/api/models"),
            "https://huggingface.co"
        );
        assert_eq!(host_of("http://127.0.0.1:9/x?y"), "127.0.0.1:9");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = Policy {
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            ..Policy::default()
        };
        let waits: Vec<u128> = (1..=4).map(|a| policy.delay(a).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 350, 350]);
    }

    #[test]
    fn token_debug_is_redacted() {
        let token = Token::new("hf_secret123".into()).expect("non-empty");
        assert!(!format!("{token:?}").contains("secret"));
        assert!(Token::new("  ".into()).is_none());
    }

    /// Issue 24 (minor): a reply with `Content-Length: -5` is the server's fault, named
    /// as such, not "cannot reach ... check the network".
    #[test]
    fn a_reply_that_is_not_valid_http_is_a_bad_response() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/f", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n");
        });
        let client = Client::new(None, &url, Policy::default());
        let err = client.send(Method::Head, &url, None).unwrap_err();
        assert!(matches!(err, Error::BadResponse { .. }), "{err:?}");
        assert!(err.to_string().contains("not valid HTTP"), "{err}");
    }
}
