//! Where installed weights live, so that `fastscnn download` and every other command agree without
//! the user passing a path.

use std::path::PathBuf;

/// The variable that moves fastscnn's data folder.
pub const HOME_VAR: &str = "FASTSCNN_HOME";

/// `$FASTSCNN_HOME`, else `$XDG_CACHE_HOME/fastscnn`, else `~/.cache/fastscnn`; `None` when no
/// home folder is known.
pub fn fastscnn_home() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from(HOME_VAR)
        .or_else(|| from("XDG_CACHE_HOME").map(|d| d.join("fastscnn")))
        .or_else(|| from("HOME").map(|d| d.join(".cache").join("fastscnn")))
}

/// The weights commands use when given none: `default.safetensors` in [`fastscnn_home`].
pub fn default_weights_path() -> Option<PathBuf> {
    fastscnn_home().map(|home| home.join("default.safetensors"))
}
