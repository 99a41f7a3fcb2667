//! `fastscnn info` on both layouts and both formats, and on files that are not checkpoints.

mod common;
use common::{assert_clean_failure, fastscnn, golden, pth_with_renamed_key};

fn info(weights: &std::path::Path) -> String {
    let out = fastscnn()
        .arg("info")
        .arg("--weights")
        .arg(weights)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn describes_both_layouts_in_both_formats() {
    let Some(golden) = golden() else { return };
    for file in ["fastscnn_seed0_c19.safetensors", "fastscnn_seed0_c19.pth"] {
        let text = info(&golden.join(file));
        assert!(text.contains("layout      reference"), "{text}");
        assert!(text.contains("classes     19"), "{text}");
        assert!(
            text.contains("parameters  1157174 (1138051 without the auxiliary heads)"),
            "{text}"
        );
        assert!(text.contains("tensors     231"), "{text}");
        assert!(text.contains("aux heads   higher-res"), "{text}");
    }
    assert!(info(&golden.join("fastscnn_seed0_c19.pth")).contains("format      pytorch"));
    let size = std::fs::metadata(golden.join("fastscnn_seed0_c19.safetensors"))
        .unwrap()
        .len();
    assert!(info(&golden.join("fastscnn_seed0_c19.safetensors"))
        .contains(&format!("size        {size} bytes")));

    let text = info(&golden.join("mmseg_fastscnn_c19.pth"));
    assert!(text.contains("layout      openmmlab"), "{text}");
    assert!(text.contains("aux heads   global, higher-res"), "{text}");
}

#[test]
fn files_that_are_not_checkpoints_fail_in_one_line() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let info = |path: &std::path::Path| {
        let mut cmd = fastscnn();
        cmd.arg("info").arg("--weights").arg(path);
        cmd
    };
    assert_clean_failure(&mut info(&dir.path().join("absent.pth")), "absent.pth");

    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "not a checkpoint\n").unwrap();
    assert_clean_failure(&mut info(&text), "notes.pth");

    let bytes = std::fs::read(golden.join("fastscnn_seed0_c19.pth")).unwrap();
    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&mut info(&truncated), "truncated.pth");

    let renamed = dir.path().join("renamed.pth");
    pth_with_renamed_key(
        &golden.join("fastscnn_seed0_c19.pth"),
        &renamed,
        "auxlayer.4.bias",
        "auxlayer.9.bias",
    );
    assert_clean_failure(&mut info(&renamed), "auxlayer.4.bias");
}

#[test]
fn without_weights_the_installed_default_is_used() {
    let Some(golden) = golden() else { return };
    let home = tempfile::tempdir().unwrap();
    assert_clean_failure(
        fastscnn().arg("info").env("FASTSCNN_HOME", home.path()),
        "fastscnn download",
    );
    std::fs::copy(
        golden.join("fastscnn_seed0_c19.safetensors"),
        home.path().join("default.safetensors"),
    )
    .unwrap();
    let out = fastscnn()
        .arg("info")
        .env("FASTSCNN_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("default.safetensors"));
}
