//! The CPU engine's resize kernels of `fastscnn-cpu`, on every instruction set, against this
//! crate's resize ops: the same values, bit for bit, and the same labels.

use candle_core::Tensor;
use fastscnn_core::ops::{resize_argmax, resize_bilinear};
use fastscnn_core::testing::{random_tensor, region_scores};
use fastscnn_cpu::{
    output_vec, resize_argmax_min_scratch_len, resize_argmax_planes, resize_argmax_scratch_len,
    resize_planes, resize_planes_uninit, ExecutionContext, Isa, MapView,
};

/// Runs `test` in a context of each instruction set this processor has.
fn on_every_isa(test: impl Fn() + Sync) {
    for isa in Isa::available() {
        eprintln!("on the {} kernels", isa.name());
        ExecutionContext::new(isa, Some(2)).unwrap().install(&test);
    }
}

#[test]
fn equal_the_resize_and_argmax_ops_exactly() {
    on_every_isa(|| {
        for align_corners in [true, false] {
            for ((h, w), (oh, ow)) in [
                ((8, 16), (64, 128)),
                ((5, 30), (40, 301)),
                ((6, 11), (37, 90)),
                ((3, 40), (5, 41)),
                ((2, 50), (3, 20)),
                ((5, 7), (13, 3)),
                ((4, 4), (4, 4)),
                ((3, 5), (1, 1)),
            ] {
                let c = 19;
                let x = random_tensor(&[1, c, h, w], 7).unwrap();
                let data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let mut out = vec![0f32; c * oh * ow];
                resize_planes(
                    MapView::new(&data, c, h, w),
                    &mut out,
                    (oh, ow),
                    align_corners,
                );
                let expected: Vec<f32> = resize_bilinear(&x, oh, ow, align_corners)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(out, expected, "{h}x{w} -> {oh}x{ow}");
                // Into fresh memory, with streaming stores where the processor has them.
                let mut fresh = output_vec::<f32>(c * oh * ow);
                let spare = &mut fresh.spare_capacity_mut()[..c * oh * ow];
                resize_planes_uninit(
                    MapView::new(&data, c, h, w),
                    spare,
                    (oh, ow),
                    align_corners,
                    true,
                );
                // SAFETY: the resize initialised all of it.
                unsafe { fresh.set_len(c * oh * ow) };
                assert_eq!(fresh, expected, "streaming {h}x{w} -> {oh}x{ow}");
                assert_labels_equal_the_reference(&data, c, (h, w), (oh, ow), align_corners);
            }
        }
    });
}

/// The labels of `resize_argmax_planes` on `data` (c, h, w), with every task's scratch and
/// with one task's (all rows on one walk), equal the reference op's.
fn assert_labels_equal_the_reference(
    data: &[f32],
    c: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    align_corners: bool,
) {
    let x = Tensor::from_vec(data.to_vec(), (1, c, h, w), &candle_core::Device::Cpu).unwrap();
    let expected: Vec<u32> = resize_argmax(&x, oh, ow, align_corners)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let all = resize_argmax_scratch_len(c, (h, w), (oh, ow));
    let one = resize_argmax_min_scratch_len(c, (h, w), ow);
    for (scratch, tasks) in [(all, "every task"), (one, "one task")] {
        let mut labels = vec![u32::MAX; oh * ow];
        let mut scratch = vec![0f32; scratch];
        resize_argmax_planes(
            MapView::new(data, c, h, w),
            &mut labels,
            (oh, ow),
            align_corners,
            &mut scratch,
        );
        assert_eq!(
            labels, expected,
            "{h}x{w} -> {oh}x{ow}, align_corners {align_corners}, {tasks}"
        );
    }
}

#[test]
fn label_scenes_of_regions_as_resizing_then_taking_the_argmax() {
    on_every_isa(|| {
        let c = 19;
        for align_corners in [true, false] {
            for ((h, w), (oh, ow)) in [
                ((32, 64), (256, 512)),
                ((24, 40), (190, 333)),
                ((9, 70), (20, 150)),
            ] {
                let data = region_scores(c, h, w, 5);
                // The scene has both: blocks of one label and blocks on a border.
                let label = |p: usize| {
                    (0..c)
                        .max_by(|&a, &b| data[a * h * w + p].total_cmp(&data[b * h * w + p]))
                        .unwrap()
                };
                let borders = (1..h * w).filter(|&p| label(p) != label(p - 1)).count();
                assert!(
                    borders > 0 && borders < h * w / 4,
                    "{borders} border pixels"
                );
                assert_labels_equal_the_reference(&data, c, (h, w), (oh, ow), align_corners);
            }
        }
    });
}
