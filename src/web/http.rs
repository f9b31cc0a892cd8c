//! The little HTTP/1.1 the listener needs: one request per connection, read within a size
//! and time limit, answered, closed (the event feed keeps its connection open).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head read.
const MAX_REQUEST: usize = 8192;
/// Longest a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request's head.
#[derive(Debug, Default, PartialEq)]
pub struct Request {
    /// `GET`, ...
    pub method: String,
    /// The path without its query.
    pub path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

impl Request {
    /// Parse a request head (up to the blank line).
    pub fn parse(head: &str) -> Request {
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or("");
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        Request {
            method,
            path: path.to_string(),
            query,
            headers,
        }
    }

    /// A header's value (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// How many times a header is present (name in lower case).
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }

    /// A query parameter's value, as sent (not percent-decoded: the values read here are
    /// tokens and numbers, whose characters need no encoding).
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read a request head within the limits. Err(Some): answer this and close; Err(None): the
/// client went away or took too long.
pub async fn read_request(stream: &mut TcpStream) -> Result<Request, Option<Response>> {
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(None),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > MAX_REQUEST {
                return Err(Some(Response::text(
                    "431 Request Header Fields Too Large",
                    "",
                )));
            }
        }
        Ok(Request::parse(&String::from_utf8_lossy(&buf)))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!("An HTTP request took too long to arrive");
            Err(None)
        }
    }
}

/// A whole response.
pub struct Response {
    status: &'static str,
    ctype: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
}

/// The page may load nothing from anywhere but this listener.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

impl Response {
    /// A response with a body.
    pub fn new(status: &'static str, ctype: &'static str, body: String) -> Response {
        Response {
            status,
            ctype,
            headers: vec![
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
            ],
            body,
        }
    }

    /// Plain text.
    pub fn text(status: &'static str, body: &str) -> Response {
        Self::new(status, "text/plain; charset=utf-8", body.to_string())
    }

    /// One of the page's files: locked to this origin.
    pub fn asset(ctype: &'static str, body: &str) -> Response {
        Self::new("200 OK", ctype, body.to_string())
            .header("Content-Security-Policy", CSP)
            .header("Cache-Control", "no-cache")
    }

    /// Add a header.
    pub fn header(mut self, name: &'static str, value: &'static str) -> Response {
        self.headers.push((name, value));
        self
    }

    /// Write it and close the connection.
    pub async fn send(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.ctype,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(self.body.as_bytes()).await?;
            stream.shutdown().await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_read_with_its_query_and_headers() {
        let r = Request::parse(
            "GET /events?token=abc&after=12 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\
             Authorization: Bearer t0k\r\n\r\n",
        );
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/events"));
        assert_eq!(r.query("token"), Some("abc"));
        assert_eq!(r.query("after"), Some("12"));
        assert_eq!(r.query("nope"), None);
        assert_eq!(r.header("last-event-id"), Some("7"));
        assert_eq!(r.header("authorization"), Some("Bearer t0k"));
        let junk = Request::parse("\u{0}\u{1}");
        assert_eq!(junk.path, "");
    }
}
