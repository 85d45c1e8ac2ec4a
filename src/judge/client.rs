//! One chat-completions call with the retry policy around it.
//!
//! Input: a ready request body (JSON text). Output: an [`Answer`] — the reply text, a
//! content-policy refusal, or an error after bounded retries — or a [`Fatal`] condition
//! that makes every further request pointless (bad key, wrong URL, exhausted quota).
//!
//! Policy (the reference sleeps 30 min then 1 h on a 429 and retries everything else
//! forever; this keeps its outcomes but bounds the waits):
//! - 429: wait what `retry-after-ms` / `Retry-After` (seconds or HTTP date) says, or the
//!   same two headers with LiteLLM's `llm_provider-` prefix (the upstream provider's hint a
//!   LiteLLM proxy passes on), else the exponential backoff (`util::backoff_delay`, shared
//!   with fetch); never longer than `backoff_max`. `insufficient_quota` is fatal.
//! - 5xx, 408, 409, connection errors, timeouts, a 2xx whose body is not a chat completion:
//!   retried with exponential backoff `backoff_base * 2^k`, capped at `backoff_max`.
//! - After `max_retries` retries the item is recorded as an error (never as a loss).
//! - A body whose `error.code` is `content_policy_violation` (any status but 429, as the
//!   reference checks it) is a content-policy verdict.
//! - 401, 403, 404 are fatal; any other 4xx is an error for that item, not retried.
//! - No redirect is followed: a 301/302/303 would turn the POST into a GET to wherever it
//!   points (whose answer was once taken as the verdict), and a 307/308 would resend the
//!   prompt and image elsewhere. A 3xx is an error for that request naming the target (so
//!   `--stop-after` 3xx in a row stop the run): point `--base-url` at the final address.
//! - A request that ends in a failure no retry fixes carries a [`DeadEnd`]: a 4xx
//!   (above), or no connection on every try (refused, unknown host). The caller decides
//!   when a run of them stops the whole run.
//!
//! The API key is sent only in the `Authorization` header; every message this module
//! produces passes through [`ApiKey::redact`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A secret that prints as `<redacted>` and can scrub itself out of any text, along with
/// any other secret the run holds (a password in `--base-url`).
#[derive(Clone)]
pub struct ApiKey {
    key: String,
    others: Vec<String>,
}

impl ApiKey {
    pub fn new(key: String) -> Self {
        Self {
            key,
            others: Vec::new(),
        }
    }

    /// The same key, also scrubbing `secret` (the password of `http://user:PASS@host`)
    /// out of every message and file.
    pub fn also_hiding(mut self, secret: &str) -> Self {
        if !secret.is_empty() {
            self.others.push(secret.to_string());
        }
        self
    }

    /// `text` with every occurrence of the key (and the other secrets) replaced by
    /// `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in std::iter::once(&self.key).chain(&self.others) {
            if !secret.is_empty() {
                text = text.replace(secret.as_str(), "<redacted>");
            }
        }
        text
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }
}

/// The password of a URL's `user:password@` part, if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, password)| password)
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt before the item is recorded as an error.
    pub max_retries: u32,
    /// First backoff delay; doubles with each retry.
    pub backoff_base: Duration,
    /// No wait (backoff or Retry-After) is ever longer than this.
    pub backoff_max: Duration,
    /// Whole-request timeout (connect, send, receive).
    pub timeout: Duration,
}

impl RetryPolicy {
    /// Delay before retry number `retry` (0-based): `server_hint` when the server gave one,
    /// else `backoff_base * 2^retry`; both capped at `backoff_max`.
    pub fn delay(&self, retry: u32, server_hint: Option<Duration>) -> Duration {
        let backoff = crate::util::backoff_delay(self.backoff_base, self.backoff_max, retry);
        server_hint.map_or(backoff, |hint| hint.min(self.backoff_max))
    }
}

/// Token counts from a reply's `usage` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// How one item's request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `choices[0].message.content`, verbatim (`None` when the API sent `null`).
    Reply {
        content: Option<String>,
        usage: Option<Usage>,
    },
    /// The API refused with `content_policy_violation`.
    ContentPolicy { message: String },
    /// No verdict: retries exhausted or a non-retryable client error.
    Error { message: String },
}

/// A condition that stops the whole run: every other request would meet it too. Its
/// texts carry the server's message with the API key redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// `--base-url` does not make a URL.
    #[error("bad base URL: {uri}")]
    BadUrl { uri: String },
    /// HTTP 429 `insufficient_quota`: the account has no quota left.
    #[error("HTTP 429 insufficient_quota: {message}")]
    NoQuota { message: String },
    /// HTTP 401, 403 or 404: the key, its permissions or the endpoint is refused.
    #[error("HTTP {status}: {message}")]
    Refused { status: u16, message: String },
}

impl Fatal {
    /// The same condition with `key` redacted from the texts it quotes.
    fn redacted(self, key: &ApiKey) -> Fatal {
        match self {
            Fatal::BadUrl { uri } => Fatal::BadUrl {
                uri: key.redact(&uri),
            },
            Fatal::NoQuota { message } => Fatal::NoQuota {
                message: key.redact(&message),
            },
            Fatal::Refused { status, message } => Fatal::Refused {
                status,
                message: key.redact(&message),
            },
        }
    }
}

/// A failure that no retry fixes, met by a request that ended in [`Answer::Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadEnd {
    /// What failed, worded the same for every request that meets it
    /// (`HTTP 400: Invalid model name`, `cannot connect to URL: io: Connection refused`).
    pub failure: String,
    /// No try reached the server (refused, unknown host): nothing about the request can
    /// have caused it, so every other request will meet it too.
    pub before_the_server: bool,
}

/// The outcome of one call plus how many HTTP attempts it took.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub answer: Answer,
    pub attempts: u32,
    /// Set when the answer is an error that no retry fixes.
    pub dead_end: Option<DeadEnd>,
}

/// A blocking chat-completions client shared by the worker threads.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    key: ApiKey,
    policy: RetryPolicy,
}

enum Step {
    Done(Answer),
    /// A client error (4xx): an error for this request, not retried.
    Refused(String),
    Retry {
        reason: String,
        hint: Option<Duration>,
        /// No connection was made (refused, unknown host).
        no_connection: bool,
    },
    Fatal(Fatal),
}

impl Client {
    pub fn new(base_url: &str, key: ApiKey, policy: RetryPolicy) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(policy.timeout))
            .build();
        Self {
            agent: ureq::Agent::new_with_config(config),
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            key,
            policy,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `body` until it gets an answer, retries run out, or `stop` is raised (then
    /// the answer is an error saying so). Each failed try that will be retried prints one
    /// line naming `request` (the item and seat), so a long backoff is never silent.
    pub fn call(&self, request: &str, body: &str, stop: &AtomicBool) -> Result<CallResult, Fatal> {
        self.call_checked(request, body, stop, &|_| Ok(()))
    }

    /// [`Client::call`], where a reply's content must also pass `readable`: a reply it
    /// refuses (`Err(why)`) is retried like a malformed body, and after the last retry the
    /// answer is an error saying why, never the reply.
    pub fn call_checked(
        &self,
        request: &str,
        body: &str,
        stop: &AtomicBool,
        readable: &dyn Fn(Option<&str>) -> Result<(), String>,
    ) -> Result<CallResult, Fatal> {
        let mut retries = 0u32;
        // The failure every try so far has met when none reached the server.
        let mut unreached: Option<String> = None;
        loop {
            let attempts = retries + 1;
            let step = match self.attempt(body) {
                Step::Done(Answer::Reply { content, usage }) => {
                    match readable(content.as_deref()) {
                        Ok(()) => Step::Done(Answer::Reply { content, usage }),
                        Err(why) => Step::Retry {
                            reason: why,
                            hint: None,
                            no_connection: false,
                        },
                    }
                }
                step => step,
            };
            let (reason, hint) = match step {
                Step::Done(answer) => {
                    return Ok(CallResult {
                        answer,
                        attempts,
                        dead_end: None,
                    })
                }
                Step::Refused(message) => {
                    let message = self.key.redact(&message);
                    return Ok(CallResult {
                        answer: Answer::Error {
                            message: message.clone(),
                        },
                        attempts,
                        dead_end: Some(DeadEnd {
                            failure: message,
                            before_the_server: false,
                        }),
                    });
                }
                Step::Fatal(fatal) => return Err(fatal.redacted(&self.key)),
                Step::Retry {
                    reason,
                    hint,
                    no_connection,
                } => {
                    let same =
                        no_connection && (retries == 0 || unreached.as_ref() == Some(&reason));
                    unreached = same.then(|| reason.clone());
                    (reason, hint)
                }
            };
            if retries >= self.policy.max_retries {
                let message = self
                    .key
                    .redact(&format!("{reason} (gave up after {attempts} attempts)"));
                return Ok(CallResult {
                    answer: Answer::Error { message },
                    attempts,
                    dead_end: unreached.map(|failure| DeadEnd {
                        failure: self.key.redact(&failure),
                        before_the_server: true,
                    }),
                });
            }
            let delay = self.policy.delay(retries, hint);
            if !stop.load(Ordering::Relaxed) {
                let tries = self.policy.max_retries.saturating_add(1);
                let line = retry_line(request, attempts, tries, &reason, delay);
                let line = self.key.redact(&line);
                eprintln!("{}", crate::util::escape_controls(&line));
            }
            if !sleep_unless_stopped(delay, stop) {
                let message = self
                    .key
                    .redact(&format!("{reason} (run stopped before retrying)"));
                return Ok(CallResult {
                    answer: Answer::Error { message },
                    attempts,
                    dead_end: None,
                });
            }
            retries += 1;
        }
    }

    fn attempt(&self, body: &str) -> Step {
        let response = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Authorization", self.key.bearer())
            .send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(ureq::Error::BadUri(uri)) => return Step::Fatal(Fatal::BadUrl { uri }),
            Err(err) => {
                let no_connection = matches!(
                    &err,
                    ureq::Error::HostNotFound | ureq::Error::ConnectionFailed
                ) || matches!(&err, ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
                let reason = if no_connection {
                    format!("cannot connect to {}: {err}", self.url)
                } else {
                    format!("request to {} failed: {err}", self.url)
                };
                return Step::Retry {
                    reason,
                    hint: None,
                    no_connection,
                };
            }
        };
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            let target = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("nowhere (no Location header)");
            return Step::Refused(format!(
                "HTTP {status}: the endpoint redirects to {target}; a chat-completions POST is not followed (point --base-url at the final address)"
            ));
        }
        let hint = retry_after(response.headers(), SystemTime::now());
        let text = match response.body_mut().read_to_string() {
            Ok(t) => t,
            Err(err) => {
                return Step::Retry {
                    reason: format!("HTTP {status}: reading the body failed: {err}"),
                    hint: None,
                    no_connection: false,
                }
            }
        };
        classify(status, hint, &text)
    }
}

/// Decides what one HTTP response means.
fn classify(status: u16, hint: Option<Duration>, text: &str) -> Step {
    let json: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let error = json.as_ref().and_then(|j| j.get("error"));
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| snippet(text));
    if status == 429 {
        if code == "insufficient_quota" {
            return Step::Fatal(Fatal::NoQuota { message });
        }
        return Step::Retry {
            reason: format!("HTTP 429 rate limited: {message}"),
            hint,
            no_connection: false,
        };
    }
    if code == "content_policy_violation" {
        return Step::Done(Answer::ContentPolicy { message });
    }
    match status {
        200..=299 => match json.as_ref().and_then(parse_completion) {
            Some(answer) => Step::Done(answer),
            None => Step::Retry {
                reason: format!("HTTP {status} without a chat completion: {}", snippet(text)),
                hint: None,
                no_connection: false,
            },
        },
        401 | 403 | 404 => Step::Fatal(Fatal::Refused { status, message }),
        408 | 409 | 500..=599 => Step::Retry {
            reason: format!("HTTP {status}: {message}"),
            hint,
            no_connection: false,
        },
        _ => Step::Refused(format!("HTTP {status}: {message}")),
    }
}

/// `choices[0].message.content` (string or null) and `usage`; `None` when the shape is
/// not a chat completion.
fn parse_completion(json: &serde_json::Value) -> Option<Answer> {
    let message = json.get("choices")?.get(0)?.get("message")?;
    let content = match message.get("content")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        _ => return None,
    };
    let usage = json.get("usage").map(|u| {
        let n = |k: &str| u.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        Usage {
            prompt_tokens: n("prompt_tokens"),
            completion_tokens: n("completion_tokens"),
            total_tokens: n("total_tokens"),
        }
    });
    Some(Answer::Reply { content, usage })
}

/// The first 200 characters of a body, for messages.
fn snippet(text: &str) -> String {
    let mut s: String = text.chars().take(200).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// The line printed when try `attempt` of `tries` for `request` failed with `reason` and
/// the next one follows after `delay` (worded as fetch's retry line).
fn retry_line(request: &str, attempt: u32, tries: u32, reason: &str, delay: Duration) -> String {
    format!(
        "judge: {request}: try {attempt} of {tries} failed: {reason}; try {} of {tries} in {delay:?}",
        attempt + 1
    )
}

/// The server's wait hint: `retry-after-ms` (OpenAI), else `Retry-After` as seconds or an
/// HTTP date (RFC 9110 IMF-fixdate); then the same two under LiteLLM's `llm_provider-`
/// prefix (a LiteLLM proxy passes the upstream provider's headers on that way). The first
/// header present with a usable value wins; unparsable or negative values are skipped.
pub fn retry_after(headers: &ureq::http::HeaderMap, now: SystemTime) -> Option<Duration> {
    ["", "llm_provider-"].iter().find_map(|prefix| {
        let get = |name: &str| {
            headers
                .get(format!("{prefix}{name}").as_str())
                .and_then(|v| v.to_str().ok())
        };
        get("retry-after-ms")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
            .or_else(|| get("retry-after").and_then(|v| seconds_or_date(v.trim(), now)))
    })
}

/// A `Retry-After` value: seconds, or an HTTP date (a past date is no wait).
fn seconds_or_date(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = value.parse::<f64>() {
        // `try_`: a hostile `1e300` must not panic the worker (it is capped later anyway).
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Unix seconds of an HTTP date such as `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110's
/// IMF-fixdate, and the obsolete RFC 850 and asctime forms a server may still send).
pub fn parse_http_date(text: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// Sleeps `delay` in short slices; `false` when `stop` was raised meanwhile.
fn sleep_unless_stopped(delay: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + delay;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy();
        assert_eq!(p.delay(0, None), Duration::from_millis(500));
        assert_eq!(p.delay(3, None), Duration::from_secs(4));
        assert_eq!(p.delay(4, None), Duration::from_secs(5));
        assert_eq!(p.delay(40, None), Duration::from_secs(5));
        // The reference's 30-minute wait becomes the cap.
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(1800))),
            Duration::from_secs(5)
        );
        assert_eq!(
            p.delay(2, Some(Duration::from_millis(100))),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn http_dates() {
        // RFC 9110's example date; `date -u -d 'Sun, 06 Nov 1994 08:49:37 GMT' +%s`.
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        // `date -u -d '2024-02-29 23:59:59' +%s`
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 23:59:59 GMT"),
            Some(1_709_251_199)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        let mut h = ureq::http::HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert("retry-after", "-3".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(250)));
        // Values no Duration holds are skipped, not a panic.
        h.insert("retry-after-ms", "1e300".parse().unwrap());
        h.insert("retry-after", "NaN".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn litellm_provider_retry_after_forms() {
        // A LiteLLM proxy passes the upstream provider's headers on with this prefix.
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        let mut h = ureq::http::HeaderMap::new();
        h.insert("llm_provider-retry-after", "12".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(12)));
        h.insert(
            "llm_provider-retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert("llm_provider-retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
        // The proxy's own header comes first.
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_line_names_the_request_the_try_and_the_wait() {
        let line = retry_line(
            "img/a.png (original)",
            1,
            9,
            "cannot connect to http://127.0.0.1:9/v1/chat/completions: Connection refused",
            Duration::from_secs(2),
        );
        assert_eq!(
            line,
            "judge: img/a.png (original): try 1 of 9 failed: cannot connect to \
             http://127.0.0.1:9/v1/chat/completions: Connection refused; try 2 of 9 in 2s"
        );
    }

    #[test]
    fn classification() {
        let done = |s: Step| match s {
            Step::Done(a) => a,
            Step::Retry { reason, .. } => panic!("retry: {reason}"),
            Step::Fatal(m) => panic!("fatal: {m}"),
            Step::Refused(m) => panic!("refused: {m}"),
        };
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"m"}}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;
        assert_eq!(
            done(classify(200, None, ok)),
            Answer::Reply {
                content: Some("m".into()),
                usage: Some(Usage {
                    prompt_tokens: 9,
                    completion_tokens: 1,
                    total_tokens: 10
                })
            }
        );
        let policy = r#"{"error":{"message":"no","type":"invalid_request_error","code":"content_policy_violation"}}"#;
        assert_eq!(
            done(classify(400, None, policy)),
            Answer::ContentPolicy {
                message: "no".into()
            }
        );
        assert!(matches!(
            classify(200, None, "{not json"),
            Step::Retry { .. }
        ));
        assert!(matches!(classify(503, None, ""), Step::Retry { .. }));
        assert!(matches!(classify(429, None, "{}"), Step::Retry { .. }));
        assert!(matches!(
            classify(429, None, r#"{"error":{"code":"insufficient_quota"}}"#),
            Step::Fatal(Fatal::NoQuota { .. })
        ));
        assert!(matches!(
            classify(401, None, "{}"),
            Step::Fatal(Fatal::Refused { status: 401, .. })
        ));
        assert!(matches!(
            classify(400, None, r#"{"error":{"message":"bad"}}"#),
            Step::Refused(m) if m == "HTTP 400: bad"
        ));
    }

    #[test]
    fn fatal_conditions_are_typed_and_read_as_before_with_the_key_redacted() {
        let key = ApiKey::new("sk-secret".into());
        let refused = r#"{"error":{"message":"Incorrect API key provided: sk-secret"}}"#;
        let Step::Fatal(fatal) = classify(401, None, refused) else {
            panic!("401 is fatal");
        };
        assert_eq!(
            fatal.redacted(&key).to_string(),
            "HTTP 401: Incorrect API key provided: <redacted>"
        );
        let quota = r#"{"error":{"code":"insufficient_quota","message":"out of credit"}}"#;
        let Step::Fatal(fatal) = classify(429, None, quota) else {
            panic!("no quota is fatal");
        };
        assert_eq!(
            fatal.to_string(),
            "HTTP 429 insufficient_quota: out of credit"
        );
        let bad = Fatal::BadUrl {
            uri: "sk-secret://x".into(),
        };
        assert_eq!(
            bad.redacted(&key).to_string(),
            "bad base URL: <redacted>://x"
        );
    }

    #[test]
    fn key_is_redacted() {
        let key = ApiKey::new("sk-secret".into()).also_hiding("hunter2");
        assert_eq!(
            key.redact("http://me:hunter2@h/v1 sk-secret"),
            "http://me:<redacted>@h/v1 <redacted>"
        );
        assert_eq!(url_password("https://me:hunter2@h:8/v1"), Some("hunter2"));
        assert_eq!(url_password("https://me@h/v1"), None);
        assert_eq!(url_password("https://h/v1?x=a:b@c"), None);
        assert_eq!(key.redact("bad key sk-secret!"), "bad key <redacted>!");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }
}
