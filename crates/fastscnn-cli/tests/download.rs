//! `fastscnn download` end to end, downloads served by a local fake server (no external network):
//! the sha256 checks, the Hub, and the files it must never touch.

use std::collections::HashMap;
use std::path::Path;

use assert_cmd::Command;
use fastscnn_core::testing::{max_abs_diff, FakeHub, PROXY_VARS};
use fastscnn_model::WeightFile;

mod common;
use common::{assert_clean_failure, fastscnn, golden};

fn fastscnn_download() -> Command {
    let mut cmd = fastscnn();
    cmd.arg("download");
    for proxy in PROXY_VARS {
        cmd.env_remove(proxy);
    }
    cmd
}

/// The installed file holds exactly the tensors of `source` (loading, layouts and parity are
/// tested where the model is).
fn assert_same_tensors(installed: &Path, source: &Path) {
    let (a, b) = (
        WeightFile::open(installed).unwrap(),
        WeightFile::open(source).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (key, tensor) in a.tensors() {
        assert_eq!(max_abs_diff(tensor, b.get(key).unwrap()), 0.0, "{key}");
    }
}

#[test]
fn checks_the_published_hash_and_installs_safetensors() {
    let Some(golden) = golden() else { return };
    let pth = golden.join("mmseg_fastscnn_c19.pth");
    let bytes = std::fs::read(&pth).unwrap();
    let sha = fastscnn_weights::sha256_of(&pth).unwrap();
    // OpenMMLab names end in the hash's first 8 hex digits; a wrong one must be refused.
    let good = format!("files/fast_scnn_test-{}.pth", &sha[..8]);
    let bad = "files/fast_scnn_test-00000000.pth".to_string();
    let hub = FakeHub::start(HashMap::from([
        (good.clone(), bytes.clone()),
        (bad.clone(), bytes),
    ]));
    let dir = tempfile::tempdir().unwrap();

    let out = dir.path().join("installed/default.safetensors");
    let url = format!("{}/{good}", hub.endpoint());
    let assert = fastscnn_download()
        .args(["--url", &url, "--output"])
        .arg(&out)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(
        stdout.contains(&format!("sha256 {sha} (matches {})", &sha[..8])),
        "{stdout}"
    );
    let installed = WeightFile::open(&out).unwrap();
    assert_eq!(installed.metadata()["source"], url);
    assert_same_tensors(&out, &pth);
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "only the installed file remains");

    let refused = dir.path().join("refused.safetensors");
    let output = fastscnn_download()
        .args(["--url", &format!("{}/{bad}", hub.endpoint()), "--output"])
        .arg(&refused)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected 00000000"));
    assert!(!refused.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no partial download left beside the output"
    );

    // Installed under FASTSCNN_HOME, `fastscnn` would find it; the default path is used.
    let home = dir.path().join("home");
    fastscnn_download()
        .args(["--url", &url, "--sha256", &sha])
        .env("FASTSCNN_HOME", &home)
        .assert()
        .success();
    assert!(home.join("default.safetensors").is_file());

    // Asked again for the same weights: nothing fetched, success (the README's set-up command
    // can run twice).
    let before = hub.requests();
    let again = fastscnn_download()
        .args(["--url", &url])
        .env("FASTSCNN_HOME", &home)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already holds"));
    assert_eq!(hub.requests(), before);
}

#[test]
fn from_the_hub_through_its_cache() {
    let Some(golden) = golden() else { return };
    let file = "fastscnn_seed0_c19.safetensors";
    let bytes = std::fs::read(golden.join(file)).unwrap();
    let hub = FakeHub::start(HashMap::from([(
        format!("fastscnn/golden/resolve/main/{file}"),
        bytes,
    )]));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    fastscnn_download()
        .args([
            "--hf-repo",
            "fastscnn/golden",
            "--hf-file",
            file,
            "--output",
        ])
        .arg(&out)
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", dir.path().join("hf"))
        .assert()
        .success();
    let installed = WeightFile::open(&out).unwrap();
    assert_eq!(installed.metadata()["layout"], "reference");
    assert_eq!(
        installed.metadata()["source"],
        format!("hf://fastscnn/golden@main/{file}")
    );
}

#[test]
fn an_existing_file_is_replaced_only_with_force() {
    let Some(golden) = golden() else { return };
    let file = "fastscnn_seed0_c19.safetensors";
    let hub = FakeHub::start(HashMap::from([(
        "files/w.safetensors".to_string(),
        std::fs::read(golden.join(file)).unwrap(),
    )]));
    let url = format!("{}/files/w.safetensors", hub.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine.safetensors");
    std::fs::write(&mine, b"the user's own weights").unwrap();
    assert_clean_failure(
        fastscnn_download()
            .args(["--url", &url, "--output"])
            .arg(&mine),
        "mine.safetensors: already exists; pass --force to replace it",
    );
    assert_eq!(std::fs::read(&mine).unwrap(), b"the user's own weights");
    assert_eq!(hub.requests(), 0, "refused before any download");

    fastscnn_download()
        .args(["--url", &url, "--force", "--output"])
        .arg(&mine)
        .assert()
        .success();
    assert_eq!(
        WeightFile::open(&mine).unwrap().metadata()["layout"],
        "reference"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn what_is_not_a_checkpoint_is_not_installed() {
    let hub = FakeHub::start(HashMap::from([(
        "files/page.pth".to_string(),
        b"<html>not found</html>".to_vec(),
    )]));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    assert_clean_failure(
        fastscnn_download()
            .args(["--url", &format!("{}/files/page.pth", hub.endpoint())])
            .arg("--output")
            .arg(&out),
        "page.pth",
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left"
    );
    assert_clean_failure(
        fastscnn_download()
            .args(["--sha256", "12", "--output"])
            .arg(&out),
        "--sha256 `12`",
    );
}
