//! `logferry healthcheck [URL]`: one HTTP GET against logferry's own monitoring API, exiting 0 on
//! a 2xx answer and 1 otherwise, so a container health check (ECS FireLens, Kubernetes exec
//! probes) needs no `curl` in the image. The request is [`crate::cloud::local_http::get_blocking`].

use std::time::Duration;

/// What `logferry healthcheck` asks when no URL is given: the uptime endpoint AWS recommends for
/// FireLens (it answers while the process serves requests; `/api/v1/health` also fails on
/// output errors when `Health_Check On`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:2020/api/v1/uptime";

/// GETs `url`; Ok(status) on 2xx, Err(why) on anything else, naming the URL.
pub fn check(url: &str, timeout: Duration) -> Result<u16, String> {
    let (status, body) = crate::cloud::local_http::get_blocking(url, &[], timeout)
        .map_err(|e| format!("{url}: {e} (is logferry running with HTTP_Server On?)"))?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!(
            "{url}: HTTP {status} {}",
            String::from_utf8_lossy(&body).trim()
        ))
    }
}
