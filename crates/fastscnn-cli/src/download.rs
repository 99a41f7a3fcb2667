//! `fastscnn download`: published weights installed where the other commands find them.

use anyhow::{Context, Result};
use fastscnn_weights::{default_weights_path, install, Origin, Replace};

use crate::cli::DownloadArgs;

pub fn run(args: &DownloadArgs) -> Result<()> {
    let origin = match (args.hub.file()?, &args.url) {
        (Some(file), _) => Origin::Hub(file),
        (None, Some(url)) => Origin::Url(url.clone()),
        (None, None) => Origin::published(),
    };
    let output = match &args.output {
        Some(output) => output.clone(),
        None => default_weights_path()
            .context("no home folder known: pass --output FILE or set FASTSCNN_HOME")?,
    };
    let replace = if args.force {
        Replace::Existing
    } else {
        Replace::Never
    };
    let installed = install(&origin, args.sha256.as_deref(), &output, replace)?;
    println!("{installed}");
    Ok(())
}
