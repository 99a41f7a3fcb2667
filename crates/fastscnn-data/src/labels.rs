//! The Cityscapes label table, as cityscapesScripts' `helpers/labels.py` defines it, and the
//! mappings between label ids, train ids, categories and colours.

/// Train id of every pixel that is not evaluated.
pub const IGNORE_TRAIN_ID: u8 = 255;
/// Number of evaluated classes (train ids 0..19).
pub const NUM_TRAIN_CLASSES: usize = 19;

/// One row of the official label table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// The label's name in the official table, e.g. `road`.
    pub name: &'static str,
    /// The id stored in `*_gtFine_labelIds.png`; -1 for `license plate`, which has no pixels there.
    pub id: i16,
    /// Index among the 19 evaluated classes, or 255 for ignored labels (-1 for `license plate`).
    pub train_id: i16,
    /// The name of the label's category, e.g. `flat` or `vehicle`.
    pub category: &'static str,
    /// The category's id: 0 for `void`, 1..=7 for the evaluated categories.
    pub category_id: u8,
    /// Whether the dataset's instance annotations separate the label's objects.
    pub has_instances: bool,
    /// Whether the official evaluation leaves the label out.
    pub ignore_in_eval: bool,
    /// RGB colour of the label in `*_gtFine_color.png`.
    pub color: [u8; 3],
}

#[allow(clippy::too_many_arguments)] // one argument per column of the official table
const fn label(
    name: &'static str,
    id: i16,
    train_id: i16,
    category: &'static str,
    category_id: u8,
    has_instances: bool,
    ignore_in_eval: bool,
    color: [u8; 3],
) -> Label {
    Label {
        name,
        id,
        train_id,
        category,
        category_id,
        has_instances,
        ignore_in_eval,
        color,
    }
}

/// All 35 labels, in the order of the official table.
pub const LABELS: [Label; 35] = [
    label("unlabeled", 0, 255, "void", 0, false, true, [0, 0, 0]),
    label("ego vehicle", 1, 255, "void", 0, false, true, [0, 0, 0]),
    label(
        "rectification border",
        2,
        255,
        "void",
        0,
        false,
        true,
        [0, 0, 0],
    ),
    label("out of roi", 3, 255, "void", 0, false, true, [0, 0, 0]),
    label("static", 4, 255, "void", 0, false, true, [0, 0, 0]),
    label("dynamic", 5, 255, "void", 0, false, true, [111, 74, 0]),
    label("ground", 6, 255, "void", 0, false, true, [81, 0, 81]),
    label("road", 7, 0, "flat", 1, false, false, [128, 64, 128]),
    label("sidewalk", 8, 1, "flat", 1, false, false, [244, 35, 232]),
    label("parking", 9, 255, "flat", 1, false, true, [250, 170, 160]),
    label(
        "rail track",
        10,
        255,
        "flat",
        1,
        false,
        true,
        [230, 150, 140],
    ),
    label(
        "building",
        11,
        2,
        "construction",
        2,
        false,
        false,
        [70, 70, 70],
    ),
    label(
        "wall",
        12,
        3,
        "construction",
        2,
        false,
        false,
        [102, 102, 156],
    ),
    label(
        "fence",
        13,
        4,
        "construction",
        2,
        false,
        false,
        [190, 153, 153],
    ),
    label(
        "guard rail",
        14,
        255,
        "construction",
        2,
        false,
        true,
        [180, 165, 180],
    ),
    label(
        "bridge",
        15,
        255,
        "construction",
        2,
        false,
        true,
        [150, 100, 100],
    ),
    label(
        "tunnel",
        16,
        255,
        "construction",
        2,
        false,
        true,
        [150, 120, 90],
    ),
    label("pole", 17, 5, "object", 3, false, false, [153, 153, 153]),
    label(
        "polegroup",
        18,
        255,
        "object",
        3,
        false,
        true,
        [153, 153, 153],
    ),
    label(
        "traffic light",
        19,
        6,
        "object",
        3,
        false,
        false,
        [250, 170, 30],
    ),
    label(
        "traffic sign",
        20,
        7,
        "object",
        3,
        false,
        false,
        [220, 220, 0],
    ),
    label(
        "vegetation",
        21,
        8,
        "nature",
        4,
        false,
        false,
        [107, 142, 35],
    ),
    label("terrain", 22, 9, "nature", 4, false, false, [152, 251, 152]),
    label("sky", 23, 10, "sky", 5, false, false, [70, 130, 180]),
    label("person", 24, 11, "human", 6, true, false, [220, 20, 60]),
    label("rider", 25, 12, "human", 6, true, false, [255, 0, 0]),
    label("car", 26, 13, "vehicle", 7, true, false, [0, 0, 142]),
    label("truck", 27, 14, "vehicle", 7, true, false, [0, 0, 70]),
    label("bus", 28, 15, "vehicle", 7, true, false, [0, 60, 100]),
    label("caravan", 29, 255, "vehicle", 7, true, true, [0, 0, 90]),
    label("trailer", 30, 255, "vehicle", 7, true, true, [0, 0, 110]),
    label("train", 31, 16, "vehicle", 7, true, false, [0, 80, 100]),
    label("motorcycle", 32, 17, "vehicle", 7, true, false, [0, 0, 230]),
    label("bicycle", 33, 18, "vehicle", 7, true, false, [119, 11, 32]),
    label(
        "license plate",
        -1,
        -1,
        "vehicle",
        7,
        false,
        true,
        [0, 0, 142],
    ),
];

/// The evaluated label of each train id, in train id order.
pub fn train_labels() -> impl Iterator<Item = &'static Label> {
    (0..NUM_TRAIN_CLASSES as i16).map(|t| {
        LABELS
            .iter()
            .find(|l| l.train_id == t)
            .expect("every train id 0..19 has a label")
    })
}

/// Name of each train id's class, in train id order.
pub fn train_class_names() -> [&'static str; NUM_TRAIN_CLASSES] {
    let mut names = [""; NUM_TRAIN_CLASSES];
    for (slot, l) in names.iter_mut().zip(train_labels()) {
        *slot = l.name;
    }
    names
}

/// A 256-entry lookup from label id to train id: every label whose train id is 255 or -1 maps to
/// [`IGNORE_TRAIN_ID`], and an id the table does not have to `None`, which cityscapesScripts'
/// `createTrainIdLabelImgs` refuses too (its `id2label` lookup fails).
pub fn label_id_to_train_id_table() -> [Option<u8>; 256] {
    let mut table = [None; 256];
    for l in LABELS.iter().filter(|l| l.id >= 0) {
        table[l.id as usize] = Some(if (0..NUM_TRAIN_CLASSES as i16).contains(&l.train_id) {
            l.train_id as u8
        } else {
            IGNORE_TRAIN_ID
        });
    }
    table
}

/// Whether `value` may appear in a train-id label file: an evaluated class or ignore.
pub fn is_train_id(value: u8) -> bool {
    usize::from(value) < NUM_TRAIN_CLASSES || value == IGNORE_TRAIN_ID
}

/// The colour of each train id; [`IGNORE_TRAIN_ID`] and anything out of range is black.
pub fn train_id_color(train_id: u8) -> [u8; 3] {
    train_labels()
        .nth(train_id as usize)
        .map_or([0, 0, 0], |l| l.color)
}

/// The label id a train id stands for in benchmark submissions (`0` for ignore and out of range).
pub fn train_id_to_label_id(train_id: u8) -> u8 {
    train_labels()
        .nth(train_id as usize)
        .map_or(0, |l| l.id as u8)
}

/// The seven evaluated categories, in category id order (1..=7); `void` (0) is not evaluated.
pub const CATEGORY_NAMES: [&str; 7] = [
    "flat",
    "construction",
    "object",
    "nature",
    "sky",
    "human",
    "vehicle",
];

/// For each train id (0..19), the index of its category in [`CATEGORY_NAMES`], for the category
/// IoU of the Cityscapes benchmark.
pub fn train_id_categories() -> [usize; NUM_TRAIN_CLASSES] {
    let mut categories = [0; NUM_TRAIN_CLASSES];
    for (slot, l) in categories.iter_mut().zip(train_labels()) {
        *slot = l.category_id as usize - 1;
    }
    categories
}

/// Decodes a `*_gtFine_color.png` pixel into a train id. Colours are not unique in the official
/// table (`license plate` shares `car`'s, several void labels share black), so the evaluated
/// classes win and every other colour is [`IGNORE_TRAIN_ID`].
pub fn color_to_train_id(color: [u8; 3]) -> u8 {
    train_labels()
        .position(|l| l.color == color)
        .map_or(IGNORE_TRAIN_ID, |t| t as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_35_labels_and_19_train_classes() {
        assert_eq!(LABELS.len(), 35);
        let names = train_class_names();
        assert_eq!(names[0], "road");
        assert_eq!(names[10], "sky");
        assert_eq!(names[18], "bicycle");
        let ids: Vec<i16> = LABELS.iter().map(|l| l.id).collect();
        assert_eq!(&ids[..34], &(0..34).collect::<Vec<i16>>()[..]);
    }

    #[test]
    fn id_and_train_id_round_trip() {
        let table = label_id_to_train_id_table();
        for t in 0..NUM_TRAIN_CLASSES as u8 {
            assert_eq!(table[train_id_to_label_id(t) as usize], Some(t));
        }
        assert_eq!(table[0], Some(IGNORE_TRAIN_ID));
        assert_eq!(table[9], Some(IGNORE_TRAIN_ID), "parking is not evaluated");
        assert_eq!(table[33], Some(18));
        assert_eq!(table[34], None, "no label has id 34");
        assert_eq!(table[200], None);
        assert!(is_train_id(18) && is_train_id(IGNORE_TRAIN_ID) && !is_train_id(19));
        assert_eq!(train_id_to_label_id(IGNORE_TRAIN_ID), 0);
    }

    #[test]
    fn colours_of_train_ids() {
        assert_eq!(train_id_color(0), [128, 64, 128]);
        assert_eq!(train_id_color(13), [0, 0, 142]);
        assert_eq!(train_id_color(IGNORE_TRAIN_ID), [0, 0, 0]);
    }
    #[test]
    fn colours_decode_to_train_ids() {
        for t in 0..NUM_TRAIN_CLASSES as u8 {
            assert_eq!(color_to_train_id(train_id_color(t)), t);
        }
        assert_eq!(color_to_train_id([0, 0, 0]), IGNORE_TRAIN_ID);
        assert_eq!(
            color_to_train_id([250, 170, 160]),
            IGNORE_TRAIN_ID,
            "parking"
        );
        assert_eq!(color_to_train_id([1, 2, 3]), IGNORE_TRAIN_ID);
    }

    #[test]
    fn categories_of_train_ids() {
        let cats = train_id_categories();
        let name = |t: usize| CATEGORY_NAMES[cats[t]];
        assert_eq!(name(0), "flat");
        assert_eq!(name(2), "construction");
        assert_eq!(name(5), "object");
        assert_eq!(name(8), "nature");
        assert_eq!(name(10), "sky");
        assert_eq!(name(12), "human");
        assert_eq!(name(18), "vehicle");
        for c in 0..CATEGORY_NAMES.len() {
            assert!(cats.contains(&c), "category {c} has an evaluated class");
        }
    }
}
