//! Locating the shared test fixtures (`../shared` beside the checkout). For this workspace's tests;
//! not part of the supported API.

use std::path::PathBuf;

/// The shared fixtures folder: `$FASTSCNN_SHARED`, else `../shared` beside the workspace root.
///
/// Returns `None` (after saying so on stderr) when it is absent, so a test can skip; under
/// `CI=true` absence is a failure instead, since CI must never pass by skipping.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("FASTSCNN_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "shared fixtures not found at {} (set FASTSCNN_SHARED); CI=true requires them",
        dir.display()
    );
    eprintln!(
        "skipping: shared fixtures not found at {} (set FASTSCNN_SHARED)",
        dir.display()
    );
    None
}
