//! `fastscnn bench`: the time of one frame (or batch), or of one training step, so anyone can
//! compare against another engine on the same machine.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use fastscnn_core::atomic_write::write_atomically;
use fastscnn_cpu::ExecutionContext;
use fastscnn_model::{image_to_tensor, load_rgb_image, FastScnn, WeightFile};
use fastscnn_train::{optimizer::Sgd, TrainStep, TrainableModel};
use image::imageops::{self, FilterType};

use crate::cli::{BenchArgs, BenchMode};
use crate::file_roles::FileRoles;
use crate::precision::Precision;
use crate::{device, weights};

pub fn run(args: &BenchArgs, context: &ExecutionContext) -> Result<()> {
    let (h, w) = args.size;
    // u128: three factors of up to 32 bits each.
    let pixels = h as u128 * w as u128 * args.batch as u128;
    if pixels > args.max_pixels as u128 {
        bail!(
            "--size {h}x{w} x --batch {}: {:.1} megapixels, over the budget of {:.1} \
             (--max-pixels {})",
            args.batch,
            pixels as f64 / 1e6,
            args.max_pixels as f64 / 1e6,
            args.max_pixels
        );
    }
    if args.mode == BenchMode::Train && args.dtype != Precision::F32 {
        bail!(
            "--dtype {}: --mode train trains in f32 (half precision is for inference)",
            args.dtype.name()
        );
    }
    let kept = !args.fresh_outputs && fastscnn_cpu::keep_freed_memory();
    let device = device::select(args.device)?;
    let (model, path) = weights::load_model(&args.weights, &device, args.dtype, context)?;
    if let Some(dest) = &args.json {
        let mut roles = FileRoles::default();
        roles.input(&path, "the weights");
        if let Some(image) = &args.image {
            roles.input(image, "--image");
        }
        roles.output(dest, "--json")?;
    }
    if args.mode == BenchMode::Train && (args.candle_ops || args.execution.isa.is_some()) {
        bail!(
            "--mode train runs the training ops (candle's and this project's backward kernels), \
             which take neither --candle-ops nor --isa"
        );
    }
    let model = if args.candle_ops {
        model.with_cpu_kernels(false)?
    } else {
        model
    };
    weights::check_isa_applies(args.execution.isa, &model)?;
    // candle's own operations size themselves from RAYON_NUM_THREADS (which --threads sets),
    // not from the context; the training ops run in rayon's pool, which --threads sizes.
    let (engine, threads) = if args.mode == BenchMode::Train {
        ("training ops".to_string(), rayon::current_num_threads())
    } else if model.uses_cpu_kernels() {
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
            let frame = image_to_tensor(&image, &model.config().normalization, &device)?;
            Tensor::cat(&vec![&frame; args.batch], 0)?
        }
        None => Tensor::randn(0f32, 1.0, (args.batch, 3, h, w), &device)?,
    }
    .to_dtype(model.dtype())?;
    let mut training = match args.mode {
        BenchMode::Train => Some(Training::new(&model, &path, &device, args.batch, (h, w))?),
        _ => None,
    };
    let mut step = 0u64;
    let mut run_once = || -> Result<()> {
        match args.mode {
            BenchMode::Train => {
                let training = training.as_mut().expect("built for --mode train");
                step += 1;
                training.step(&input, step)?;
            }
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
        // A GPU runs the step's backward pass and update after `step` returns: wait for them,
        // so that each timed run holds all of its work.
        device.synchronize()?;
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
    let fps = args.batch as f64 * 1e3 / median_ms;
    let mode = match args.mode {
        BenchMode::Logits => "logits",
        BenchMode::Labels => "labels",
        BenchMode::Probs => "probs",
        BenchMode::Train => "train",
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
        "{mode} at {h}x{w}, batch {}, {}, {} ({} layout), {engine}, {threads} threads, \
         {outputs}, input {}, {} runs: median {median_ms:.2} ms, min {min_ms:.2} ms, \
         {fps:.2} fps{rss}",
        args.batch,
        args.dtype.name(),
        path.display(),
        model.config().layout,
        args.image
            .as_ref()
            .map_or("noise".to_string(), |p| p.display().to_string()),
        args.iters
    );
    if let Some(dest) = &args.json {
        let report = serde_json::json!({
            "median_ms": median_ms, "min_ms": min_ms, "fps": fps, "mode": mode,
            "height": h, "width": w, "batch": args.batch, "iters": args.iters, "threads": threads,
            "weights": path.display().to_string(), "engine": engine, "peak_rss_mb": peak_rss_mb,
            "freed_memory_kept": kept, "dtype": args.dtype.name(),
            "image": args.image.as_ref().map(|p| p.display().to_string()),
        });
        let text = serde_json::to_string_pretty(&report)? + "\n";
        write_atomically(dest, |tmp| {
            std::fs::write(tmp, text).with_context(|| format!("{}: cannot write", dest.display()))
        })?;
    }
    Ok(())
}

/// A training step of the weights' own network, as `fastscnn train` runs it: the paper's loss
/// (auxiliary weight 0.4) and dropout 0.1 ([`TrainStep::default`]), SGD with momentum 0.9 and
/// weight decay 4e-5 at a small learning rate (1e-3), so that many timed steps stay finite.
struct Training {
    model: TrainableModel,
    optimizer: Sgd,
    step: TrainStep,
    labels: Tensor,
}

impl Training {
    /// Every auxiliary head of the weights' preset, loaded where the file has it; labels in
    /// bands of every class in raster order, so that each class has pixels in each frame of at
    /// least as many pixels as classes.
    fn new(
        model: &FastScnn,
        path: &Path,
        device: &Device,
        batch: usize,
        (h, w): (usize, usize),
    ) -> Result<Self> {
        let classes = model.classes().len();
        let config = model.config().layout.config(classes);
        let mut trainable = TrainableModel::new(&config, device, 0)?;
        trainable.model = trainable
            .model
            .clone()
            .with_classes(model.classes().clone())?;
        trainable.load(&WeightFile::open(path)?, true)?;
        let optimizer = Sgd::new(trainable.params(), 0.9, 4e-5);
        let plane = h * w;
        let labels: Vec<u8> = (0..batch * plane)
            .map(|i| (i % plane * classes / plane) as u8)
            .collect();
        Ok(Self {
            model: trainable,
            optimizer,
            step: TrainStep::default(),
            labels: Tensor::from_vec(labels, (batch, h, w), device)?,
        })
    }

    fn step(&mut self, images: &Tensor, seed: u64) -> Result<()> {
        let loss = self.step.run(
            &self.model,
            &mut self.optimizer,
            images,
            &self.labels,
            1e-3,
            seed,
        )?;
        if !loss.is_finite() {
            bail!("the training step's loss became {loss}");
        }
        Ok(())
    }
}

/// The process's peak resident memory in MB (`VmHWM`), where the system reports it (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
