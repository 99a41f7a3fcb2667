//! The command-line interface, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fastscnn_core::layers::DEFAULT_DROPOUT;
use fastscnn_cpu::Isa;
use fastscnn_data::DatasetFormat;
use fastscnn_train::Augment;
use fastscnn_weights::{HubFile, WeightSource, WeightsError};

use crate::device::DeviceArg;
use crate::precision::Precision;

/// Real-time semantic segmentation of street scenes with Fast-SCNN.
#[derive(Debug, Parser)]
#[command(name = "fastscnn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Segment images: colour maps, overlays, train-id or label-id maps, probabilities.
    Segment(SegmentArgs),
    /// Score weights on a labelled Cityscapes split: IoU per class and category, mIoU, accuracy.
    Eval(EvalArgs),
    /// Describe a checkpoint: layout, classes, parameters, tensors, size.
    Info(InfoArgs),
    /// Write `*_gtFine_labelTrainIds.png` beside every `*_gtFine_labelIds.png` of a Cityscapes copy.
    Prepare(PrepareArgs),
    /// Train Fast-SCNN with the paper's recipe (every value overridable); resumable.
    Train(TrainArgs),
    /// Time the network on one frame size: median and min ms per frame, fps.
    Bench(BenchArgs),
    /// Fetch published weights, check their sha256, convert them to safetensors and install them
    /// where the other commands find them without --weights. Default: OpenMMLab's Cityscapes
    /// Fast-SCNN.
    Download(DownloadArgs),
}

impl Command {
    /// `--threads` and `--isa` of the command, when it runs the network.
    pub fn execution(&self) -> ExecutionArgs {
        let none = ExecutionArgs {
            threads: None,
            isa: None,
        };
        match self {
            Command::Segment(a) => a.execution,
            Command::Eval(a) => a.execution,
            Command::Bench(a) => a.execution,
            Command::Train(a) => ExecutionArgs {
                threads: a.threads,
                ..none
            },
            Command::Info(_) | Command::Prepare(_) | Command::Download(_) => none,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Class scores at the input resolution.
    Logits,
    /// The label map (the paper's "cls" output).
    Labels,
    /// Per-pixel class probabilities at the input resolution (the paper's "prob" output).
    Probs,
    /// One training step from the weights: the forward pass in training mode with the
    /// auxiliary heads, the loss, the backward pass and the SGD update (`fastscnn train`'s step).
    Train,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Frame size, HEIGHTxWIDTH.
    #[arg(long, value_parser = size_pair, default_value = "1024x2048")]
    pub size: (usize, usize),
    #[arg(long, value_enum, default_value = "labels")]
    pub mode: BenchMode,
    /// Frames per run (per step for `--mode train`).
    #[arg(long, default_value_t = 1, value_parser = batch_size)]
    pub batch: usize,
    /// Timed runs (at most 100000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub iters: u32,
    /// Untimed runs first (at most 100000).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub warmup: u32,
    /// Time this frame, resized to --size, instead of random noise: the label map skips the
    /// scores of output blocks whose source pixels share a label, so its time depends on the
    /// scene (noise, on which the network's labels hardly vary, is a fast case).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub execution: ExecutionArgs,
    /// Also write `median_ms`, `min_ms`, `fps` and `peak_rss_mb` (and the setup) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Run through candle's ops instead of the fused CPU kernels: the path every other device and
    /// training take, for comparison.
    #[arg(long)]
    pub candle_ops: bool,
    /// Leave the C allocator's default policy, under which each frame's output (90 MB of logits
    /// at 768x1536) is fresh memory the kernel zeroes first: what a program embedding the library
    /// gets unless it calls `fastscnn_cpu::keep_freed_memory`. By default `fastscnn` keeps
    /// freed memory for reuse, as for `segment` and `eval`.
    #[arg(long)]
    pub fresh_outputs: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// The precision of the weights and activations, for the inference modes: f16 and bf16 are
    /// for GPUs (on the CPU f16 runs through candle's ops, slower than f32's fused kernels, and
    /// bf16 is refused).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// The largest frame, in pixels, to time (see `segment --max-pixels`).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS, value_parser = pixel_count)]
    pub max_pixels: u64,
}

/// Where the network runs, for the commands that run its inference.
#[derive(Debug, Clone, Copy, Args)]
pub struct ExecutionArgs {
    /// Threads the fused CPU path, rayon's pool and candle's own operations (`bench
    /// --candle-ops`, training) run on (default: all cores; at most 4 per core).
    #[arg(long, value_parser = thread_count)]
    pub threads: Option<usize>,
    /// The CPU kernels to run: avx512, avx2, neon or portable (default: the best this processor
    /// has). For comparing kernels; every set gives the same results within 1e-3.
    #[arg(long, value_parser = isa_name)]
    pub isa: Option<Isa>,
}

fn isa_name(s: &str) -> Result<Isa, String> {
    Isa::from_name(s).ok_or_else(|| format!("`{s}` is not one of avx512, avx2, neon, portable"))
}

/// Where the weights come from: a local file, or a Hugging Face Hub repository.
#[derive(Debug, Args)]
pub struct WeightsArgs {
    /// Checkpoint: safetensors or a PyTorch .pth/.pt, in the reference or the OpenMMLab layout
    /// (told apart by the key names). Default: the weights `fastscnn download` installed
    /// (`$FASTSCNN_HOME/default.safetensors`).
    #[arg(long, value_name = "FILE", conflicts_with = "hf_repo")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// A file of a Hugging Face Hub model repository.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// Take the weights from this Hugging Face Hub model repository, through the local Hub cache
    /// (honours HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE).
    #[arg(long, value_name = "OWNER/NAME")]
    pub hf_repo: Option<String>,
    /// The file in --hf-repo.
    #[arg(
        long,
        value_name = "FILE",
        requires = "hf_repo",
        default_value = "model.safetensors"
    )]
    pub hf_file: String,
    /// Branch, tag or commit of --hf-repo.
    #[arg(long, value_name = "REV", requires = "hf_repo", default_value = "main")]
    pub revision: String,
}

impl HubArgs {
    /// The Hub file named, if --hf-repo was given.
    pub fn file(&self) -> Result<Option<HubFile>, WeightsError> {
        self.hf_repo
            .as_deref()
            .map(|repo| HubFile::new(repo, &self.hf_file, &self.revision))
            .transpose()
    }
}

impl WeightsArgs {
    /// Where the arguments say the weights come from.
    pub fn source(&self) -> Result<WeightSource, WeightsError> {
        Ok(match (&self.weights, self.hub.file()?) {
            (Some(path), _) => WeightSource::File(path.clone()),
            (None, Some(file)) => WeightSource::Hub(file),
            (None, None) => WeightSource::Installed,
        })
    }
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Direct URL of a PyTorch or safetensors checkpoint.
    #[arg(long, conflicts_with = "hf_repo")]
    pub url: Option<String>,
    /// Or a file of a Hub repository.
    #[command(flatten)]
    pub hub: HubArgs,
    /// Expected sha256, in full or its first 8+ hex digits (OpenMMLab file names carry those).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Where to install. Default: `$FASTSCNN_HOME/default.safetensors`, where every command
    /// looks when given no weights.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace a file already at the output (by default it is left alone).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// `<stem>_color.png`: the Cityscapes palette.
    Color,
    /// `<stem>_overlay.png`: the palette blended over the image (see --overlay-alpha).
    Overlay,
    /// `<stem>_trainid.png`: train ids 0..18 as 8-bit grey.
    Trainid,
    /// `<stem>_labelid.png`: Cityscapes label ids, the benchmark submission format.
    Labelid,
    /// All of the above.
    All,
}

#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// Images, videos (.mp4, .mkv, .webm, .mov, .avi), folders (every .png/.jpg/.jpeg inside)
    /// or glob patterns such as 'frames/*.png'.
    #[arg(required_unless_present = "stream", value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Also segment this capture device or stream, as ffmpeg names it (`/dev/video0`,
    /// `rtsp://…`); its outputs are named `stream_*`.
    #[arg(long, value_name = "SPEC")]
    pub stream: Option<String>,
    /// Of a video or stream, segment every Nth frame (the first, the N+1th, …).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub every: u64,
    /// Of a video or stream, segment at most this many frames.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_frames: Option<u64>,
    /// Write the videos' frame count, wall fps and each stage's mean ms per frame as JSON here.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    #[command(flatten)]
    pub weights: WeightsArgs,
    #[command(flatten)]
    pub execution: ExecutionArgs,
    /// Where outputs are written; created if missing.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// What to write per image (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["color", "trainid"])]
    pub format: Vec<OutputFormat>,
    /// Weight of the colours in the overlay, 0 (photo only) to 1 (colours only) [default: 0.5].
    #[arg(long, value_parser = unit_interval)]
    pub overlay_alpha: Option<f32>,
    /// Run the network on the image scaled by this factor (1, 0.5, 0.25: the paper's faster
    /// modes); predictions are resized back to the image's size.
    #[arg(long, default_value_t = 1.0, value_parser = input_scale)]
    pub input_scale: f32,
    /// Also write the softmax probabilities (1xCxHxW float32, key `probs`) of the single input.
    #[arg(long, value_name = "FILE.safetensors")]
    pub probs: Option<PathBuf>,
    /// Also write the float32 logits (1xCxHxW, key `logits`) of the single input.
    #[arg(long, value_name = "FILE.safetensors")]
    pub save_logits: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// The precision of the weights and activations: f16 and bf16 are for GPUs (on the CPU f16
    /// runs through candle's ops, slower than f32's fused kernels, and bf16 is refused).
    /// --probs (a softmax in f32) and --save-logits are written as f32 either way.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// The most pixels the network runs on per image (after --input-scale), and the most the
    /// scores of --probs and --save-logits cover: the bound on memory. A larger image is refused
    /// with the --input-scale that fits it.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS, value_parser = pixel_count)]
    pub max_pixels: u64,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The dataset root: Cityscapes' (`leftImg8bit/`, `gtFine/`) or a folder dataset's
    /// (`images/`, `masks/`, `classes.json`).
    #[arg(long)]
    pub dataset_root: PathBuf,
    /// The dataset's layout; default: told from the root.
    #[arg(long, value_name = "cityscapes|folder", value_parser = dataset_format)]
    pub dataset_format: Option<DatasetFormat>,
    #[command(flatten)]
    pub weights: WeightsArgs,
    #[command(flatten)]
    pub execution: ExecutionArgs,
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Run the network on images scaled by this factor; scores stay at full label resolution.
    #[arg(long, default_value_t = 1.0, value_parser = input_scale)]
    pub input_scale: f32,
    /// Also write the scores as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// The precision of the weights and activations: what f16 or bf16 costs in mIoU (they are for
    /// GPUs; on the CPU f16 runs through candle's ops, slower than f32's fused kernels, and bf16
    /// is refused).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// Threads decoding images ahead of the network (0: decode on the main thread).
    #[arg(long, default_value_t = 2, value_parser = worker_count)]
    pub workers: usize,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub weights: WeightsArgs,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The dataset root: Cityscapes' (`leftImg8bit/`, `gtFine/`) or a folder dataset's
    /// (`images/`, `masks/`, `classes.json`).
    #[arg(long)]
    pub dataset_root: PathBuf,
    /// The dataset's layout; default: told from the root.
    #[arg(long, value_name = "cityscapes|folder", value_parser = dataset_format)]
    pub dataset_format: Option<DatasetFormat>,
    /// Splits to prepare (repeatable); default: every split under `gtFine/`.
    #[arg(long = "split", value_name = "SPLIT")]
    pub splits: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The dataset root: Cityscapes' (`leftImg8bit/`, `gtFine/`) or a folder dataset's
    /// (`images/`, `masks/`, `classes.json`).
    #[arg(long)]
    pub dataset_root: PathBuf,
    /// The dataset's layout; default: told from the root.
    #[arg(long, value_name = "cityscapes|folder", value_parser = dataset_format)]
    pub dataset_format: Option<DatasetFormat>,
    /// The run folder: checkpoints (last, best), train.log, metrics.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Threads of rayon's pool, where this project's training ops run, and of candle's own
    /// operations (default: all cores; at most 4 per core).
    #[arg(long, value_parser = thread_count)]
    pub threads: Option<usize>,
    /// Continue the run in --out from its last checkpoint, with its saved configuration (so
    /// the flags that set the recipe cannot be given with it).
    #[arg(long, conflicts_with_all = RECIPE_FLAGS)]
    pub resume: bool,
    #[arg(long, default_value = "train")]
    pub train_split: String,
    #[arg(long, default_value = "val")]
    pub val_split: String,
    /// Do not validate (checkpoints are still written every --val-every iterations).
    #[arg(long)]
    pub no_val: bool,
    /// Length of the run in iterations.
    #[arg(long, conflicts_with = "epochs")]
    pub iters: Option<u64>,
    /// Length of the run in passes over the training split.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Stop (with a checkpoint) once this many iterations are done, to split a run; the schedule
    /// still spans the whole run.
    #[arg(long)]
    pub stop_at: Option<u64>,
    /// Images per batch [paper: 12].
    #[arg(long, value_parser = batch_size)]
    pub batch_size: Option<usize>,
    /// Training crop, HEIGHTxWIDTH [paper: 1024x1024].
    #[arg(long, value_parser = size_pair)]
    pub crop: Option<(usize, usize)>,
    /// Random scale range, MIN-MAX [paper: 0.5-2; 1-1 with --augment none].
    #[arg(long, value_parser = scale_range)]
    pub scale_range: Option<(f32, f32)>,
    /// Augmentation before the crop: paper (random scale, flip, brightness, colour noise) or
    /// none (crops of the frames as they are).
    #[arg(long, value_name = "paper|none", default_value = "paper", value_parser = augment)]
    pub augment: Augment,
    /// Probability of every dropout of the network, in [0, 1).
    #[arg(long, value_name = "P", default_value_t = DEFAULT_DROPOUT, value_parser = dropout)]
    pub dropout: f32,
    /// Base learning rate of the poly schedule [paper: 0.045].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warm-up iterations before the poly decay.
    #[arg(long, default_value_t = 0)]
    pub warmup_iters: u64,
    /// Online hard example mining (pixels with p(true class) ≤ 0.7, at least 100000 kept).
    #[arg(long)]
    pub ohem: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validate and checkpoint every K iterations (and at the end) [default 1000].
    #[arg(long, value_name = "K")]
    pub val_every: Option<u64>,
    /// Log a line to train.log and metrics.jsonl every N iterations.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Network preset and checkpoint key layout: reference or openmmlab.
    #[arg(long, default_value = "reference")]
    pub layout: String,
    /// Start from these weights (same layout; missing auxiliary heads start fresh).
    #[arg(long, value_name = "WEIGHTS")]
    pub init: Option<PathBuf>,
    /// Threads decoding and augmenting images ahead of the network (0: on the main thread).
    #[arg(long, default_value_t = 2, value_parser = worker_count)]
    pub workers: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// The most pixels one batch may hold (batch size x crop): the bound on training memory
    /// [default: 32 M, 2.7 times the paper's 12 crops of 1024x1024].
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_BATCH_PIXELS, value_parser = pixel_count)]
    pub max_batch_pixels: u64,
}

/// The flags that set a run's recipe, saved with its checkpoints: `--resume` takes them from
/// there.
const RECIPE_FLAGS: [&str; 18] = [
    "train_split",
    "val_split",
    "no_val",
    "iters",
    "epochs",
    "batch_size",
    "crop",
    "scale_range",
    "augment",
    "dropout",
    "lr",
    "warmup_iters",
    "ohem",
    "seed",
    "val_every",
    "log_every",
    "layout",
    "init",
];

/// The default of `--max-pixels`: the model crate's image budget.
pub const DEFAULT_MAX_PIXELS: u64 = fastscnn_model::DEFAULT_MAX_PIXELS;
/// The default of `--max-batch-pixels`.
pub const DEFAULT_MAX_BATCH_PIXELS: u64 = 1 << 25;

/// Threads beyond this many per core only add switching, and a typo such as 100000 would spawn
/// that many.
const THREADS_PER_CORE: usize = 4;

fn max_threads() -> usize {
    THREADS_PER_CORE * std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn thread_count(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    let max = max_threads();
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is not between 1 and {max} ({THREADS_PER_CORE} per core of this machine)"
        ))
    }
}

fn worker_count(s: &str) -> Result<usize, String> {
    if s == "0" {
        Ok(0)
    } else {
        thread_count(s)
    }
}

fn batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n as usize),
        _ => Err(format!("`{s}` is not a batch size from 1 to {}", u32::MAX)),
    }
}

fn pixel_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive number of pixels")),
    }
}

fn size_pair(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once('x')
        .ok_or_else(|| format!("`{s}` is not HEIGHTxWIDTH"))?;
    match (h.parse::<u32>(), w.parse::<u32>()) {
        (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok((h as usize, w as usize)),
        _ => Err(format!(
            "`{s}` is not HEIGHTxWIDTH with sides from 1 to {}",
            u32::MAX
        )),
    }
}

fn scale_range(s: &str) -> Result<(f32, f32), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not MIN-MAX"))?;
    match (lo.parse::<f32>(), hi.parse::<f32>()) {
        (Ok(lo), Ok(hi)) if lo > 0.0 && lo <= hi && hi <= fastscnn_train::MAX_SCALE => Ok((lo, hi)),
        _ => Err(format!(
            "`{s}` is not MIN-MAX with 0 < MIN <= MAX <= {}",
            fastscnn_train::MAX_SCALE
        )),
    }
}

fn augment(s: &str) -> Result<Augment, String> {
    s.parse()
}

fn dropout(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in [0, 1)"))
    }
}

fn unit_interval(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

fn input_scale(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not in (0, 1]; use 1, 0.5 or 0.25"))
    }
}

fn dataset_format(value: &str) -> Result<DatasetFormat, String> {
    value.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_interface_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn formats_default_to_colour_and_train_ids_and_split_on_commas() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["fastscnn", "segment", "a.png"];
            args.extend(extra);
            match Cli::parse_from(args).command {
                Command::Segment(s) => s.format,
                _ => unreachable!(),
            }
        };
        assert_eq!(parse(&[]), [OutputFormat::Color, OutputFormat::Trainid]);
        assert_eq!(
            parse(&["--format", "overlay,labelid"]),
            [OutputFormat::Overlay, OutputFormat::Labelid]
        );
    }

    #[test]
    fn crops_and_scale_ranges_parse() {
        assert_eq!(size_pair("256x512"), Ok((256, 512)));
        assert!(size_pair("256").is_err());
        assert!(size_pair("0x5").is_err());
        assert_eq!(scale_range("1-1"), Ok((1.0, 1.0)));
        assert_eq!(scale_range("0.5-2"), Ok((0.5, 2.0)));
        assert!(scale_range("2-1").is_err());
        assert!(scale_range("0.5-inf").is_err());
        assert!(size_pair("100000000000x5").is_err());
    }

    #[test]
    fn scales_and_alphas_are_checked() {
        assert_eq!(input_scale("0.5"), Ok(0.5));
        assert!(input_scale("0").is_err());
        assert!(input_scale("2").is_err());
        assert!(unit_interval("1.5").is_err());
        assert!(unit_interval("x").is_err());
        assert!(unit_interval("NaN").is_err());
        assert!(input_scale("NaN").is_err());
    }

    #[test]
    fn threads_are_bounded_by_the_machine() {
        assert_eq!(thread_count("1"), Ok(1));
        assert!(thread_count("0").is_err());
        assert!(thread_count("100000").unwrap_err().contains("per core"));
        assert_eq!(worker_count("0"), Ok(0));
    }

    #[test]
    fn resume_refuses_recipe_flags() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["fastscnn", "train", "--dataset-root", "d", "--out", "o"];
            args.extend(extra);
            Cli::try_parse_from(args)
        };
        assert!(parse(&["--resume"]).is_ok());
        assert!(parse(&["--resume", "--workers", "1"]).is_ok());
        let err = parse(&["--resume", "--lr", "0.1"]).unwrap_err().to_string();
        assert!(err.contains("--lr"), "{err}");
        assert!(parse(&["--resume", "--seed", "1"]).is_err());
    }
}
