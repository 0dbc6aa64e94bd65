//! HTTP/1.1 spoken by hand, for requests no HTTP client library would send.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer's status (none when what came back was not HTTP) and body.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: Option<u16>,
    pub body: Vec<u8>,
}

impl Answer {
    fn parse(raw: &[u8]) -> Self {
        let Some(rest) = raw.strip_prefix(b"HTTP/1.1 ") else {
            return Self::default();
        };
        let status = std::str::from_utf8(rest.get(..3).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok());
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
        let body = split.map_or(Vec::new(), |at| raw[at + 4..].to_vec());
        Self { status, body }
    }

    /// A 4xx whose JSON body names the error and explains it.
    pub fn is_clear_4xx(&self) -> bool {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        self.status.is_some_and(|s| (400..500).contains(&s))
            && body["error"].is_string()
            && body["message"].is_string()
    }
}

/// One request on its own connection. The body goes out in pieces while the answer is
/// watched for, since a server may answer a giant body (413) before reading it all.
pub async fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return Answer::default();
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    if let Some(body) = body {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    let (mut reader, mut writer) = stream.into_split();
    let answered = Arc::new(AtomicBool::new(false));
    let body = body.unwrap_or_default().to_vec();
    let stop = answered.clone();
    let write = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        for piece in body.chunks(65_536) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            writer.write_all(piece).await?;
        }
        std::io::Result::Ok(writer)
    });
    let mut raw = Vec::new();
    let mut buffer = vec![0; 65_536];
    let read = async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answered.store(true, Ordering::Relaxed);
                    raw.extend_from_slice(&buffer[..n]);
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), read).await;
    write.abort();
    Answer::parse(&raw)
}

/// Sends the headers and then one byte of body a second: the server must give up with an
/// answer (or close) on its own, and keep serving others meanwhile.
pub async fn slow_client(port: u16, path: &str, auth: &str, limit: Duration) -> (Answer, Duration) {
    let started = Instant::now();
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return (Answer::default(), started.elapsed());
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: {auth}\r\nContent-Length: 100000\r\n\r\n"
    );
    let mut raw = Vec::new();
    if stream.write_all(head.as_bytes()).await.is_ok() {
        let mut buffer = [0; 4096];
        while started.elapsed() < limit {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await {
                Err(_) => continue,
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => {
                    raw.extend_from_slice(&buffer[..n]);
                    if raw.windows(4).any(|w| w == b"\r\n\r\n") {
                        // The head is in; the (small) JSON body follows at once.
                        let more = stream.read(&mut buffer);
                        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), more).await
                        {
                            raw.extend_from_slice(&buffer[..n]);
                        }
                        break;
                    }
                }
            }
        }
    }
    (Answer::parse(&raw), started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_from_raw_http() {
        let clear = Answer::parse(
            b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: application/json\r\n\r\n\
              {\"error\":\"invalid_event\",\"message\":\"prompt_tokens: must be a number\"}",
        );
        assert_eq!(clear.status, Some(422));
        assert!(clear.is_clear_4xx());
        let bare = Answer::parse(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(bare.status, Some(400));
        assert!(!bare.is_clear_4xx());
        let server_error =
            Answer::parse(b"HTTP/1.1 500 x\r\n\r\n{\"error\":\"a\",\"message\":\"b\"}");
        assert!(!server_error.is_clear_4xx());
        assert_eq!(Answer::parse(b"garbage").status, None);
    }
}
