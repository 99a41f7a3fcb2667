//! `--dtype`: the precision the network's weights and activations are held in.

use candle_core::DType;
use clap::ValueEnum;

/// f32 everywhere; f16 and bf16 halve the memory a GPU reads and writes: on CUDA the
/// memory-bound ops (depthwise convolution, pooling, resize, resize + argmax) run their own
/// half-precision kernels and the rest candle's, while on the CPU f16 runs every op through
/// candle's ops (the fused CPU kernels are f32), slower than f32, and bf16 is refused (candle's
/// CPU convolution has no bf16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The flag's value, as the user types it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}
