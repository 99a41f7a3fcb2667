//! Time per module of one Fast-SCNN forward pass (label map), median over several runs; run by
//! `cargo xtask profile` in a release build.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use fastscnn_benches::{random_tensor, reference_model};
use fastscnn_model::{
    image_to_tensor, load_rgb_image, ExecutionContext, FastScnn, Isa, LoadOptions,
};
use image::imageops::{self, FilterType};

#[derive(Debug, Parser)]
#[command(name = "profile")]
struct Args {
    /// Input size, HEIGHTxWIDTH.
    #[arg(long, default_value = "1024x2048")]
    size: String,
    /// Timed runs after one warm-up run; the median of each stage is shown.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Weights to profile; default: the reference network with constant weights (but for the
    /// resize + argmax, the time does not depend on the values).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// A frame to profile, resized to --size, instead of random values: the resize + argmax
    /// skips the scores where a block's source pixels share a label, so its time depends on
    /// the scene (and on trained weights, with --weights).
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// Threads of the execution context the frames run in (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Instruction set of the kernels: avx512, avx2, neon or portable (default: the
    /// processor's best).
    #[arg(long)]
    isa: Option<String>,
}

fn parse_size(size: &str) -> Result<(usize, usize)> {
    let (h, w) = size
        .split_once('x')
        .with_context(|| format!("--size {size}: expected HEIGHTxWIDTH, e.g. 1024x2048"))?;
    let (h, w): (usize, usize) = (
        h.parse()
            .with_context(|| format!("--size {size}: bad height"))?,
        w.parse()
            .with_context(|| format!("--size {size}: bad width"))?,
    );
    if h < 32 || w < 32 {
        bail!("--size {size}: both sides must be at least 32");
    }
    Ok((h, w))
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn run(args: &Args) -> Result<()> {
    let (h, w) = parse_size(&args.size)?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let isa = match &args.isa {
        Some(name) => Isa::from_name(name)
            .with_context(|| format!("--isa {name}: expected avx512, avx2, neon or portable"))?,
        None => Isa::detected(),
    };
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let context = ExecutionContext::new(isa, args.threads).map_err(|e| anyhow!("--isa: {e}"))?;
    let options = LoadOptions {
        context: Some(context.clone()),
        ..LoadOptions::default()
    };
    let model = match &args.weights {
        Some(path) => FastScnn::from_file(path, &options)?,
        None => reference_model()?.with_execution_context(context.clone())?,
    };
    let x = match &args.image {
        Some(path) => {
            let image = load_rgb_image(path)?;
            let image = imageops::resize(&image, w as u32, h as u32, FilterType::Triangle);
            image_to_tensor(&image, &model.config().normalization, &Device::Cpu)?
        }
        None => random_tensor(&[1, 3, h, w], 7)?,
    };
    let mut order = Vec::new();
    let mut times: HashMap<&'static str, Vec<Duration>> = HashMap::new();
    model.predict_profiled(&x, |_, _| {})?;
    for _ in 0..args.runs {
        model.predict_profiled(&x, |stage, t| {
            if !order.contains(&stage) {
                order.push(stage);
            }
            times.entry(stage).or_default().push(t);
        })?;
    }
    let medians: Vec<(&str, Duration)> = order
        .iter()
        .map(|stage| (*stage, median(times.get_mut(stage).expect("recorded"))))
        .collect();
    let total: Duration = medians.iter().map(|(_, t)| *t).sum();
    println!(
        "label map at {h}x{w}, {} layout, BatchNorm folded, CPU, {} threads, {} kernels; median \
         of {} runs per stage",
        model.config().layout,
        context.threads(),
        context.isa().name(),
        args.runs
    );
    println!("{:<24}{:>10}{:>8}", "stage", "ms", "share");
    for (stage, t) in &medians {
        println!(
            "{stage:<24}{:>10.2}{:>7.1}%",
            t.as_secs_f64() * 1e3,
            100.0 * t.as_secs_f64() / total.as_secs_f64()
        );
    }
    println!("{:<24}{:>10.2}", "total", total.as_secs_f64() * 1e3);
    Ok(())
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_are_checked() {
        assert_eq!(parse_size("512x1024").unwrap(), (512, 1024));
        assert!(parse_size("512").is_err());
        assert!(parse_size("16x16").is_err());
        let mut v = vec![
            Duration::from_millis(3),
            Duration::from_millis(1),
            Duration::from_millis(2),
        ];
        assert_eq!(median(&mut v), Duration::from_millis(2));
    }
}
