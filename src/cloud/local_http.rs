//! One-shot plain-HTTP GETs to the agent endpoints on the task's own network (the ECS task
//! metadata endpoint, a container credentials endpoint). Written by hand because these are a
//! single HTTP/1.0 request to a link-local or loopback address: HTTP/1.0 makes the server
//! close the connection after the body (no chunked encoding to decode), so no client crate with
//! its connection pool and TLS stack is needed. Secrets in headers are never logged.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bodies larger than this are refused (metadata documents are a few KB).
const MAX_RESPONSE: u64 = 1 << 20;

/// GETs `url` (`http://host[:port]/path`); returns the status and body.
pub async fn get(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url}: only http:// URLs are supported"),
        )
    })?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        let mut request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, io::Error>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{url}: no answer within {timeout:?}"),
            )
        })??;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{url}: incomplete HTTP response"),
            )
        })?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{url}: no HTTP status"))
        })?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{url}: chunked response to an HTTP/1.0 request"),
        ));
    }
    Ok((status, response[split + 4..].to_vec()))
}
