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

/// A URL whose path is a capability (a container credentials endpoint's `/v2/credentials/<id>`):
/// `Debug` and `Display` show its scheme and host only.
#[derive(Clone, PartialEq)]
pub struct PrivateUrl(pub String);

impl std::fmt::Display for PrivateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rest = self.0.split_once("://").map_or(self.0.as_str(), |(_, r)| r);
        write!(f, "{}", rest.split('/').next().unwrap_or_default())
    }
}

impl std::fmt::Debug for PrivateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateUrl({self})")
    }
}

/// Runs [`get`] on a runtime of its own, for callers outside one (`main`, `healthcheck`).
pub fn get_blocking(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(get(url, headers, timeout))
}

/// GETs `url` (`http://host[:port]/path`); returns the status and body. Errors name the host
/// and port only (a path may be a capability): callers add the URL where it is not secret.
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
                format!("{authority}: no answer within {timeout:?}"),
            )
        })??;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{authority}: incomplete HTTP response"),
            )
        })?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{authority}: no HTTP status"),
            )
        })?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{authority}: chunked response to an HTTP/1.0 request"),
        ));
    }
    Ok((status, response[split + 4..].to_vec()))
}
