use super::*;
use crate::pointwise::tests::values;
use crate::{on_every_isa, ExecutionContext, Isa, MapView, Tuning};

/// Seeded weights scaled by `1/sqrt(fan_in)`, so that activations keep their magnitude
/// through the layers.
fn weights(n: usize, fan_in: usize, seed: u32) -> Vec<f32> {
    let scale = (fan_in as f32).sqrt().recip();
    values(n, seed).into_iter().map(|v| v * scale).collect()
}

fn pointwise(cin: usize, cout: usize, relu: bool, seed: u32) -> PointwiseConv {
    let weight = weights(cout * cin, cin, seed);
    PointwiseConv::new(weight, values(cout, seed + 1), cin, cout, relu)
}

fn depthwise(channels: usize, stride: usize, relu: bool, seed: u32) -> DepthwiseConv {
    let weight = weights(channels * 9, 9, seed);
    DepthwiseConv::new(weight, values(channels, seed + 1), channels, stride, relu)
}

/// Depthwise 3x3 then 1x1, both rectified, as every DSConv of the network.
fn separable(cin: usize, cout: usize, stride: usize, seed: u32) -> SeparableConv {
    SeparableConv {
        depthwise: depthwise(cin, stride, true, seed),
        pointwise: pointwise(cin, cout, true, seed + 2),
    }
}

/// `n` seeded input values.
fn input(n: usize, seed: u32) -> Vec<f32> {
    values(n, seed)
}

/// The largest difference between `a` and `b`, relative to `b`'s largest magnitude (at
/// least 1), after checking that `b` is not all zeros.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "an output of zeros compares equal to anything");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale.max(1.0)
}

/// A random bottleneck (expansion 6) on the packed kernels where the processor has them, and
/// the same one layer by layer.
fn bottleneck_pair(cin: usize, cout: usize, stride: usize) -> (FusedBottleneck, FusedBottleneck) {
    let hidden = 6 * cin;
    let fused = FusedBottleneck {
        expand: pointwise(cin, hidden, true, 1),
        depthwise: depthwise(hidden, stride, true, 3),
        project: pointwise(hidden, cout, false, 5),
        shortcut: stride == 1 && cin == cout,
    };
    let plain = FusedBottleneck {
        expand: fused.expand.clone().without_packed_kernel(),
        project: fused.project.clone().without_packed_kernel(),
        ..fused.clone()
    };
    (fused, plain)
}

/// Whatever the thread count, the bands of a fused block's rows are contiguous, cover every
/// row once, keep to the height asked for and differ by at most a row.
#[test]
fn row_bands_cover_the_rows_once_in_near_equal_bands_no_taller_than_asked() {
    for threads in [1, 2, 3] {
        let workers = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (rows, most) in [
            (0, 4),
            (1, 4),
            (2, 1),
            (5, 9),
            (96, 5),
            (48, 5),
            (256, 2),
            (7, 3),
        ] {
            let bands = workers.install(|| RowBands::new(rows, most));
            let seen = std::sync::Mutex::new(Vec::new());
            workers.install(|| bands.for_each(|band| seen.lock().unwrap().push(band)));
            let mut seen = seen.into_inner().unwrap();
            seen.sort_by_key(|band| band.start);
            let case = format!("{rows} rows, at most {most}, {threads} threads: {seen:?}");
            assert_eq!(seen.len(), bands.count, "{case}");
            assert!(bands.count % threads == 0 || bands.count == rows, "{case}");
            let mut next = 0;
            for band in &seen {
                assert_eq!(band.start, next, "{case}");
                assert!(!band.is_empty() && band.len() <= most, "{case}");
                next = band.end;
            }
            assert_eq!(next, rows, "{case}");
            let (short, tall) = seen.iter().fold((usize::MAX, 0), |(a, b), band| {
                (a.min(band.len()), b.max(band.len()))
            });
            assert!(seen.is_empty() || tall - short <= 1, "{case}");
        }
    }
}

/// The channel-split bottleneck cuts the hidden channels by the thread count, the first share
/// written straight to the output: one share, two and three must all sum to the same, on every
/// instruction set.
#[test]
fn split_bottleneck_sums_to_the_same_for_any_thread_count() {
    for isa in Isa::available() {
        for threads in [1, 2, 3] {
            let context = ExecutionContext::new(isa, Some(threads)).unwrap();
            context.install(|| {
                for (cin, cout, stride) in [(16, 16, 1), (16, 24, 2)] {
                    let (fused, plain) = bottleneck_pair(cin, cout, stride);
                    let (h, w) = (13, 21);
                    let x = input(cin * h * w, 5);
                    let x = MapView::new(&x, cin, h, w);
                    let mut pool = BufferPool::default();
                    let expected = plain.run(x, &mut pool);
                    let got = fused.run(x, &mut pool);
                    let d = max_diff(&got.data, &expected.data);
                    assert!(
                        d < 1e-4,
                        "{isa:?}, {cin}->{cout} stride {stride}, {threads} threads: {d}"
                    );
                }
            });
        }
    }
}

/// The bottleneck's two strategies, banded and split by channels, on the same maps: chosen by
/// the tuning of two contexts, side by side in one process.
#[test]
fn both_bottleneck_strategies_agree_on_the_same_map() {
    for isa in Isa::available() {
        let run = |fuse_above| {
            let tuning = Tuning {
                fuse_above,
                ..Tuning::for_isa(isa)
            };
            let context = ExecutionContext::tuned(isa, Some(2), tuning).unwrap();
            context.install(|| {
                let (fused, plain) = bottleneck_pair(24, 24, 1);
                let (h, w) = (29, 37);
                let x = input(24 * h * w, 4);
                let x = MapView::new(&x, 24, h, w);
                let mut pool = BufferPool::default();
                let d = max_diff(&fused.run(x, &mut pool).data, &plain.run(x, &mut pool).data);
                (fused.run(x, &mut pool).data.to_vec(), d)
            })
        };
        let (banded, d_banded) = run(0);
        let (split, d_split) = run(usize::MAX);
        assert!(
            d_banded < 1e-4 && d_split < 1e-4,
            "{isa:?}: {d_banded}, {d_split}"
        );
        let d = max_diff(&banded, &split);
        assert!(d < 1e-4, "{isa:?}: banded against split {d}");
    }
}

/// The fused paths (AVX-512, AVX2 and NEON machines) against the layer-by-layer ones, which
/// run everywhere.
#[test]
fn fused_blocks_equal_the_layer_by_layer_path() {
    on_every_isa(fused_blocks_equal_the_layer_by_layer_path_on);
}

fn fused_blocks_equal_the_layer_by_layer_path_on(isa: Isa) {
    let mut pool = BufferPool::default();
    // Big enough for the bottleneck's hidden tensor to pass `fuse_above`, odd-sized, with
    // a last hidden chunk shorter than the others.
    for (cin, cout, stride, h, w) in [
        (24, 24, 1, 97, 163),
        (24, 16, 2, 97, 163),
        (24, 16, 1, 97, 163),
        // Below `fuse_above`: the channel-split path.
        (16, 16, 1, 13, 21),
        (16, 24, 2, 13, 21),
    ] {
        assert_eq!(
            6 * cin * h * w >= Tuning::current().fuse_above,
            h > 13,
            "{isa:?} {cin}x{h}x{w}"
        );
        let (fused, plain) = bottleneck_pair(cin, cout, stride);
        let x = input(cin * h * w, 3);
        let a = fused.run(MapView::new(&x, cin, h, w), &mut pool);
        let b = plain.run(MapView::new(&x, cin, h, w), &mut pool);
        assert_eq!(
            (a.channels, a.height, a.width),
            (b.channels, b.height, b.width)
        );
        let d = max_diff(&a.data, &b.data);
        assert!(
            d < 1e-4,
            "{isa:?} bottleneck {cin}->{cout} stride {stride}: {d}"
        );
        pool.give(a);
        pool.give(b);
    }
    let fused = FusedFeatureFusion {
        depthwise: depthwise(40, 1, true, 11),
        lower: pointwise(40, 40, false, 13),
        higher: pointwise(24, 40, true, 15),
        align_corners: false,
    };
    let plain = FusedFeatureFusion {
        lower: fused.lower.clone().without_packed_kernel(),
        higher: fused.higher.clone().without_packed_kernel(),
        ..fused.clone()
    };
    let higher = input(24 * 37 * 45, 6);
    let lower = input(40 * 10 * 12, 7);
    let (higher, lower) = (
        MapView::new(&higher, 24, 37, 45),
        MapView::new(&lower, 40, 10, 12),
    );
    let a = fused.run(higher, lower, &mut pool);
    let b = plain.run(higher, lower, &mut pool);
    assert_eq!((a.channels, a.height, a.width), (40, 37, 45));
    let d = max_diff(&a.data, &b.data);
    assert!(d < 1e-4, "{isa:?} feature fusion: {d}");
    // Narrow maps, one band per task, and wide ones, cut into bands of a few rows whose edge
    // stem rows are computed by both bands that read them.
    for (padding, stride, h, w) in [
        (0, 2, 67, 93),
        (1, 2, 67, 93),
        (1, 2, 41, 1500),
        (1, 1, 41, 1500),
    ] {
        let stem_weight = weights(16 * 3 * 9, 3 * 9, 21);
        let fused = StemSeparable {
            stem: DenseConv::new(stem_weight, values(16, 22), 3, 16, 3, 2, padding, true),
            dsconv: separable(16, 24, stride, 23),
        };
        let plain = StemSeparable {
            stem: fused.stem.clone().without_packed_kernel(),
            dsconv: SeparableConv {
                pointwise: fused.dsconv.pointwise.clone().without_packed_kernel(),
                ..fused.dsconv.clone()
            },
        };
        let x = input(3 * h * w, 8);
        let a = fused.run(MapView::new(&x, 3, h, w), &mut pool);
        let b = plain.run(MapView::new(&x, 3, h, w), &mut pool);
        let (ah, aw) = (a.height, a.width);
        assert_eq!((ah, aw), (b.height, b.width));
        assert_eq!((ah, aw), fused.output_size(h, w));
        let d = max_diff(&a.data, &b.data);
        assert!(
            d < 1e-4,
            "{isa:?} stem + separable {h}x{w}, padding {padding}, stride {stride}: {d}"
        );
        // Bands of several steps, which compute the stem rows two steps share once (at the
        // sizes above every band is one step; several come from 768x1536 inputs up). The
        // stepped path runs on the packed kernel alone.
        let steps: &[(usize, usize)] = if fused.dsconv.pointwise.has_packed_kernel() {
            &[(5, 2), (7, 3), (4, 1)]
        } else {
            &[]
        };
        for &(most, step) in steps {
            let c = fused.run_stepped(&x, h, w, RowBands::new(ah, most), step, &mut pool);
            let d = max_diff(&c, &b.data);
            assert!(
                d < 1e-4,
                "stem + separable {h}x{w}, padding {padding}, stride {stride}, bands of \
                 {most} rows in steps of {step}: {d}"
            );
            pool.give(c);
        }
    }
    let fused = FusedClassifier {
        dsconv1: separable(24, 24, 1, 31),
        dsconv2: separable(24, 24, 1, 35),
        conv: pointwise(24, 19, false, 39),
    };
    let plain = FusedClassifier {
        dsconv1: SeparableConv {
            pointwise: fused.dsconv1.pointwise.clone().without_packed_kernel(),
            ..fused.dsconv1.clone()
        },
        dsconv2: SeparableConv {
            pointwise: fused.dsconv2.pointwise.clone().without_packed_kernel(),
            ..fused.dsconv2.clone()
        },
        conv: fused.conv.clone().without_packed_kernel(),
    };
    let x = input(24 * 29 * 53, 9);
    let a = fused.run(MapView::new(&x, 24, 29, 53), &mut pool);
    let b = plain.run(MapView::new(&x, 24, 29, 53), &mut pool);
    assert_eq!((a.channels, a.height, a.width), (19, 29, 53));
    let d = max_diff(&a.data, &b.data);
    assert!(d < 1e-4, "{isa:?} classifier: {d}");
    for stride in [1, 2] {
        let fused = separable(24, 40, stride, 41);
        let plain = SeparableConv {
            pointwise: fused.pointwise.clone().without_packed_kernel(),
            ..fused.clone()
        };
        let x = input(24 * 33 * 47, 5);
        let a = fused.run(MapView::new(&x, 24, 33, 47), &mut pool);
        let b = plain.run(MapView::new(&x, 24, 33, 47), &mut pool);
        let d = max_diff(&a.data, &b.data);
        assert!(d < 1e-4, "{isa:?} separable stride {stride}: {d}");
    }
}
