//! The command-line interface, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Real-time semantic segmentation of street scenes with Fast-SCNN.
#[derive(Debug, Parser)]
#[command(name = "fastscnn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Segment images: writes a colour map and a train-id map for each.
    Segment(SegmentArgs),
    /// Write `*_gtFine_labelTrainIds.png` beside every `*_gtFine_labelIds.png` of a Cityscapes copy.
    Prepare(PrepareArgs),
}

#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// Images to segment (any format the `image` crate reads), at their own resolution.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Fast-SCNN weights as safetensors, with the reference PyTorch key names.
    #[arg(long)]
    pub weights: PathBuf,
    /// Where `<stem>_color.png` and `<stem>_trainid.png` are written; created if missing.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Also write the float32 logits (1xCxHxW, key `logits`) of the single input image here.
    #[arg(long, value_name = "FILE.safetensors")]
    pub save_logits: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The Cityscapes root, holding `leftImg8bit/` and `gtFine/`.
    #[arg(long)]
    pub dataset_root: PathBuf,
    /// Splits to prepare (repeatable); default: every split under `gtFine/`.
    #[arg(long = "split", value_name = "SPLIT")]
    pub splits: Vec<String>,
}
