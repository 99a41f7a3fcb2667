//! The CUDA kernels of `src/ops` run on the CPU, against the CPU ops: each `.cu` file compiled as
//! C++ by the host compiler with `emulation/cuda_emulation.h`, its kernels called with the
//! parameters the ops' launches pass them, every thread of a block an OS thread (so that the
//! block sums' shuffles and barriers run as on a GPU). This proves the kernels' arithmetic and
//! indexing on any machine; what it cannot prove (the PTX, the launches through cudarc, the
//! GPU's own `expf`) `cuda_kernels.rs` proves on a GPU.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`) and CUDA's headers for `cuda_fp16.h` and
//! `cuda_bf16.h` (`$FASTSCNN_CUDA_INCLUDE`, else `include/` beside the `nvcc` on `PATH`, else
//! under `$CUDA_HOME` or `/usr/local/cuda`). Without them each test says "skipped: …" and
//! passes, unless `FASTSCNN_REQUIRE_EMULATION` is set (`.ci/run`'s CUDA section sets it).
//! Unix only: the kernels are loaded with `dlopen`.
#![cfg(unix)]

use candle_core::{DType, Device, Result, Tensor, Var};
use fastscnn_core::ops::{
    adaptive_avg_pool2d, batch_norm_train_act, depthwise_conv2d, resize_argmax, resize_bilinear,
    softmax_cross_entropy,
};
use fastscnn_core::testing::random_tensor;
use half::{bf16, f16};

mod emulation;
use emulation::{launch, library, Library, ELEMENTWISE, SUM_THREADS};

// ---------------------------------------------------------------------------------------------
// Element types and comparisons

/// An element type of the memory-bound kernels, with the suffix of the kernels exported for it.
trait Element: Copy + Send + Sync + 'static {
    const SUFFIX: &'static str;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for f16 {
    const SUFFIX: &'static str = "f16";
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Element for bf16 {
    const SUFFIX: &'static str = "bf16";
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// A tensor's values in `T` (rounded to nearest even).
fn elements<T: Element>(t: &Tensor) -> Vec<T> {
    values(t).into_iter().map(T::from_f32).collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `v` as an f32 tensor of `shape`.
fn tensor<T: Element>(v: &[T], shape: &[usize]) -> Tensor {
    let v: Vec<f32> = v.iter().map(|e| e.to_f32()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `len` elements for a kernel to write, set to NaN so that one it leaves shows.
fn output<T: Element>(len: usize) -> Vec<T> {
    vec![T::from_f32(f32::NAN); len]
}

/// max |a − b| over max |b|.
fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) });
    diff / b.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()))
}

fn assert_within<T: Element>(what: &str, kernel: &[T], cpu: &Tensor, bound: f32) {
    let kernel: Vec<f32> = kernel.iter().map(|e| e.to_f32()).collect();
    let diff = relative_diff(&kernel, &values(cpu));
    assert!(
        diff <= bound,
        "{what} ({}): relative difference {diff}",
        T::SUFFIX
    );
}

/// `f` of `inputs` on the CPU in f32: the output, and each input's gradient of the output's sum
/// weighted by `weights`.
fn with_gradients(
    inputs: &[Tensor],
    weights: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors).unwrap();
    let grads = (&out * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grads = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
    (out, grads)
}

/// The address of an input, which a kernel call on another thread can take (raw pointers are
/// not `Sync`); kernels only read through it.
fn at<T>(v: &[T]) -> usize {
    v.as_ptr() as usize
}

/// The address of an output (or of partial sums one kernel writes and the next reads), taken
/// from a unique borrow, since kernels write through it.
fn at_mut<T>(v: &mut [T]) -> usize {
    v.as_mut_ptr() as usize
}

// ---------------------------------------------------------------------------------------------
// The kernels

// The kernels' C declarations as Rust function types (`T` the element type): each kernel is
// looked up as its type below, which the `unsafe` lookups rely on.
type DepthwiseForward<T> = unsafe extern "C" fn(
    *const T,
    *const T,
    *const T,
    *mut T,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    i32,
);
type DepthwiseGrad<T> =
    unsafe extern "C" fn(*const T, *const T, *mut T, u32, u32, u32, u32, u32, u32, u32);
type WeightGradPartial<T> =
    unsafe extern "C" fn(*const T, *const T, *mut f64, u32, u32, u32, u32, u32, u32, u32);
type WeightGradFinish<T> = unsafe extern "C" fn(*const f64, *mut T, u32, u32);

/// What a kernel family computed: each part's name, its values and the CPU f32 op's.
type Outputs = Vec<(String, Vec<f32>, Tensor)>;

/// Values rounded to `R` (an input rounded to a half type, or f32 itself), as elements of `K`
/// (the kernel's type: exact, since `K` is `R` or f32).
fn inputs<R: Element, K: Element>(t: &Tensor) -> Vec<K> {
    elements::<R>(t)
        .into_iter()
        .map(|v| K::from_f32(v.to_f32()))
        .collect()
}

fn as_f32<K: Element>(v: &[K]) -> Vec<f32> {
    v.iter().map(|e| e.to_f32()).collect()
}

/// The f32 kernels against the CPU's f32 ops (max-relative 1e-5), then each half type's
/// kernels on inputs rounded to it: exactly the f32 kernels' values on the same inputs, rounded
/// once to the half type (the half kernels compute in f32 in the same order and round on the
/// store), which a double rounding or a fallback to other ops would not give.
fn check_family(run: impl Fn(Run) -> Option<Outputs>) {
    let Some(exact) = run(Run::F32) else { return };
    for (what, values, cpu) in &exact {
        assert_within(what, values, cpu, 1e-5);
    }
    for (rounding, round) in [
        (
            Run::F16,
            (|v: f32| f16::from_f32(v).to_f32()) as fn(f32) -> f32,
        ),
        (Run::Bf16, |v: f32| bf16::from_f32(v).to_f32()),
    ] {
        let (Some(in_f32), Some(in_half)) = (run(rounding.in_f32()), run(rounding)) else {
            return;
        };
        for ((what, exact, cpu), (_, half, _)) in in_f32.iter().zip(&in_half) {
            assert_within(&format!("{what} on {rounding:?} inputs"), exact, cpu, 1e-5);
            let rounded: Vec<f32> = exact.iter().map(|&v| round(v)).collect();
            assert!(
                half == &rounded,
                "{what} in {rounding:?}: not the f32 kernel's values rounded once"
            );
        }
    }
}

/// Which kernels a family runs, on inputs rounded to which type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    F32,
    F16,
    Bf16,
    /// The f32 kernels on inputs rounded to f16.
    F32OnF16Inputs,
    /// The f32 kernels on inputs rounded to bf16.
    F32OnBf16Inputs,
}

impl Run {
    fn in_f32(self) -> Self {
        match self {
            Run::F16 => Run::F32OnF16Inputs,
            Run::Bf16 => Run::F32OnBf16Inputs,
            other => other,
        }
    }
}

/// `$f::<R, K>($args…)` for the rounding type `R` and kernel type `K` that `$which` names.
macro_rules! typed {
    ($which:expr, $f:ident($($arg:expr),*)) => {
        match $which {
            Run::F32 => $f::<f32, f32>($($arg),*),
            Run::F16 => $f::<f16, f16>($($arg),*),
            Run::Bf16 => $f::<bf16, bf16>($($arg),*),
            Run::F32OnF16Inputs => $f::<f16, f32>($($arg),*),
            Run::F32OnBf16Inputs => $f::<bf16, f32>($($arg),*),
        }
    };
}

fn depthwise<R: Element, K: Element>(library: &Library) -> Outputs {
    let forward: DepthwiseForward<K> =
        unsafe { library.function(&format!("depthwise3x3_forward_{}", K::SUFFIX)) };
    let input_grad: DepthwiseGrad<K> =
        unsafe { library.function(&format!("depthwise3x3_input_grad_{}", K::SUFFIX)) };
    let weight_grad_partial: WeightGradPartial<K> =
        unsafe { library.function(&format!("depthwise3x3_weight_grad_partial_{}", K::SUFFIX)) };
    let weight_grad_finish: WeightGradFinish<K> =
        unsafe { library.function(&format!("depthwise3x3_weight_grad_finish_{}", K::SUFFIX)) };
    let mut outputs = Outputs::new();
    for (i, (h, w)) in [(1, 1), (5, 7), (17, 33)].into_iter().enumerate() {
        for stride in [1usize, 2] {
            let (n, c) = (2, 6);
            let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let x: Vec<K> = inputs::<R, K>(&random_tensor(&[n, c, h, w], i as u64).unwrap());
            let k: Vec<K> = inputs::<R, K>(&random_tensor(&[c, 1, 3, 3], 10 + i as u64).unwrap());
            let bias: Vec<K> = inputs::<R, K>(&random_tensor(&[c], 20).unwrap());
            let g: Vec<K> = inputs::<R, K>(&random_tensor(&[n, c, oh, ow], 30).unwrap());
            let (xt, kt) = (tensor(&x, &[n, c, h, w]), tensor(&k, &[c, 1, 3, 3]));
            let bt = tensor(&bias, &[1, c, 1, 1]);
            let gt = tensor(&g, &[n, c, oh, ow]);
            let (out, grads) =
                with_gradients(&[xt, kt], &gt, |t| depthwise_conv2d(&t[0], &t[1], stride));
            let dims = [n, c, h, w, oh, ow, stride].map(|d| d as u32);
            let what = format!("depthwise {h}x{w} stride {stride}");
            for (with_bias, relu) in [(false, false), (true, false), (true, true)] {
                let mut result = output::<K>(n * c * oh * ow);
                let bias_at = if with_bias { at(&bias) } else { 0 };
                let (xa, ka, ra) = (at(&x), at(&k), at_mut(&mut result));
                launch(library, ELEMENTWISE.0, ELEMENTWISE.1, &|| unsafe {
                    forward(
                        xa as *const K,
                        ka as *const K,
                        bias_at as *const K,
                        ra as *mut K,
                        dims[0],
                        dims[1],
                        dims[2],
                        dims[3],
                        dims[4],
                        dims[5],
                        dims[6],
                        i32::from(relu),
                    )
                });
                let mut expected = out.clone();
                if with_bias {
                    expected = expected.broadcast_add(&bt).unwrap();
                }
                if relu {
                    expected = expected.relu().unwrap();
                }
                let part = format!("{what}: forward, bias {with_bias}, relu {relu}");
                outputs.push((part, as_f32(&result), expected));
            }
            let mut grad_x = output::<K>(n * c * h * w);
            let (ga, ka, ra) = (at(&g), at(&k), at_mut(&mut grad_x));
            launch(library, ELEMENTWISE.0, ELEMENTWISE.1, &|| unsafe {
                input_grad(
                    ga as *const K,
                    ka as *const K,
                    ra as *mut K,
                    dims[0],
                    dims[1],
                    dims[2],
                    dims[3],
                    dims[4],
                    dims[5],
                    dims[6],
                )
            });
            let part = format!("{what}: input gradient");
            outputs.push((part, as_f32(&grad_x), grads[0].clone()));
            // Three blocks per channel (the op's split for these sizes is one), so that the
            // partials have stages to add, and stretches run past the outputs at 1x1.
            let splits = 3u32;
            let mut partials = vec![f64::NAN; c * splits as usize * 9];
            let (xa, ga, pa) = (at(&x), at(&g), at_mut(&mut partials));
            launch(library, (splits, dims[1]), SUM_THREADS, &|| unsafe {
                weight_grad_partial(
                    xa as *const K,
                    ga as *const K,
                    pa as *mut f64,
                    dims[0],
                    dims[1],
                    dims[2],
                    dims[3],
                    dims[4],
                    dims[5],
                    dims[6],
                )
            });
            let mut grad_w = output::<K>(c * 9);
            let ra = at_mut(&mut grad_w);
            launch(library, ELEMENTWISE.0, ELEMENTWISE.1, &|| unsafe {
                weight_grad_finish(pa as *const f64, ra as *mut K, dims[1], splits)
            });
            let part = format!("{what}: weight gradient");
            outputs.push((part, as_f32(&grad_w), grads[1].clone()));
        }
    }
    outputs
}

#[test]
fn depthwise_convolution_and_its_gradients() {
    check_family(|which| Some(typed!(which, depthwise(library("depthwise_conv")?))));
}

/// A kernel of `map_planes` (pooling, resize): source, destination, planes, input rows and
/// columns, output rows and columns, then the resize's `align_corners`.
type MapPlanes<T> = unsafe extern "C" fn(*const T, *mut T, u32, u32, u32, u32, u32, i32);

/// `functions` (forward and gradient) of `library` with `op` on the CPU beside them, from (h, w)
/// to (oh, ow), with `extra` (the resize's corner mode; the pooling takes none and ignores the
/// argument, as it ignores `map_planes`'s empty list).
fn map_planes<R: Element, K: Element>(
    library: &Library,
    functions: (&str, &str),
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    extra: i32,
    op: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Outputs {
    let forward: MapPlanes<K> =
        unsafe { library.function(&format!("{}_{}", functions.0, K::SUFFIX)) };
    let backward: MapPlanes<K> =
        unsafe { library.function(&format!("{}_{}", functions.1, K::SUFFIX)) };
    let (n, c) = (2, 3);
    let x: Vec<K> = inputs::<R, K>(&random_tensor(&[n, c, h, w], (h * w + oh) as u64).unwrap());
    let g: Vec<K> = inputs::<R, K>(&random_tensor(&[n, c, oh, ow], 7).unwrap());
    let (out, grads) = with_gradients(
        &[tensor(&x, &[n, c, h, w])],
        &tensor(&g, &[n, c, oh, ow]),
        |t| op(&t[0]),
    );
    let dims = [n * c, h, w, oh, ow].map(|d| d as u32);
    let what = format!("{} {h}x{w} to {oh}x{ow} ({extra})", functions.0);
    let mut outputs = Outputs::new();
    for (kernel, source, len, expected, part) in [
        (forward, at(&x), n * c * oh * ow, &out, "forward"),
        (backward, at(&g), n * c * h * w, &grads[0], "gradient"),
    ] {
        let mut result = output::<K>(len);
        let ra = at_mut(&mut result);
        launch(library, ELEMENTWISE.0, ELEMENTWISE.1, &|| unsafe {
            kernel(
                source as *const K,
                ra as *mut K,
                dims[0],
                dims[1],
                dims[2],
                dims[3],
                dims[4],
                extra,
            )
        });
        outputs.push((format!("{what}: {part}"), as_f32(&result), expected.clone()));
    }
    outputs
}

#[test]
fn pooling_and_its_gradient() {
    check_family(|which| {
        let library = library("adaptive_avg_pool")?;
        let mut outputs = Outputs::new();
        for (h, w) in [(8, 16), (7, 13)] {
            for out in [1, 2, 3, 6] {
                let functions = ("adaptive_avg_pool", "adaptive_avg_pool_grad");
                let op = |x: &Tensor| adaptive_avg_pool2d(x, out, out);
                outputs.extend(typed!(
                    which,
                    map_planes(library, functions, (h, w), (out, out), 0, &op)
                ));
            }
        }
        Some(outputs)
    });
}

#[test]
fn resize_and_its_gradient_in_both_corner_modes() {
    check_family(|which| {
        let library = library("bilinear_resize")?;
        let mut outputs = Outputs::new();
        let sizes = [
            ((8, 16), (64, 128)),
            ((5, 7), (13, 3)),
            ((32, 64), (8, 16)),
            ((1, 1), (4, 5)),
        ];
        for (from, (oh, ow)) in sizes {
            for align_corners in [true, false] {
                let functions = ("resize_bilinear", "resize_bilinear_grad");
                let op = |x: &Tensor| resize_bilinear(x, oh, ow, align_corners);
                let corners = i32::from(align_corners);
                outputs.extend(typed!(
                    which,
                    map_planes(library, functions, from, (oh, ow), corners, &op)
                ));
            }
        }
        Some(outputs)
    });
}

type ResizeArgmax<T> = unsafe extern "C" fn(*const T, *mut u32, u32, u32, u32, u32, u32, u32, i32);

/// The labels equal the CPU op's on the same scores: the blend is the resize's, in f32.
fn labels<T: Element>() {
    let Some(library) = library("resize_argmax") else {
        return;
    };
    let kernel: ResizeArgmax<T> =
        unsafe { library.function(&format!("resize_argmax_{}", T::SUFFIX)) };
    let (n, c, h, w, oh, ow) = (2, 19, 16, 32, 128, 256);
    let scores: Vec<T> = elements(&random_tensor(&[n, c, h, w], 7).unwrap());
    for align_corners in [true, false] {
        let expected: Vec<u32> =
            resize_argmax(&tensor(&scores, &[n, c, h, w]), oh, ow, align_corners)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
        let mut labels = vec![u32::MAX; n * oh * ow];
        let dims = [n, c, h, w, oh, ow].map(|d| d as u32);
        let (sa, la) = (at(&scores), at_mut(&mut labels));
        launch(library, ELEMENTWISE.0, ELEMENTWISE.1, &|| unsafe {
            kernel(
                sa as *const T,
                la as *mut u32,
                dims[0],
                dims[1],
                dims[2],
                dims[3],
                dims[4],
                dims[5],
                i32::from(align_corners),
            )
        });
        assert!(
            labels == expected,
            "{}, align {align_corners}: the labels differ",
            T::SUFFIX
        );
    }
}

#[test]
fn fused_resize_and_argmax_gives_the_cpu_labels() {
    labels::<f32>();
    labels::<f16>();
    labels::<bf16>();
}

type Moments = unsafe extern "C" fn(*const f32, *mut f64, u32, u32, u32);
type FinishMoments = unsafe extern "C" fn(*const f32, *const f64, *mut f32, u32, u32, u32, u32);
type Coefficients = unsafe extern "C" fn(*const f32, *mut f32, u32, f64);
type Apply = unsafe extern "C" fn(*const f32, *const f32, *mut f32, u32, u32, u32, i32);
type PartialGrad =
    unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f64, u32, u32, u32, f64, i32);
type FinishGrad = unsafe extern "C" fn(*const f64, *const f32, *mut f32, u32, u32, f64);
type GradCoefficients = unsafe extern "C" fn(*const f32, *mut f32, u32, f64, f64);
type InputGrad =
    unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, u32, u32, u32, i32);

/// The passes of `stacked_batch_norm.cu` in the order the op runs them, against the CPU's fused
/// training BatchNorm: statistics, output and the three gradients.
#[test]
fn training_batch_norm_forward_backward_and_statistics() {
    let Some(library) = library("stacked_batch_norm") else {
        return;
    };
    let moments: Moments = unsafe { library.function("batch_norm_partial_moments_f32") };
    let finish_moments: FinishMoments =
        unsafe { library.function("batch_norm_finish_moments_f32") };
    let coefficients: Coefficients = unsafe { library.function("batch_norm_coefficients_f32") };
    let apply: Apply = unsafe { library.function("batch_norm_apply_f32") };
    let partial_grad: PartialGrad = unsafe { library.function("batch_norm_partial_grad_f32") };
    let finish_grad: FinishGrad = unsafe { library.function("batch_norm_finish_grad_f32") };
    let grad_coefficients: GradCoefficients =
        unsafe { library.function("batch_norm_grad_coefficients_f32") };
    let input_grad: InputGrad = unsafe { library.function("batch_norm_input_grad_f32") };
    let (n, c, h, w) = (4, 6, 17, 33);
    let plane = h * w;
    let eps = 1e-5;
    // Values far from zero: the statistics' sums must not lose the variance.
    let xt = random_tensor(&[n, c, h, w], 1)
        .unwrap()
        .affine(3.0, 20.0)
        .unwrap();
    let gamma = (random_tensor(&[c], 2).unwrap() + 1.5).unwrap();
    let beta = random_tensor(&[c], 3).unwrap();
    let gt = random_tensor(&[n, c, h, w], 4).unwrap();
    let x = values(&xt);
    let dy = values(&gt);
    // Several blocks per channel, so the two-stage sums have stages: the op's split for a
    // channel of this size is one block; these split it in 3.
    let splits = 3u32;
    let [n32, c32, plane32] = [n, c, plane].map(|d| d as u32);
    for relu in [false, true] {
        let stats = std::cell::RefCell::new(Vec::new());
        let (out, grads) = with_gradients(&[xt.clone(), gamma.clone(), beta.clone()], &gt, |t| {
            let out = batch_norm_train_act(&t[0], &t[1], &t[2], eps, relu)?;
            stats.borrow_mut().extend([out.mean, out.variance]);
            Ok(out.output)
        });
        let mut partials = vec![f64::NAN; c * splits as usize * 2];
        let mut stacked = output::<f32>(2 * c);
        let (xa, pa, sa) = (at(&x), at_mut(&mut partials), at_mut(&mut stacked));
        launch(library, (splits, c32), SUM_THREADS, &|| unsafe {
            moments(xa as *const f32, pa as *mut f64, n32, c32, plane32)
        });
        launch(library, (1, 1), 64, &|| unsafe {
            finish_moments(
                xa as *const f32,
                pa as *const f64,
                sa as *mut f32,
                n32,
                c32,
                plane32,
                splits,
            )
        });
        let stats = stats.borrow();
        assert_within("batch mean", &stacked[..c], &stats[0], 1e-6);
        assert_within("batch variance", &stacked[c..], &stats[1], 1e-5);
        // γ, β, μ, σ² as the op stacks them, then the two gradient sums.
        let mut params: Vec<f32> = values(&gamma);
        params.extend(values(&beta));
        params.extend_from_slice(&stacked);
        let mut scale_shift = output::<f32>(2 * c);
        let (qa, ca) = (at(&params), at_mut(&mut scale_shift));
        launch(library, (1, 1), 64, &|| unsafe {
            coefficients(qa as *const f32, ca as *mut f32, c32, eps)
        });
        let mut result = output::<f32>(x.len());
        let ra = at_mut(&mut result);
        launch(library, ELEMENTWISE.0, ELEMENTWISE.1, &|| unsafe {
            apply(
                xa as *const f32,
                ca as *const f32,
                ra as *mut f32,
                n32,
                c32,
                plane32,
                i32::from(relu),
            )
        });
        assert_within(
            &format!("batch norm, relu {relu}: output"),
            &result,
            &out,
            1e-5,
        );
        let mut partials = vec![f64::NAN; c * splits as usize * 2];
        let mut sums = output::<f32>(2 * c);
        let (ga, pa, sa) = (at(&dy), at_mut(&mut partials), at_mut(&mut sums));
        launch(library, (splits, c32), SUM_THREADS, &|| unsafe {
            partial_grad(
                xa as *const f32,
                ga as *const f32,
                qa as *const f32,
                pa as *mut f64,
                n32,
                c32,
                plane32,
                eps,
                i32::from(relu),
            )
        });
        launch(library, (1, 1), 64, &|| unsafe {
            finish_grad(
                pa as *const f64,
                qa as *const f32,
                sa as *mut f32,
                c32,
                splits,
                eps,
            )
        });
        assert_within(
            &format!("batch norm, relu {relu}: β gradient"),
            &sums[..c],
            &grads[2],
            1e-5,
        );
        assert_within(
            &format!("batch norm, relu {relu}: γ gradient"),
            &sums[c..],
            &grads[1],
            1e-5,
        );
        params.extend_from_slice(&sums);
        let mut terms = output::<f32>(6 * c);
        let (qa, ta) = (at(&params), at_mut(&mut terms));
        let count = (n * plane) as f64;
        launch(library, (1, 1), 64, &|| unsafe {
            grad_coefficients(qa as *const f32, ta as *mut f32, c32, count, eps)
        });
        let mut grad_x = output::<f32>(x.len());
        let ra = at_mut(&mut grad_x);
        launch(library, ELEMENTWISE.0, ELEMENTWISE.1, &|| unsafe {
            input_grad(
                xa as *const f32,
                ga as *const f32,
                ta as *const f32,
                ra as *mut f32,
                n32,
                c32,
                plane32,
                i32::from(relu),
            )
        });
        assert_within(
            &format!("batch norm, relu {relu}: input gradient"),
            &grad_x,
            &grads[0],
            1e-5,
        );
    }
}

type LossPartial = unsafe extern "C" fn(*const f32, *const f32, *mut f64, u32, u32, u32);
type LossFinish = unsafe extern "C" fn(*const f64, *mut f32, u32, f64);
type LossGrad = unsafe extern "C" fn(*const f32, *const f32, *mut f32, u32, u32, u32, f32);

/// The loss's three kernels against the CPU's softmax cross-entropy with ignored pixels.
#[test]
fn cross_entropy_with_ignored_pixels_and_its_gradient() {
    let Some(library) = library("target_map_cross_entropy") else {
        return;
    };
    let partial: LossPartial = unsafe { library.function("cross_entropy_partial_f32") };
    let finish: LossFinish = unsafe { library.function("cross_entropy_finish_f32") };
    let grad: LossGrad = unsafe { library.function("cross_entropy_grad_f32") };
    let (n, c, h, w) = (2, 19, 24, 40);
    let pixels = n * h * w;
    let targets: Vec<u32> = (0..pixels).map(|i| (i * 7 % c) as u32).collect();
    let mask: Vec<bool> = (0..pixels).map(|i| i % 5 != 0).collect();
    let logits_t = (random_tensor(&[n, c, h, w], 4).unwrap() * 4.0).unwrap();
    let weight = Tensor::new(&[0.75f32], &Device::Cpu).unwrap();
    let (loss, grads) = with_gradients(std::slice::from_ref(&logits_t), &weight, |t| {
        softmax_cross_entropy(&t[0], &targets, &mask)?.reshape(1)
    });
    // The target map the op builds: the class, or −1 where ignored.
    let map: Vec<f32> = targets
        .iter()
        .zip(&mask)
        .map(|(&t, &keep)| if keep { t as f32 } else { -1.0 })
        .collect();
    let counted = mask.iter().filter(|&&m| m).count();
    let scale = 1.0 / counted as f64;
    let logits = values(&logits_t);
    let blocks = 5u32;
    let [n32, c32, plane32] = [n, c, h * w].map(|d| d as u32);
    let mut partials = vec![f64::NAN; blocks as usize];
    let mut result = output::<f32>(1);
    let (la, ta, pa, ra) = (
        at(&logits),
        at(&map),
        at_mut(&mut partials),
        at_mut(&mut result),
    );
    launch(library, (blocks, 1), SUM_THREADS, &|| unsafe {
        partial(
            la as *const f32,
            ta as *const f32,
            pa as *mut f64,
            n32,
            c32,
            plane32,
        )
    });
    launch(library, (1, 1), 1, &|| unsafe {
        finish(pa as *const f64, ra as *mut f32, blocks, scale)
    });
    assert_within("cross-entropy: loss", &result, &loss, 1e-6);
    let mut grad_x = output::<f32>(logits.len());
    let ga = at_mut(&mut grad_x);
    let grad_scale = scale as f32;
    launch(library, ELEMENTWISE.0, ELEMENTWISE.1, &|| unsafe {
        grad(
            la as *const f32,
            ta as *const f32,
            ga as *mut f32,
            n32,
            c32,
            plane32,
            grad_scale,
        )
    });
    // The op multiplies the kernel's gradient by the loss's own (here 0.75) afterwards.
    let grad_x: Vec<f32> = grad_x.iter().map(|g| g * 0.75).collect();
    assert_within("cross-entropy: gradient", &grad_x, &grads[0], 1e-5);
}
