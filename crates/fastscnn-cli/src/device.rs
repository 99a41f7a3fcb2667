//! `--device`: where the model runs.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Metal,
    /// The first GPU this build and machine support, else the CPU.
    Auto,
}

pub fn select(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "--device cuda: this build has no CUDA support (rebuild with --features cuda)"
                );
            }
            Device::new_cuda(0).context("--device cuda: no usable CUDA device")
        }
        DeviceArg::Metal => {
            if !cfg!(feature = "metal") {
                bail!("--device metal: this build has no Metal support (rebuild with --features metal)");
            }
            Device::new_metal(0).context("--device metal: no usable Metal device")
        }
        DeviceArg::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                if let Ok(device) = Device::new_cuda(0) {
                    return Ok(device);
                }
            }
            if cfg!(feature = "metal") && candle_core::utils::metal_is_available() {
                if let Ok(device) = Device::new_metal(0) {
                    return Ok(device);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_work_everywhere() {
        assert!(select(DeviceArg::Cpu).unwrap().is_cpu());
        assert!(select(DeviceArg::Auto).is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_missing_backend_says_how_to_get_it() {
        let err = select(DeviceArg::Cuda).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
