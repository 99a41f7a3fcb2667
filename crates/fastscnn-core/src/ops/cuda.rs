//! What the ops' CUDA kernels share on the Rust side: their PTX modules (built from the `.cu`
//! file beside each op by `build.rs`), the inputs as device views, the launch shapes.
//!
//! Every kernel takes contiguous inputs (the public wrappers make inputs contiguous and send only
//! CUDA tensors with at least one element here) and writes every element of its output, so
//! outputs are allocated without being cleared. The memory-bound kernels (depthwise convolution,
//! pooling, resize, resize + argmax) are exported for each [`Element`] type, the others for f32.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result};

/// The PTX `build.rs` compiled from one `.cu` file of `src/ops`.
pub(super) struct Module {
    name: &'static str,
    ptx: &'static str,
}

/// The [`Module`] of `src/ops/<name>.cu`.
macro_rules! ptx_module {
    ($name:literal) => {
        $crate::ops::cuda::Module::new(
            concat!("fastscnn-", $name),
            include_str!(concat!(env!("OUT_DIR"), "/", $name, ".ptx")),
        )
    };
}
pub(super) use ptx_module;

impl Module {
    pub(super) const fn new(name: &'static str, ptx: &'static str) -> Self {
        Self { name, ptx }
    }

    /// Kernel `function` of this module on `device` (the module is loaded once per device), with
    /// the stream candle runs that device's work on.
    pub(super) fn function(
        &self,
        device: &CudaDevice,
        function: &str,
    ) -> Result<(CudaFunction, Arc<CudaStream>)> {
        let func = device.get_or_load_custom_func(function, self.name, self.ptx)?;
        Ok((func.into_cuda_function(), device.cuda_stream()))
    }
}

/// An element type of the memory-bound kernels (`element.cuh`): f32, f16 or bf16, whose
/// kernels are exported as `<name>_<SUFFIX>`.
pub(super) trait Element: CudaDType + DeviceRepr {
    const SUFFIX: &'static str;
}

impl Element for f32 {
    const SUFFIX: &'static str = "f32";
}

impl Element for half::f16 {
    const SUFFIX: &'static str = "f16";
}

impl Element for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// The name of kernel `function` exported for `T`.
pub(super) fn typed<T: Element>(function: &str) -> String {
    format!("{function}_{}", T::SUFFIX)
}

/// `f::<T>(args…)` for the [`Element`] type `T` of the CUDA storage `storage`, or an error naming
/// `op` for a dtype with no kernels (the public wrappers send no other).
macro_rules! for_element {
    ($storage:expr, $op:expr, $($f:ident)::+($($arg:expr),* $(,)?)) => {
        match candle_core::backend::BackendStorage::dtype($storage) {
            candle_core::DType::F32 => $($f)::+::<f32>($($arg),*),
            candle_core::DType::F16 => $($f)::+::<half::f16>($($arg),*),
            candle_core::DType::BF16 => $($f)::+::<half::bf16>($($arg),*),
            other => candle_core::bail!("{}: no CUDA kernel for {other:?}", $op),
        }
    };
}
pub(super) use for_element;

/// The elements of a contiguous storage, as a view.
pub(super) fn input<'a, T: CudaDType + DeviceRepr>(
    storage: &'a CudaStorage,
    layout: &Layout,
    op: &str,
) -> Result<CudaView<'a, T>> {
    let slice = storage.as_cuda_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// An input of a kernel launch: a storage and its layout.
pub(super) type Input<'a> = (&'a CudaStorage, &'a Layout);

/// `len` elements, not initialised.
///
/// # Safety
/// A kernel must write every element before anything reads one: the caller launches it next on
/// the device's stream, which orders the writes before any later read.
pub(super) unsafe fn output<T: DeviceRepr>(
    device: &CudaDevice,
    len: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: the caller's kernel writes all `len` elements before they are read.
    unsafe { device.alloc::<T>(len) }
}

/// The storage of a kernel's output.
pub(super) fn storage<T: CudaDType>(slice: CudaSlice<T>, device: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, device.clone())
}

/// Sizes as the kernels' `unsigned` parameters take them.
pub(super) fn dims<const N: usize>(values: [usize; N], op: &str) -> Result<[u32; N]> {
    let mut out = [0u32; N];
    for (slot, value) in out.iter_mut().zip(values) {
        *slot = u32::try_from(value).map_err(|_| {
            candle_core::Error::Msg(format!("{op}: {value} is too large for a CUDA kernel"))
        })?;
    }
    Ok(out)
}

/// Threads per block of the element-wise kernels.
const THREADS: u32 = 256;

/// The most blocks an element-wise launch uses: its threads then loop over the rest (every
/// element-wise kernel is a grid-stride loop).
const MAX_BLOCKS: usize = 1 << 20;

/// A grid-stride launch over `elements` (at least one).
pub(super) fn elementwise(elements: usize) -> LaunchConfig {
    let blocks = elements.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads per block of the reducing kernels: `SUM_THREADS` of `block_sum.cuh`.
pub(super) const SUM_THREADS: u32 = 256;

/// Each channel's values split among this many blocks at most, for reductions over channels of
/// `count` values: a few thousand values per block, enough blocks over all channels to fill a
/// GPU's multiprocessors.
pub(super) fn channel_splits(count: usize) -> u32 {
    count.div_ceil(4096).clamp(1, 64) as u32
}

/// `grid` blocks of [`SUM_THREADS`]; a grid's second dimension (channels, for the reductions
/// over channels) holds at most 65535 blocks.
pub(super) fn reduction(grid: (u32, u32), op: &str) -> Result<LaunchConfig> {
    if grid.1 > 65535 {
        bail!(
            "{op}: {} channels, more than the CUDA kernel's 65535",
            grid.1
        )
    }
    Ok(LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (SUM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// One thread per item of a per-channel count: the channels, or the nine weights of each.
pub(super) fn per_channel(items: usize) -> LaunchConfig {
    let blocks = items.div_ceil(THREADS as usize).max(1) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A kernel over `planes` planes mapped between `input_size` and `output_size` (a pooling or a
/// resize), one thread per element of its output: `functions.0` of `module` maps input planes to
/// output planes, or with `backward` `functions.1` output planes (gradients) to input planes,
/// each exported for the source's [`Element`] type. Either takes (source, destination, planes,
/// input rows, input columns, output rows, output columns, `extra`…).
#[allow(clippy::too_many_arguments)]
pub(super) fn map_planes(
    module: &Module,
    functions: (&str, &str),
    source: Input,
    planes: usize,
    input_size: (usize, usize),
    output_size: (usize, usize),
    backward: bool,
    extra: &[i32],
) -> Result<CudaStorage> {
    let function = if backward { functions.1 } else { functions.0 };
    let sizes = (planes, input_size, output_size);
    for_element!(
        source.0,
        function,
        map_planes_of(module, function, source, sizes, backward, extra)
    )
}

/// [`map_planes`] for elements `T`: `function` (not yet [`typed`]) from `source` to planes of
/// `sizes.2` (or with `backward` of `sizes.1`).
fn map_planes_of<T: Element>(
    module: &Module,
    function: &str,
    (s, l): Input,
    (planes, input_size, output_size): (usize, (usize, usize), (usize, usize)),
    backward: bool,
    extra: &[i32],
) -> Result<CudaStorage> {
    let to = if backward { input_size } else { output_size };
    let device = &s.device;
    let src = input::<T>(s, l, function)?;
    let len = planes * to.0 * to.1;
    // SAFETY: the kernel launched next writes every element.
    let out = unsafe { output::<T>(device, len) }?;
    let sizes = [
        planes,
        input_size.0,
        input_size.1,
        output_size.0,
        output_size.1,
    ];
    let dims = dims(sizes, function)?;
    let (func, stream) = module.function(device, &typed::<T>(function))?;
    let mut args = stream.launch_builder(&func);
    args.arg(&src).arg(&out);
    for d in &dims {
        args.arg(d);
    }
    for e in extra {
        args.arg(e);
    }
    // SAFETY: the callers' kernels take exactly these parameters, in this order; the views hold
    // the element counts the dimensions give.
    unsafe { args.launch(elementwise(len)) }.w()?;
    Ok(storage(out, device))
}
