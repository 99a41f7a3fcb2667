//! The metrics over a whole label image: a perfect prediction scores 1 on every present class.

use fastscnn_core::testing::shared_dir;
use fastscnn_train::ConfusionMatrix;

#[test]
fn ground_truth_against_itself_is_perfect_with_absent_classes_left_out() {
    let Some(shared) = shared_dir() else { return };
    let path = shared.join(
        "cityscapes-mini/gtFine/val/frankfurt/frankfurt_000001_058914_gtFine_labelTrainIds.png",
    );
    let label = image::open(path).unwrap().into_luma8();
    let mut m = ConfusionMatrix::new(19, 255);
    m.update(label.as_raw(), label.as_raw()).unwrap();
    let iou = m.per_class_iou();
    // The README lists 12 present classes; wall, fence, terrain, truck, bus, train and motorcycle are absent.
    assert_eq!(iou.iter().filter(|v| !v.is_nan()).count(), 12);
    for absent in [3, 4, 9, 14, 15, 16, 17] {
        assert!(iou[absent].is_nan(), "class {absent}");
    }
    assert_eq!(m.mean_iou(), 1.0);
    assert_eq!(m.pixel_accuracy(), 1.0);
    assert_eq!(m.count(0, 0), 808_616, "road pixels per the fixture README");
}
