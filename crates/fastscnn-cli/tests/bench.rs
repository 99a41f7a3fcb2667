//! `fastscnn bench`: the figures it promises, in its text and its JSON.

mod common;
use common::{fastscnn, golden};

#[test]
fn reports_median_min_and_fps() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    for mode in ["logits", "labels", "probs"] {
        let out = fastscnn()
            .arg("bench")
            .arg("--weights")
            .arg(golden.join("mmseg_fastscnn_c19.pth"))
            .args([
                "--size",
                "64x128",
                "--iters",
                "3",
                "--warmup",
                "1",
                "--threads",
                "1",
                "--mode",
                mode,
            ])
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with(&format!("{mode} at 64x128")), "{text}");
        // The binary keeps freed memory for reuse where the allocator lets it (glibc).
        let kept = cfg!(all(target_os = "linux", target_env = "gnu"));
        let outputs = if kept {
            "freed memory kept"
        } else {
            "fresh output memory"
        };
        assert!(
            text.contains(&format!("1 threads, {outputs}, input noise, 3 runs")),
            "{text}"
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let (median, min, fps) = (
            report["median_ms"].as_f64().unwrap(),
            report["min_ms"].as_f64().unwrap(),
            report["fps"].as_f64().unwrap(),
        );
        assert!(min > 0.0 && median >= min);
        assert!((fps - 1e3 / median).abs() < 1e-9);
        assert_eq!(report["mode"], mode);
        assert_eq!(report["freed_memory_kept"], kept);
        assert!(report["image"].is_null());
        assert!(report["engine"]
            .as_str()
            .unwrap()
            .starts_with("fused CPU kernels"));
        if cfg!(target_os = "linux") {
            let rss = report["peak_rss_mb"].as_f64().unwrap();
            assert!(rss > 1.0 && rss < 100_000.0, "{rss}");
        }
    }
}

/// `fastscnn bench` on the golden safetensors at 64x128, two frames, with `extra` arguments: its
/// text and its JSON report, the run checked to succeed.
fn quick_bench(golden: &std::path::Path, extra: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = fastscnn()
        .arg("bench")
        .arg("--weights")
        .arg(golden.join("fastscnn_seed0_c19.safetensors"))
        .args(["--size", "64x128", "--iters", "2", "--warmup", "0"])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (String::from_utf8(out.stdout).unwrap(), report)
}

#[test]
fn candle_ops_time_the_path_without_the_cpu_kernels() {
    let Some(golden) = golden() else { return };
    let (text, report) = quick_bench(&golden, &["--candle-ops"]);
    assert!(text.contains("candle ops"), "{text}");
    assert_eq!(report["engine"], "candle ops");
}

#[test]
fn half_precision_is_timed_and_named() {
    let Some(golden) = golden() else { return };
    let (text, report) = quick_bench(&golden, &["--dtype", "f16", "--mode", "logits"]);
    assert!(
        text.starts_with("logits at 64x128, batch 1, f16, "),
        "{text}"
    );
    assert_eq!(report["dtype"], "f16");
    // The fused CPU kernels are f32: f16 runs through candle's ops.
    assert_eq!(report["engine"], "candle ops");
    let (_, report) = quick_bench(&golden, &[]);
    assert_eq!(report["dtype"], "f32");
    // Training is in f32; bf16 has no CPU matrix product in candle.
    for (args, flag) in [
        (&["--mode", "train", "--dtype", "f16"][..], "--dtype f16"),
        (&["--dtype", "bf16"][..], "--dtype bf16"),
    ] {
        common::assert_clean_failure(
            fastscnn()
                .arg("bench")
                .arg("--weights")
                .arg(golden.join("fastscnn_seed0_c19.safetensors"))
                .args(args),
            flag,
        );
    }
}

#[test]
fn fresh_outputs_leave_the_allocator_default() {
    let Some(golden) = golden() else { return };
    let (text, report) = quick_bench(&golden, &["--fresh-outputs"]);
    assert!(text.contains("fresh output memory"), "{text}");
    assert_eq!(report["freed_memory_kept"], false);
}

#[test]
fn an_image_is_timed_resized_to_the_size() {
    let Some(golden) = golden() else { return };
    let image = golden.join("seed0_c19_256x512_input0.png");
    let (text, report) = quick_bench(&golden, &["--image", image.to_str().unwrap()]);
    assert!(
        text.contains(&format!("input {}, 2 runs", image.display())),
        "{text}"
    );
    assert_eq!(report["image"], image.display().to_string());
}

#[test]
fn an_unreadable_image_is_one_line_naming_it() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("frame.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let out = fastscnn()
        .arg("bench")
        .arg("--weights")
        .arg(golden.join("fastscnn_seed0_c19.safetensors"))
        .args(["--size", "64x128", "--iters", "1"])
        .arg("--image")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
}

#[test]
fn a_training_step_is_timed_on_a_batch() {
    let Some(golden) = golden() else { return };
    let (text, report) = quick_bench(&golden, &["--mode", "train", "--batch", "2"]);
    assert!(text.starts_with("train at 64x128, batch 2"), "{text}");
    assert_eq!(report["mode"], "train");
    assert_eq!(report["batch"], 2);
    assert_eq!(report["engine"], "training ops");
    let (median, fps) = (
        report["median_ms"].as_f64().unwrap(),
        report["fps"].as_f64().unwrap(),
    );
    assert!((fps - 2e3 / median).abs() < 1e-9, "{fps} frames/s");
    // Freed memory kept, as `fastscnn train` keeps it.
    let kept = cfg!(all(target_os = "linux", target_env = "gnu"));
    assert_eq!(report["freed_memory_kept"], kept);

    // The training ops take no instruction set of the fused path's.
    common::assert_clean_failure(
        fastscnn()
            .arg("bench")
            .arg("--weights")
            .arg(golden.join("fastscnn_seed0_c19.safetensors"))
            .args(["--mode", "train", "--isa", "portable"]),
        "--isa",
    );
}

#[test]
fn a_batch_too_large_to_count_is_refused_in_one_line() {
    let Some(golden) = golden() else { return };
    // 131072 x 65536 x 2^31 pixels: 2^64, which wraps a u64 to 0.
    common::assert_clean_failure(
        fastscnn()
            .arg("bench")
            .arg("--weights")
            .arg(golden.join("fastscnn_seed0_c19.safetensors"))
            .args(["--size", "131072x65536", "--batch", "2147483648"]),
        "--max-pixels",
    );
}
