//! The label table against real Cityscapes files.

use fastscnn_core::testing::shared_dir;
use fastscnn_data::labels::label_id_to_train_id_table;

#[test]
fn label_ids_map_to_the_shipped_train_ids_pixel_for_pixel() {
    let Some(shared) = shared_dir() else { return };
    let dir = shared.join("cityscapes-mini/gtFine/val/frankfurt");
    let table = label_id_to_train_id_table();
    for frame in ["frankfurt_000001_058914", "frankfurt_000000_000294"] {
        let ids = image::open(dir.join(format!("{frame}_gtFine_labelIds.png")))
            .unwrap()
            .into_luma8();
        let expected = image::open(dir.join(format!("{frame}_gtFine_labelTrainIds.png")))
            .unwrap()
            .into_luma8();
        assert_eq!(ids.dimensions(), expected.dimensions());
        let mapped: Vec<u8> = ids.as_raw().iter().map(|&id| table[id as usize]).collect();
        assert!(
            mapped == *expected.as_raw(),
            "{frame}: mapped train ids differ"
        );
    }
}
