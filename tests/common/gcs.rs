//! GCS test helpers: plain HTTP to gcp-storage-emulator (buckets, listings, downloads), a
//! checking proxy in front of it (the emulator checks no credentials, so the proxy records the
//! `Authorization` of every request, and can stand in for an outage or hold a request while the
//! agent is killed), and a GKE-style metadata server fixture.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::peers::{CredentialEndpoint, Reply};

/// One HTTP/1.0-style exchange: `(status, lower-cased headers, body)`.
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(authority).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

/// A fresh bucket on the emulator at `endpoint`, named after the test.
pub fn create_bucket(endpoint: &str, name: &str) -> String {
    let bucket = format!("{name}-{}", std::process::id());
    let (status, _, body) = http(
        "POST",
        &format!("{endpoint}/storage/v1/b?project=test"),
        &[("Content-Type", "application/json")],
        format!("{{\"name\":\"{bucket}\"}}").as_bytes(),
    );
    assert!(
        status == 200 || status == 409,
        "create bucket: {status} {}",
        String::from_utf8_lossy(&body)
    );
    bucket
}

/// `(name, size)` of every object under `prefix`.
pub fn list(endpoint: &str, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
    let (status, _, body) = http(
        "GET",
        &format!("{endpoint}/storage/v1/b/{bucket}/o?prefix={prefix}"),
        &[],
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    json["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|o| {
                    let size = o["size"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .or_else(|| o["size"].as_u64())
                        .unwrap_or(0);
                    (o["name"].as_str().unwrap().to_string(), size)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The object's bytes, if it exists.
pub fn download(endpoint: &str, bucket: &str, name: &str) -> Option<Vec<u8>> {
    let (status, _, body) = http(
        "GET",
        &format!(
            "{endpoint}/download/storage/v1/b/{bucket}/o/{}?alt=media",
            encode(name)
        ),
        &[],
        b"",
    );
    (status == 200).then_some(body)
}

/// The object's metadata resource, if it exists.
pub fn object_meta(endpoint: &str, bucket: &str, name: &str) -> Option<serde_json::Value> {
    let (status, _, body) = http(
        "GET",
        &format!("{endpoint}/storage/v1/b/{bucket}/o/{}", encode(name)),
        &[],
        b"",
    );
    (status == 200).then(|| serde_json::from_slice(&body).unwrap())
}

/// One request the proxy forwarded: `METHOD path`, its `Authorization` and `Content-Range`.
#[derive(Debug, Clone)]
pub struct Seen {
    pub line: String,
    pub authorization: String,
    pub content_range: String,
}

/// A checking proxy in front of the emulator (one request per connection).
pub struct Proxy {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// While set, connections are closed unanswered (an outage).
    pub down: Arc<AtomicBool>,
    /// Chunk PUTs (`Content-Range: bytes N-M/…`) forwarded before further ones are held
    /// unanswered (so the agent can be killed mid-upload); `usize::MAX`: none held.
    pub hold_after_chunks: Arc<AtomicUsize>,
    /// Requests whose `METHOD path` contains this (when not empty) are held unanswered.
    pub hold_containing: Arc<Mutex<String>>,
    /// While set, every request gets this raw HTTP answer instead of the emulator's.
    pub answer: Arc<Mutex<Option<String>>>,
    chunks: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        Self::start_with(upstream, None)
    }

    /// The same proxy on HTTPS with a certificate for 127.0.0.1 from a test CA; returns the
    /// CA's PEM for `tls.ca_file`.
    pub fn start_tls(upstream: &str) -> (Proxy, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "logferry gcs test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        (
            Self::start_with(upstream, Some(Arc::new(config))),
            ca_cert.pem(),
        )
    }

    fn start_with(upstream: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let proxy = Proxy {
            url,
            seen: Arc::default(),
            down: Arc::default(),
            hold_after_chunks: Arc::new(AtomicUsize::new(usize::MAX)),
            hold_containing: Arc::default(),
            answer: Arc::default(),
            chunks: Arc::default(),
        };
        let holds = Holds {
            after_chunks: proxy.hold_after_chunks.clone(),
            containing: proxy.hold_containing.clone(),
            chunks: proxy.chunks.clone(),
        };
        let (seen, down, answer) = (proxy.seen.clone(), proxy.down.clone(), proxy.answer.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let ctx = Ctx {
                    upstream: upstream.clone(),
                    seen: seen.clone(),
                    down: down.clone(),
                    holds: holds.clone(),
                    answer: answer.clone(),
                };
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => forward(client, &ctx),
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config).unwrap();
                        forward(rustls::StreamOwned::new(conn, client), &ctx)
                    }
                });
            }
        });
        proxy
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Which requests the proxy holds unanswered.
#[derive(Clone)]
struct Holds {
    after_chunks: Arc<AtomicUsize>,
    containing: Arc<Mutex<String>>,
    chunks: Arc<AtomicUsize>,
}

/// What each proxied connection shares.
struct Ctx {
    upstream: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    down: Arc<AtomicBool>,
    holds: Holds,
    answer: Arc<Mutex<Option<String>>>,
}

fn forward(mut client: impl Read + Write, ctx: &Ctx) {
    let (seen, down, holds, upstream) = (&ctx.seen, &ctx.down, &ctx.holds, &ctx.upstream);
    if down.load(Ordering::SeqCst) {
        return;
    }
    let mut reader = BufReader::new(&mut client);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() || first.is_empty() {
        return;
    }
    let mut head = first.clone();
    let (mut length, mut authorization, mut content_range) = (0usize, String::new(), String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        let (k, v) = line.split_once(':').unwrap_or((&line, ""));
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        match k.as_str() {
            "content-length" => length = v.parse().unwrap_or(0),
            "authorization" => authorization = v.clone(),
            "content-range" => content_range = v.clone(),
            "connection" | "keep-alive" => continue,
            _ => {}
        }
        head.push_str(&line);
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    drop(reader);
    let mut parts = first.split_whitespace();
    let line = format!(
        "{} {}",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    );
    let is_chunk = content_range.starts_with("bytes ") && !content_range.starts_with("bytes */");
    let held = {
        let containing = holds.containing.lock().unwrap();
        !containing.is_empty() && line.contains(containing.as_str())
    };
    seen.lock().unwrap().push(Seen {
        line,
        authorization,
        content_range,
    });
    let held = held
        || (is_chunk
            && holds.chunks.fetch_add(1, Ordering::SeqCst)
                >= holds.after_chunks.load(Ordering::SeqCst));
    if held {
        // Held: never answered (the agent is killed meanwhile), never forwarded.
        std::thread::sleep(std::time::Duration::from_secs(120));
        return;
    }
    if down.load(Ordering::SeqCst) {
        return;
    }
    if let Some(canned) = ctx.answer.lock().unwrap().clone() {
        let _ = client.write_all(canned.as_bytes());
        let _ = client.flush();
        return;
    }
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    if up.write_all(head.as_bytes()).is_err() || up.write_all(&body).is_err() {
        return;
    }
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    let _ = client.write_all(&answer);
    let _ = client.flush();
}

/// A GKE metadata server: the default service account's token, only with
/// `Metadata-Flavor: Google`; everything else 404.
pub fn metadata_server(token: &'static str) -> CredentialEndpoint {
    CredentialEndpoint::start(move |r| {
        if !r
            .path
            .starts_with("/computeMetadata/v1/instance/service-accounts/default/token")
        {
            return Reply::new(404, "not found");
        }
        if r.headers.get("metadata-flavor").map(String::as_str) != Some("Google") {
            return Reply::new(403, "missing Metadata-Flavor: Google");
        }
        Reply::new(
            200,
            format!(
                "{{\"access_token\":\"{token}\",\"expires_in\":3599,\"token_type\":\"Bearer\"}}"
            ),
        )
        .header("Metadata-Flavor", "Google")
    })
}
