//! A local HTTP server that answers like the Hugging Face Hub's resolve endpoint and like a plain
//! file server, so download paths are tested without any external network.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Serves fixed files on 127.0.0.1 with the headers hf-hub reads (`x-repo-commit`, `etag`,
/// `Content-Range`) and byte ranges; counts the requests it answers. Lives until the process
/// ends.
pub struct FakeHub {
    endpoint: String,
    requests: Arc<AtomicUsize>,
}

impl FakeHub {
    /// The commit every file is served at.
    pub const COMMIT: &'static str = "0123456789abcdef0123456789abcdef01234567";

    /// `files` maps URL paths without the leading `/` (`owner/name/resolve/main/file`) to bytes.
    pub fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(request) = read_request(&stream) {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response = respond(&files, &request);
                    let _ = (&stream).write_all(&response);
                }
            }
        });
        Self { endpoint, requests }
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT` or a download URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

struct Request {
    path: String,
    /// `start-end` of a `Range: bytes=start-end` header; either end may be empty.
    range: Option<String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_string();
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
    Some(Request { path, range })
}

fn respond(files: &HashMap<String, Vec<u8>>, request: &Request) -> Vec<u8> {
    let Some(bytes) = files.get(request.path.trim_start_matches('/')) else {
        return b"HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_vec();
    };
    let len = bytes.len();
    let last = len.saturating_sub(1);
    let (start, end, status) = match request.range.as_deref().and_then(|r| r.split_once('-')) {
        Some((s, e)) => (
            s.parse().unwrap_or(0),
            e.parse().unwrap_or(last).min(last),
            "206 Partial Content",
        ),
        None => (0, last, "200 OK"),
    };
    let body = bytes.get(start..=end).unwrap_or(&[]);
    let mut response = format!(
        "HTTP/1.1 {status}\r\nx-repo-commit: {}\r\netag: \"{len:064x}\"\r\nContent-Range: bytes {start}-{end}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        FakeHub::COMMIT,
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    response
}
