//! `--hf-repo` against a local server that answers like the Hub's resolve endpoint
//! (`HF_ENDPOINT`): download into the cache, reuse offline, and the errors when that cannot work.
//! No external network.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use assert_cmd::Command;

mod common;
use common::{assert_clean_failure, fastscnn, golden};

const REPO: &str = "fastscnn/golden";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `files` at `/{REPO}/resolve/main/{name}` with the headers hf-hub reads (commit, etag,
/// Content-Range) and byte ranges; counts the requests it answers.
struct FakeHub {
    endpoint: String,
    requests: Arc<AtomicUsize>,
}

impl FakeHub {
    fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("range") {
                            range = value.trim().strip_prefix("bytes=").map(str::to_string);
                        }
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let path = request_line.split_whitespace().nth(1).unwrap_or("");
                let prefix = format!("/{REPO}/resolve/main/");
                let file = path.strip_prefix(&prefix).and_then(|name| files.get(name));
                let response = match file {
                    None => b"HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    Some(bytes) => {
                        let len = bytes.len();
                        let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                            Some((s, e)) => (
                                s.parse().unwrap_or(0),
                                e.parse().unwrap_or(len - 1).min(len - 1),
                            ),
                            None => (0, len - 1),
                        };
                        let body = &bytes[start..=end];
                        let mut r = format!(
                            "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {COMMIT}\r\netag: \"{len:064x}\"\r\nContent-Range: bytes {start}-{end}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                };
                let _ = stream.write_all(&response);
            }
        });
        Self { endpoint, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// `fastscnn info --hf-repo REPO --hf-file FILE` against `endpoint` with the cache in `home`.
fn info_from_hub(endpoint: &str, home: &Path, file: &str) -> Command {
    let mut cmd = fastscnn();
    cmd.args(["info", "--hf-repo", REPO, "--hf-file", file])
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_OFFLINE");
    for proxy in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(proxy);
    }
    cmd
}

#[test]
fn downloads_into_the_cache_then_works_offline() {
    let Some(golden) = golden() else { return };
    let file = "fastscnn_seed0_c19.safetensors";
    let bytes = std::fs::read(golden.join(file)).unwrap();
    let hub = FakeHub::start(HashMap::from([(file.to_string(), bytes.clone())]));
    let home = tempfile::tempdir().unwrap();

    let out = info_from_hub(&hub.endpoint, home.path(), file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("layout      reference"));
    assert!(hub.requests() >= 2, "metadata and download requests");
    let cached = home.path().join(format!(
        "hub/models--fastscnn--golden/snapshots/{COMMIT}/{file}"
    ));
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);

    // Cached: no request at all, offline or not.
    let before = hub.requests();
    info_from_hub(&hub.endpoint, home.path(), file)
        .env("HF_HUB_OFFLINE", "1")
        .assert()
        .success();
    info_from_hub(&hub.endpoint, home.path(), file)
        .assert()
        .success();
    assert_eq!(hub.requests(), before);
}

#[test]
fn offline_and_not_cached_says_how_to_get_the_file() {
    let hub = FakeHub::start(HashMap::new());
    let home = tempfile::tempdir().unwrap();
    assert_clean_failure(
        info_from_hub(&hub.endpoint, home.path(), "model.safetensors").env("HF_HUB_OFFLINE", "1"),
        "HF_HUB_OFFLINE is set; run once with network access",
    );
    assert_eq!(hub.requests(), 0);
}

#[test]
fn a_file_the_hub_does_not_have_is_one_line_naming_it() {
    let hub = FakeHub::start(HashMap::new());
    let home = tempfile::tempdir().unwrap();
    assert_clean_failure(
        &mut info_from_hub(&hub.endpoint, home.path(), "absent.safetensors"),
        "absent.safetensors",
    );
}

#[test]
fn weights_and_hub_are_exclusive() {
    let out = fastscnn()
        .args(["info", "--weights", "w.safetensors", "--hf-repo", REPO])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
