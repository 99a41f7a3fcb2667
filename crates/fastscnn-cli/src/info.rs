//! `fastscnn info`: what a checkpoint holds, checked by building the network from it.

use anyhow::{Context, Result};
use fastscnn_data::ClassTable;
use fastscnn_model::{AuxSource, FastScnn, LoadOptions, WeightFile, CLASS_TABLE_KEY};

use crate::cli::InfoArgs;
use crate::weights;

pub fn run(args: &InfoArgs) -> Result<()> {
    let path = weights::resolve(&args.weights)?;
    let file = WeightFile::open(&path)?;
    let bytes = std::fs::metadata(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .len();
    // Building the network proves the file loads: every tensor present, used and well shaped.
    let model = FastScnn::from_weights(&file, &LoadOptions::default())?;
    let parameters = file.parameter_count();
    let auxiliary = file.auxiliary_parameter_count()?;
    let heads: Vec<&str> = model
        .aux_heads()
        .iter()
        .map(|h| match h {
            AuxSource::HigherRes => "higher-res",
            AuxSource::Global => "global",
        })
        .collect();

    println!("file        {}", path.display());
    println!("format      {}", file.format());
    println!("size        {bytes} bytes ({:.2} MB)", bytes as f64 / 1e6);
    println!("layout      {}", model.config().layout);
    println!("classes     {}", model.num_classes());
    println!(
        "parameters  {parameters} ({} without the auxiliary heads)",
        parameters - auxiliary
    );
    println!("tensors     {}", file.len());
    println!(
        "aux heads   {}",
        if heads.is_empty() {
            "none".to_string()
        } else {
            heads.join(", ")
        }
    );
    if !file.training_state().is_empty() {
        println!(
            "train state {} tensors (a `fastscnn train` checkpoint, resumable)",
            file.training_state().len()
        );
    }
    let table = model.classes();
    let origin = if file.metadata().contains_key(CLASS_TABLE_KEY) {
        "from the weights' metadata"
    } else if table == &ClassTable::cityscapes() {
        "Cityscapes', the weights carry no class table"
    } else {
        "generated, the weights carry no class table"
    };
    println!(
        "class table {origin}, ignore value {}",
        table.ignore_index()
    );
    for (index, class) in table.classes().iter().enumerate() {
        let [r, g, b] = class.color;
        println!("  {index:>3}  #{r:02x}{g:02x}{b:02x}  {}", class.name);
    }
    for (key, value) in file.metadata() {
        // The class table is printed above, one class a line.
        if key != CLASS_TABLE_KEY {
            println!("metadata    {key} = {value}");
        }
    }
    Ok(())
}
