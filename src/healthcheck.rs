//! `logferry healthcheck [URL]`: one HTTP GET against logferry's own monitoring API, exiting 0 on
//! a 2xx answer and 1 otherwise, so a container health check (ECS FireLens, Kubernetes exec
//! probes) needs no `curl` in the image.
//!
//! Written by hand on purpose: it is a single HTTP/1.0 request to a plain-HTTP listener on the
//! same host; an HTTP client crate would add TLS stacks and connection pools the check never uses.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// What `logferry healthcheck` asks when no URL is given: the uptime endpoint AWS recommends for
/// FireLens (it answers while the process serves requests; `/api/v1/health` also fails on
/// output errors when `Health_Check On`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:2020/api/v1/uptime";

/// The largest answer read; the API's answers are a few hundred bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// GETs `url`; Ok(status line) on 2xx, Err(why) on anything else, naming the URL.
pub fn check(url: &str, timeout: Duration) -> Result<String, String> {
    let (host, path) = split_url(url)?;
    let fail = |what: String| format!("{url}: {what}");
    let addrs: Vec<_> = host
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve '{host}': {e}")))?
        .collect();
    let mut stream = addrs
        .iter()
        .find_map(|a| TcpStream::connect_timeout(a, timeout).ok())
        .ok_or_else(|| fail("cannot connect (is logferry running with HTTP_Server On?)".into()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(format!("cannot send the request: {e}")))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| fail(format!("no answer: {e}")))?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default().trim().to_string();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| fail(format!("not an HTTP answer: '{status_line}'")))?;
    if (200..300).contains(&code) {
        Ok(status_line)
    } else {
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
        Err(fail(format!("{status_line} {body}")))
    }
}

/// `http://host[:port][/path]` → (`host:port`, `/path`); the port defaults to 80.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url}: only http:// URLs are checked (the monitoring API serves plain HTTP)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let host = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((host, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:2020/api/v1/uptime").unwrap(),
            ("127.0.0.1:2020".into(), "/api/v1/uptime".into())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost:80".into(), "/".into())
        );
        assert_eq!(
            split_url("http://[::1]:2020/x").unwrap(),
            ("[::1]:2020".into(), "/x".into())
        );
        assert!(split_url("https://127.0.0.1:2020/").is_err());
    }
}
