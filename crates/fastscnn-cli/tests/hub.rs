//! `--hf-repo` against a local server that answers like the Hub's resolve endpoint
//! (`HF_ENDPOINT`): download into the cache, reuse offline, and the errors when that cannot work.
//! No external network.

use std::path::Path;

use assert_cmd::Command;
use fastscnn_core::testing::{FakeHub, PROXY_VARS};

mod common;
use common::{assert_clean_failure, fastscnn, golden};

const REPO: &str = "fastscnn/golden";

fn hub_with(files: &[(&str, Vec<u8>)]) -> FakeHub {
    FakeHub::start(
        files
            .iter()
            .map(|(name, bytes)| (format!("{REPO}/resolve/main/{name}"), bytes.clone()))
            .collect(),
    )
}

/// `fastscnn info --hf-repo REPO --hf-file FILE` against `endpoint` with the cache in `home`.
fn info_from_hub(endpoint: &str, home: &Path, file: &str) -> Command {
    let mut cmd = fastscnn();
    cmd.args(["info", "--hf-repo", REPO, "--hf-file", file])
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_OFFLINE");
    for proxy in PROXY_VARS {
        cmd.env_remove(proxy);
    }
    cmd
}

#[test]
fn downloads_into_the_cache_then_works_offline() {
    let Some(golden) = golden() else { return };
    let file = "fastscnn_seed0_c19.safetensors";
    let bytes = std::fs::read(golden.join(file)).unwrap();
    let hub = hub_with(&[(file, bytes.clone())]);
    let home = tempfile::tempdir().unwrap();

    let out = info_from_hub(hub.endpoint(), home.path(), file)
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
        "hub/models--fastscnn--golden/snapshots/{}/{file}",
        FakeHub::COMMIT
    ));
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);

    // Cached: no request at all, offline or not.
    let before = hub.requests();
    info_from_hub(hub.endpoint(), home.path(), file)
        .env("HF_HUB_OFFLINE", "1")
        .assert()
        .success();
    info_from_hub(hub.endpoint(), home.path(), file)
        .assert()
        .success();
    assert_eq!(hub.requests(), before);
}

#[test]
fn offline_and_not_cached_says_how_to_get_the_file() {
    let hub = hub_with(&[]);
    let home = tempfile::tempdir().unwrap();
    assert_clean_failure(
        info_from_hub(hub.endpoint(), home.path(), "model.safetensors").env("HF_HUB_OFFLINE", "1"),
        "HF_HUB_OFFLINE is set; run once with network access",
    );
    assert_eq!(hub.requests(), 0);
}

#[test]
fn a_file_the_hub_does_not_have_is_one_line_naming_it() {
    let hub = hub_with(&[]);
    let home = tempfile::tempdir().unwrap();
    assert_clean_failure(
        &mut info_from_hub(hub.endpoint(), home.path(), "absent.safetensors"),
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

#[test]
fn a_damaged_ref_cannot_lead_outside_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let outside = home.path().join("secret.safetensors");
    std::fs::write(&outside, b"x").unwrap();
    let refs = home.path().join("hub/models--fastscnn--golden/refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("evil"), "../../..").unwrap();
    let snapshots = home.path().join("hub/models--fastscnn--golden/snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    assert_clean_failure(
        fastscnn()
            .args(["info", "--hf-repo", REPO, "--revision", "evil"])
            .args(["--hf-file", "secret.safetensors"])
            .env("HF_HOME", home.path())
            .env("HF_HUB_OFFLINE", "1"),
        "outside the cache's folder",
    );
}

#[test]
fn hub_names_cannot_leave_the_cache() {
    let home = tempfile::tempdir().unwrap();
    for (flag, value) in [("--hf-file", "../../x"), ("--revision", "../x")] {
        assert_clean_failure(
            fastscnn()
                .args(["info", "--hf-repo", REPO, flag, value])
                .env("HF_HOME", home.path())
                .env("HF_HUB_OFFLINE", "1"),
            &format!("{flag} `{value}`"),
        );
    }
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
}
