//! `fastscnn bench`: the time of one frame, so anyone can compare against another engine on the
//! same machine.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Module, Tensor};
use fastscnn_core::atomic_write::write_atomically;
use fastscnn_cpu::ExecutionContext;
use fastscnn_model::{image_to_tensor, load_rgb_image};
use image::imageops::{self, FilterType};

use crate::cli::{BenchArgs, BenchMode};
use crate::file_roles::FileRoles;
use crate::{device, weights};

pub fn run(args: &BenchArgs, context: &ExecutionContext) -> Result<()> {
    let (h, w) = args.size;
    if (h as u64) * (w as u64) > args.max_pixels {
        bail!(
            "--size {h}x{w}: {:.1} megapixels, over the budget of {:.1} (--max-pixels {})",
            (h * w) as f64 / 1e6,
            args.max_pixels as f64 / 1e6,
            args.max_pixels
        );
    }
    let kept = !args.fresh_outputs && fastscnn_cpu::keep_freed_memory();
    let device = device::select(args.device)?;
    let (model, path) = weights::load_model(&args.weights, &device, context)?;
    if let Some(dest) = &args.json {
        let mut roles = FileRoles::default();
        roles.input(&path, "the weights");
        if let Some(image) = &args.image {
            roles.input(image, "--image");
        }
        roles.output(dest, "--json")?;
    }
    let model = if args.candle_ops {
        model.with_cpu_kernels(false)?
    } else {
        model
    };
    weights::check_isa_applies(args.execution.isa, &model)?;
    // candle's own operations size themselves from RAYON_NUM_THREADS, not from the context.
    let (engine, threads) = if model.uses_cpu_kernels() {
        let engine = format!("fused CPU kernels ({})", context.isa().name());
        (engine, context.threads())
    } else {
        let threads = candle_core::utils::get_num_threads();
        ("candle ops".to_string(), threads)
    };
    // Noise by default: no file needed; but the network labels noise almost uniformly, which
    // makes the label map faster than on a real frame.
    let input = match &args.image {
        Some(path) => {
            let image = load_rgb_image(path)?;
            let image = imageops::resize(&image, w as u32, h as u32, FilterType::Triangle);
            image_to_tensor(&image, &model.config().normalization, &device)?
        }
        None => Tensor::randn(0f32, 1.0, (1, 3, h, w), &device)?,
    };
    let run_once = || -> Result<()> {
        match args.mode {
            BenchMode::Logits | BenchMode::Probs => {
                let scores = if args.mode == BenchMode::Logits {
                    model.forward(&input)?
                } else {
                    model.probabilities(&input)?
                };
                // Reading one value back waits for an asynchronous device.
                scores
                    .flatten_all()?
                    .get(0)?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?;
            }
            BenchMode::Labels => {
                model
                    .predict(&input)?
                    .flatten_all()?
                    .get(0)?
                    .to_scalar::<u32>()?;
            }
        }
        Ok(())
    };
    for _ in 0..args.warmup {
        run_once()?;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(args.iters as usize);
    for _ in 0..args.iters {
        let start = Instant::now();
        run_once()?;
        times.push(start.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median_ms = ms(times[times.len() / 2]);
    let min_ms = ms(times[0]);
    let fps = 1e3 / median_ms;
    let mode = match args.mode {
        BenchMode::Logits => "logits",
        BenchMode::Labels => "labels",
        BenchMode::Probs => "probs",
    };
    let peak_rss_mb = peak_rss_mb();
    let rss = peak_rss_mb
        .map(|mb| format!(", peak RSS {mb:.0} MB"))
        .unwrap_or_default();
    let outputs = if kept {
        "freed memory kept"
    } else {
        "fresh output memory"
    };
    println!(
        "{mode} at {h}x{w}, {} ({} layout), {engine}, {threads} threads, {outputs}, input {}, {} runs: median {median_ms:.2} ms, min {min_ms:.2} ms, {fps:.2} fps{rss}",
        path.display(),
        model.config().layout,
        args.image.as_ref().map_or("noise".to_string(), |p| p.display().to_string()),
        args.iters
    );
    if let Some(dest) = &args.json {
        let report = serde_json::json!({
            "median_ms": median_ms, "min_ms": min_ms, "fps": fps, "mode": mode,
            "height": h, "width": w, "iters": args.iters, "threads": threads,
            "weights": path.display().to_string(), "engine": engine, "peak_rss_mb": peak_rss_mb,
            "freed_memory_kept": kept,
            "image": args.image.as_ref().map(|p| p.display().to_string()),
        });
        let text = serde_json::to_string_pretty(&report)? + "\n";
        write_atomically(dest, |tmp| {
            std::fs::write(tmp, text).with_context(|| format!("{}: cannot write", dest.display()))
        })?;
    }
    Ok(())
}

/// The process's peak resident memory in MB (`VmHWM`), where the system reports it (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
