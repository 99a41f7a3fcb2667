//! Locating the shared test fixtures (`../shared` beside the checkout), seeded tensors and a fake
//! download server. For this workspace's tests; not part of the supported API.

use std::path::PathBuf;

mod fake_hub;
pub use fake_hub::FakeHub;

/// Proxy variables a download client honours; tests that talk to a [`FakeHub`] on 127.0.0.1
/// remove them from the child's environment so that a proxy set in CI is never asked.
pub const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

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
    assert!(
        !in_ci(),
        "shared fixtures not found at {} (set FASTSCNN_SHARED); CI=true requires them",
        dir.display()
    );
    eprintln!(
        "skipping: shared fixtures not found at {} (set FASTSCNN_SHARED)",
        dir.display()
    );
    None
}

/// How far a model state after one training step is from the reference implementation's
/// (`golden/train_step/`), tensor by tensor: the largest |difference| of each weight, and of each
/// BatchNorm running statistic relative to 1 + |value|. Every tensor of the fixture's state is
/// compared (the step's `input`, `labels`, `loss` and `lr` are not state).
///
/// # Panics
/// If `state` lacks a tensor of the fixture's, or holds it with another size.
pub fn train_step_differences(
    expected: &std::collections::HashMap<String, candle_core::Tensor>,
    state: &std::collections::HashMap<String, candle_core::Tensor>,
) -> std::collections::BTreeMap<String, f64> {
    let values = |t: &candle_core::Tensor| -> Vec<f64> {
        t.to_dtype(candle_core::DType::F64)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .expect("a CPU tensor")
    };
    expected
        .iter()
        .filter(|(key, _)| !["input", "labels", "loss", "lr"].contains(&key.as_str()))
        .map(|(key, want)| {
            let got = state
                .get(key)
                .unwrap_or_else(|| panic!("the trained state has no `{key}`"));
            let (want, got) = (values(want), values(got));
            assert_eq!(want.len(), got.len(), "`{key}` size");
            let statistic = is_running_statistic(key);
            let worst = want
                .iter()
                .zip(&got)
                .map(|(w, g)| {
                    let d = (w - g).abs();
                    if statistic {
                        d / (1.0 + w.abs())
                    } else {
                        d
                    }
                })
                .fold(0f64, f64::max);
            (key.clone(), worst)
        })
        .collect()
}

/// Whether a state key is a BatchNorm running statistic rather than a trained weight.
pub fn is_running_statistic(key: &str) -> bool {
    key.ends_with(".running_mean") || key.ends_with(".running_var")
}

/// The largest of `differences` whose key `keep` accepts, with its key (`("", 0.0)` for none).
pub fn worst_difference(
    differences: &std::collections::BTreeMap<String, f64>,
    keep: impl Fn(&str) -> bool,
) -> (String, f64) {
    differences
        .iter()
        .filter(|(key, _)| keep(key))
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or((String::new(), 0.0), |(key, d)| (key.clone(), *d))
}

/// The bounds of an f32 training step against the reference's (`golden/train_step/`): the loss
/// within 1e-4 relative, every running statistic within 1e-4 (relative to 1 + |value|), every
/// weight within 1e-4 but the learning-to-downsample ones, within 3e-4. Those are the furthest
/// behind one pixel of the classifier's first depthwise block whose pre-activation is -8.4e-7 in
/// exact arithmetic, within f32's accumulated rounding of zero: kernels whose order of operations
/// lands it above zero let its gradient pass, which moves the BatchNorm-centred gradient sums
/// behind it by more than 1e-4 (`fastscnn-train`'s `golden_train_step` tests: AVX2 and NEON land
/// it below, within 1.3e-5; in f64 the step is within 2e-6).
///
/// # Panics
/// If a bound is exceeded, naming the tensor.
pub fn assert_train_step_within_f32_bounds(
    loss_error: f64,
    differences: &std::collections::BTreeMap<String, f64>,
) {
    assert!(loss_error <= 1e-4, "loss relative error {loss_error:e}");
    let (key, d) = worst_difference(differences, is_running_statistic);
    assert!(d <= 1e-4, "`{key}` differs by up to {d:e}");
    let beyond_stem =
        |k: &str| !is_running_statistic(k) && !k.starts_with("learning_to_downsample.");
    let (key, d) = worst_difference(differences, beyond_stem);
    assert!(d <= 1e-4, "`{key}` differs by up to {d:e}");
    let (key, d) = worst_difference(differences, |k| !is_running_statistic(k));
    assert!(d <= 3e-4, "`{key}` differs by up to {d:e}");
}

/// `jpeg` with an EXIF segment holding only an orientation tag (1 to 8), as a camera writes a
/// photo it took turned.
pub fn jpeg_with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
    tiff.extend(orientation.to_le_bytes());
    tiff.extend([0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

/// Whether this run is CI's (`CI=true` or `CI=1`), where a test must never pass by skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The first CUDA device, for the tests of the CUDA kernels: `None` after saying "skipped: no
/// CUDA device" where there is none (a build without the `cuda` feature, a machine without a
/// GPU, as in CI), unless `FASTSCNN_REQUIRE_CUDA` is set (the GPU check, `.ci/gpu-check`), where
/// a test must not pass by skipping.
pub fn cuda_device() -> Option<candle_core::Device> {
    match candle_core::Device::new_cuda(0) {
        Ok(device) if device.is_cuda() => Some(device),
        found => {
            let why = found
                .err()
                .map_or("not a CUDA device".to_string(), |e| e.to_string());
            assert!(
                std::env::var_os("FASTSCNN_REQUIRE_CUDA").is_none(),
                "FASTSCNN_REQUIRE_CUDA is set, but there is no CUDA device: {why}"
            );
            eprintln!("skipped: no CUDA device ({why})");
            None
        }
    }
}

/// What a test needs from the machine (a program, a device): `Some` when `found` is `Ok`;
/// otherwise `None` after saying on stderr that the test is skipped, and under CI a failure.
pub fn needed<T, E: std::fmt::Display>(found: Result<T, E>) -> Option<T> {
    match found {
        Ok(value) => Some(value),
        Err(e) => {
            assert!(!in_ci(), "CI needs it: {e}");
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// A tensor of `shape` with values uniform in [-1, 1), the same for the same seed on every
/// platform (xorshift64*, so tests and benches need no RNG crate).
pub fn random_tensor(shape: &[usize], seed: u64) -> candle_core::Result<candle_core::Tensor> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 random bits
            bits as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
}

/// Class scores (classes, h, w) shaped like a street scene's: each class highest in a region of
/// its own (around a seeded point), plus a little noise, so most of a label map lies inside one
/// region and some of it on the borders between them; random scores have a border at every
/// pixel.
pub fn region_scores(classes: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
    let values = |shape: &[usize], seed| -> Vec<f32> {
        random_tensor(shape, seed)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .expect("a seeded CPU tensor")
    };
    let noise = values(&[classes, h, w], seed);
    let centres = values(&[classes, 2], seed + 1);
    let mut scores = vec![0f32; classes * h * w];
    for c in 0..classes {
        let (cy, cx) = (centres[2 * c] + 1.0, centres[2 * c + 1] + 1.0);
        for y in 0..h {
            for x in 0..w {
                let dy = y as f32 / h as f32 * 2.0 - cy;
                let dx = x as f32 / w as f32 * 2.0 - cx;
                let at = (c * h + y) * w + x;
                scores[at] = -(dy * dy + dx * dx) + 0.02 * noise[at];
            }
        }
    }
    scores
}

/// The largest absolute element-wise difference of two same-shaped f32 tensors.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let d = (a - b).and_then(|d| {
        d.abs()?
            .max_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()
    });
    d.expect("difference of two CPU tensors")
}

/// The largest absolute value of a tensor (of any float type, on any device), as f32.
pub fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .and_then(|a| {
            a.max_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_scalar::<f32>()
        })
        .expect("the largest value of a float tensor")
}

/// max |a − b| over max |b|: the difference relative to the reference `b`'s largest value.
pub fn relative_max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    max_abs_diff(a, b) / max_abs(b)
}

/// The class index of every pixel of (N, C, H, W) scores, flattened.
pub fn argmax_labels(scores: &candle_core::Tensor) -> Vec<u32> {
    scores
        .argmax(1)
        .and_then(|l| l.flatten_all()?.to_vec1::<u32>())
        .expect("argmax of a CPU tensor")
}

/// The fraction of pixels whose argmax class agrees between two score tensors.
pub fn argmax_agreement(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    share_equal(&argmax_labels(a), &argmax_labels(b))
}

/// The share of pixels where a label map (u32, any shape) equals the argmax of `logits`.
pub fn label_agreement(labels: &candle_core::Tensor, logits: &candle_core::Tensor) -> f64 {
    let labels: Vec<u32> = labels.flatten_all().unwrap().to_vec1().unwrap();
    share_equal(&labels, &argmax_labels(logits))
}

fn share_equal(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len(), "label counts differ");
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// What `build` makes (f32, CPU) from seeded random variables. A `VarMap` creates the variables
/// a layer asks for as zeros, which makes every conv output its bias and any two ways of
/// computing a layer agree; so `build` runs once to create them, they are set to seeded values,
/// and it runs again on the same map (a folded BatchNorm is folded at build
/// time).
pub fn random_layer<T>(
    seed: u64,
    build: impl Fn(candle_nn::VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    let varmap = candle_nn::VarMap::new();
    let vb = || {
        candle_nn::VarBuilder::from_varmap(
            &varmap,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
    };
    build(vb())?;
    randomize_vars(&varmap, seed)?;
    build(vb())
}

/// Sets every variable in `varmap` to seeded random values: weights uniform with variance
/// 2 / fan-in (a deep stack of ReLU layers neither vanishes nor overflows), biases and BatchNorm
/// shifts in [-0.1, 0.1), BatchNorm scales and running variances in [0.5, 1.5).
fn randomize_vars(varmap: &candle_nn::VarMap, seed: u64) -> candle_core::Result<()> {
    let mut vars: Vec<(String, candle_core::Var)> =
        varmap.data().lock().unwrap().clone().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (name, var)) in vars.iter().enumerate() {
        let values = random_tensor(var.dims(), seed.wrapping_mul(1000).wrapping_add(i as u64))?
            .to_dtype(var.dtype())?;
        let values =
            if name.ends_with("running_var") || (var.rank() == 1 && name.ends_with("weight")) {
                ((values * 0.5)? + 1.0)?
            } else if var.rank() > 1 {
                let fan_in: usize = var.dims()[1..].iter().product();
                // Uniform in [-a, a) has variance a² / 3.
                (values * (3.0f64 / fan_in as f64).sqrt())?
            } else {
                (values * 0.5)?
            };
        var.set(&values)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tensors_are_seeded_and_in_range() {
        let a = random_tensor(&[1000], 7).unwrap().to_vec1::<f32>().unwrap();
        let b = random_tensor(&[1000], 7).unwrap().to_vec1::<f32>().unwrap();
        let c = random_tensor(&[1000], 8).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert!(a.iter().any(|&v| v < -0.9) && a.iter().any(|&v| v > 0.9));
    }

    #[test]
    fn argmax_agreement_counts_matching_pixels() {
        // (1, 2, 1, 4) scores: classes [1, 0, 1, 0] against [1, 1, 1, 0].
        let t = |v: [f32; 8]| {
            candle_core::Tensor::from_vec(v.to_vec(), (1, 2, 1, 4), &candle_core::Device::Cpu)
                .unwrap()
        };
        let a = t([0., 1., 0., 1., 1., 0., 1., 0.]);
        let b = t([0., 0., 0., 1., 1., 1., 1., 0.]);
        assert_eq!(argmax_labels(&a), [1, 0, 1, 0]);
        assert_eq!(argmax_labels(&b), [1, 1, 1, 0]);
        assert_eq!(argmax_agreement(&a, &b), 0.75);
        let labels =
            candle_core::Tensor::new(&[[1u32, 0, 0, 0]], &candle_core::Device::Cpu).unwrap();
        assert_eq!(label_agreement(&labels, &a), 0.75);
    }
}
