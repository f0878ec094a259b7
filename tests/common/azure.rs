//! Azure Blob test helpers: reading blobs back from Azurite with Shared Key–signed requests
//! (Azurite checks the signature), and an HTTPS Azurite with bearer tokens plus an Entra ID
//! stand-in (`tests/peers/entra_idp.mjs`) for workload-identity tests, with a test CA.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::peers::{block_on, Peers};

pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub name: String,
    pub len: u64,
    pub kind: String,
}

/// Reads blobs with the account key. `base` is `<scheme>://host:port/devstoreaccount1`.
pub struct BlobReader {
    base: String,
    http: reqwest::Client,
}

impl BlobReader {
    pub fn new(base: &str, ca: Option<&Path>) -> BlobReader {
        let tls = logferry::cloud::azure::tls_config(ca).unwrap();
        BlobReader {
            base: base.trim_end_matches('/').to_string(),
            http: logferry::cloud::azure::http_client(tls),
        }
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let base_path = self.base.split_once("://").unwrap().1;
        let base_path = &base_path[base_path.find('/').unwrap_or(base_path.len())..];
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let headers = vec![
            ("x-ms-date".to_string(), date),
            ("x-ms-version".to_string(), "2021-12-02".to_string()),
        ];
        let key = base64_decode(KEY);
        let q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let auth = logferry::cloud::azure::shared_key_authorization(
            ACCOUNT,
            &key,
            method.as_str(),
            &format!("{base_path}{path}"),
            &q,
            &headers,
            0,
        );
        let mut url = format!("{}{path}", self.base);
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{k}={v}"));
        }
        block_on(async {
            let mut r = self
                .http
                .request(method, &url)
                .header("authorization", auth);
            for (k, v) in &headers {
                r = r.header(k.as_str(), v.as_str());
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            (status, headers, resp.bytes().await.unwrap().to_vec())
        })
    }

    pub fn create_container(&self, container: &str) {
        let (status, _, _) = self.call(
            reqwest::Method::PUT,
            &format!("/{container}"),
            &[("restype", "container")],
        );
        assert!(status == 201 || status == 409, "create container: {status}");
    }

    pub fn container_exists(&self, container: &str) -> bool {
        let (status, _, _) = self.call(
            reqwest::Method::HEAD,
            &format!("/{container}"),
            &[("restype", "container")],
        );
        status == 200
    }

    /// Blobs under `prefix`, by name.
    pub fn list(&self, container: &str, prefix: &str) -> Vec<BlobInfo> {
        let (status, _, body) = self.call(
            reqwest::Method::GET,
            &format!("/{container}"),
            &[
                ("comp", "list"),
                ("prefix", prefix),
                ("restype", "container"),
            ],
        );
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "list: {}", String::from_utf8_lossy(&body));
        let text = String::from_utf8(body).unwrap();
        let tag = |s: &str, t: &str| -> String {
            let open = format!("<{t}>");
            let start = s.find(&open).map(|i| i + open.len()).unwrap_or(0);
            let end = s[start..]
                .find(&format!("</{t}>"))
                .map_or(start, |e| start + e);
            s[start..end].to_string()
        };
        let mut out: Vec<BlobInfo> = text
            .split("<Blob>")
            .skip(1)
            .map(|b| BlobInfo {
                name: tag(b, "Name"),
                len: tag(b, "Content-Length").parse().unwrap_or(0),
                kind: tag(b, "BlobType"),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn get(&self, container: &str, blob: &str) -> Vec<u8> {
        let (status, _, body) =
            self.call(reqwest::Method::GET, &format!("/{container}/{blob}"), &[]);
        assert_eq!(status, 200, "get {blob}");
        body
    }

    /// The blob's committed block count (append blobs).
    pub fn committed_blocks(&self, container: &str, blob: &str) -> u64 {
        let (status, headers, _) =
            self.call(reqwest::Method::HEAD, &format!("/{container}/{blob}"), &[]);
        assert_eq!(status, 200, "head {blob}");
        headers["x-ms-blob-committed-block-count"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The `log` values of every blob under `prefix`, in name order. A plain blob being
    /// appended to may end in a part of a line (a block boundary): that part is left out.
    pub fn logs(&self, container: &str, prefix: &str) -> Vec<String> {
        self.list(container, prefix)
            .iter()
            .flat_map(|b| {
                let mut body = self.get(container, &b.name);
                if body.first() == Some(&b'{') {
                    let whole = body.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1);
                    body.truncate(whole);
                }
                super::object_logs(&body)
            })
            .collect()
    }
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// An HTTPS Azurite with `--oauth basic` (certificate from a CA made here) and an Entra ID
/// stand-in issuing tokens for it; both stopped on drop.
pub struct EntraAzurite {
    children: Vec<Child>,
    pub endpoint: String,
    pub ca: PathBuf,
    pub authority: String,
    pub control: PathBuf,
}

impl EntraAzurite {
    pub fn start(dir: &Path) -> EntraAzurite {
        let p = Peers::get();
        let (ca, cert, key) = super::test_pki(dir);

        let control = dir.join("idp.json");
        std::fs::write(&control, r#"{"accept":[]}"#).unwrap();
        let blob_port = super::free_port();
        let idp_port = super::free_port();
        let azurite = Command::new(p.var("AZURITE_BIN"))
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(blob_port.to_string())
            .args([
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--oauth",
                "basic",
                "--cert",
            ])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("azurite.log")).unwrap())
            .spawn()
            .unwrap();
        let idp = Command::new("node")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/entra_idp.mjs"
            ))
            .arg(idp_port.to_string())
            .arg(TENANT)
            .arg(&control)
            .env("OAUTH2_MOCK_SERVER_DIR", p.var("OAUTH2_MOCK_SERVER_DIR"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("idp.log")).unwrap())
            .spawn()
            .unwrap();
        let fixture = EntraAzurite {
            children: vec![azurite, idp],
            endpoint: format!("https://127.0.0.1:{blob_port}"),
            ca,
            authority: format!("http://127.0.0.1:{idp_port}/"),
            control,
        };
        super::wait_until(
            Duration::from_secs(60),
            "HTTPS Azurite and the IdP up",
            || {
                std::net::TcpStream::connect(("127.0.0.1", blob_port)).is_ok()
                    && std::net::TcpStream::connect(("127.0.0.1", idp_port)).is_ok()
            },
        );
        fixture
    }

    /// The reader over HTTPS (Shared Key still works with `--oauth basic`).
    pub fn reader(&self) -> BlobReader {
        BlobReader::new(&format!("{}/{ACCOUNT}", self.endpoint), Some(&self.ca))
    }

    /// Sets what the IdP does (see `entra_idp.mjs`).
    pub fn control(&self, json: &str) {
        let tmp = self.control.with_extension("tmp");
        std::fs::write(&tmp, json).unwrap();
        std::fs::rename(&tmp, &self.control).unwrap();
    }

    /// Assertions the IdP accepted, in order.
    pub fn accepted(&self) -> Vec<String> {
        std::fs::read_to_string(self.control.with_extension("json.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for EntraAzurite {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
