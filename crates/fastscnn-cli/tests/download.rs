//! `fastscnn download` end to end, downloads served by a local fake server (no external network):
//! the sha256 checks, the Hub, and the files it must never touch.

use std::collections::HashMap;
use std::path::Path;

use assert_cmd::Command;
use candle_core::Device;
use fastscnn_core::testing::{argmax_agreement, max_abs_diff, FakeHub, PROXY_VARS};
use fastscnn_model::{image_to_tensor, load_rgb_image, FastScnn, LoadOptions, WeightFile};

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

/// The installed OpenMMLab checkpoint reproduces the fixture's logits.
fn assert_openmmlab_parity(golden: &Path, weights: &Path) {
    let model = FastScnn::from_file(weights, &LoadOptions::default()).unwrap();
    let image = load_rgb_image(golden.join("seed0_c19_256x512_input0.png")).unwrap();
    let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(
        golden.join("mmseg_c19_256x512_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let stages = model.forward_stages(&input, false).unwrap();
    let d = max_abs_diff(&stages.logits, &expected["logits"]);
    assert!(d <= 1e-3, "logits max |diff| {d}");
    assert!(argmax_agreement(&stages.logits, &expected["logits"]) >= 0.999);
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
    assert_openmmlab_parity(&golden, &out);
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
