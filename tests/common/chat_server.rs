//! A scripted chat-completions server on 127.0.0.1 for the judge tests.
//!
//! It speaks plain HTTP/1.1 (one request per connection, `Connection: close`), records
//! every request it receives (method, path, headers, body, arrival time) and answers what
//! the test's script returns for it. The script sees the request and how many earlier
//! requests carried the very same body (`attempt`: 0 for the first), so "fail twice, then
//! answer" is easy to say. Never a real provider.

#![allow(dead_code)] // Each test file uses a different part of this helper.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "http_head.rs"]
mod http_head;
use http_head::{read_head, Head};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }

    /// The prompt text part of a judge request.
    pub fn prompt(&self) -> String {
        self.json()["messages"][0]["content"][0]["text"]
            .as_str()
            .expect("text part")
            .to_string()
    }

    /// The image data URL of a judge request.
    pub fn image_url(&self) -> String {
        self.json()["messages"][0]["content"][1]["image_url"]["url"]
            .as_str()
            .expect("image part")
            .to_string()
    }
}

#[derive(Debug, Clone)]
pub enum Reply {
    /// A response with this status, extra headers and body.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Wait, then send the inner reply (the client may have hung up by then).
    Delay(Duration, Box<Reply>),
    /// Close the connection without answering.
    Hangup,
}

/// A base URL on a port that was free a moment ago: every connection to it is refused.
pub fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port();
    format!("http://127.0.0.1:{port}/v1")
}

/// Judge flags that make a refused connection give up fast: one request at a time, two
/// retries, 10 ms then 20 ms of backoff.
pub const GIVE_UP_FAST: [&str; 6] = [
    "--concurrency",
    "1",
    "--retries",
    "2",
    "--backoff-base",
    "0.01",
];

/// A 200 chat completion whose message content is `content`, with usage 100 + 1 tokens.
pub fn completion(content: &str) -> Reply {
    Reply::Http {
        status: 200,
        headers: vec![],
        body: serde_json::json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "length"
            }],
            "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}
        })
        .to_string(),
    }
}

/// An OpenAI-style error body.
pub fn error(status: u16, code: &str, message: &str, headers: &[(&str, &str)]) -> Reply {
    Reply::Http {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: serde_json::json!({
            "error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}
        })
        .to_string(),
    }
}

pub fn raw(status: u16, body: &str) -> Reply {
    Reply::Http {
        status,
        headers: vec![],
        body: body.to_string(),
    }
}

type Script = dyn Fn(&Request, usize) -> Reply + Send + Sync;

pub struct ChatServer {
    pub base_url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl ChatServer {
    /// Starts listening on an ephemeral port; `base_url` is `http://127.0.0.1:PORT/v1`.
    pub fn start(script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let recorded = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (recorded, script) = (Arc::clone(&recorded), Arc::clone(&script));
                std::thread::spawn(move || serve(stream, &recorded, &*script));
            }
        });
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            requests,
        }
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

fn serve(stream: TcpStream, recorded: &Mutex<Vec<Request>>, script: &Script) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    let attempt = {
        let mut all = recorded.lock().expect("lock");
        let attempt = all.iter().filter(|r| r.body == request.body).count();
        all.push(request.clone());
        attempt
    };
    let reply = script(&request, attempt);
    send(stream, reply);
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let Head {
        method,
        path,
        headers,
    } = read_head(&mut reader)?;
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8(body).ok()?,
        at: Instant::now(),
    })
}

fn send(mut stream: TcpStream, reply: Reply) {
    match reply {
        Reply::Hangup => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        Reply::Delay(d, inner) => {
            std::thread::sleep(d);
            send(stream, *inner);
        }
        Reply::Http {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
            let _ = stream.flush();
        }
    }
}
