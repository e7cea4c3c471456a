//! What the binary carries inside it, so that `wsplug` alone serves the demo from any directory
//! (a copied or `cargo install`ed binary has no source checkout beside it): the example plugins
//! `echo` and `chat`, and the chat page.
//!
//! A config names them with the `builtin:` prefix, `plugin = "builtin:chat"` and
//! `static_dir = "builtin:demo"`; the embedded default config uses nothing else. A builtin is
//! never watched (it cannot change while the binary runs) and never resolved against a directory.

use std::path::Path;

/// The prefix that marks a builtin in a `plugin` or `static_dir` setting.
pub const PREFIX: &str = "builtin:";

/// The name of the builtin a configured path names, if it is one (`builtin:chat` → `chat`).
pub fn name_of(path: &Path) -> Option<&str> {
    path.to_str()?.strip_prefix(PREFIX)
}

/// The builtin plugins, compiled by `build.rs` from `plugins/` (empty when the build skipped them).
const PLUGINS: &[(&str, &[u8])] = &[
    ("echo", include_bytes!(concat!(env!("OUT_DIR"), "/builtin-echo.wasm"))),
    ("chat", include_bytes!(concat!(env!("OUT_DIR"), "/builtin-chat.wasm"))),
];

/// The bytes of a builtin plugin, or why there are none.
pub fn plugin(name: &str) -> Result<&'static [u8], String> {
    match PLUGINS.iter().find(|(n, _)| *n == name) {
        Some((_, [])) => {
            Err(format!("{PREFIX}{name} was not built into this binary (it was built with WSPLUG_SKIP_PLUGIN_BUILD=1)"))
        }
        Some((_, bytes)) => Ok(bytes),
        None => {
            let known: Vec<String> = PLUGINS.iter().map(|(n, _)| format!("{PREFIX}{n}")).collect();
            Err(format!("there is no plugin {PREFIX}{name} (built in: {})", known.join(", ")))
        }
    }
}

/// The one builtin static directory: the chat page of `examples/static/`.
pub const DEMO_PAGE: &str = "demo";

const DEMO_FILES: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../../examples/static/index.html")),
    ("app.js", include_bytes!("../../examples/static/app.js")),
    ("style.css", include_bytes!("../../examples/static/style.css")),
];

/// A file of a builtin static directory by its path inside it (`""` is `index.html`).
pub fn static_file(dir: &str, path: &str) -> Option<(&'static str, &'static [u8])> {
    if dir != DEMO_PAGE {
        return None;
    }
    let path = if path.is_empty() { "index.html" } else { path };
    DEMO_FILES.iter().find(|(n, _)| *n == path).map(|(n, b)| (*n, *b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_named_by_prefix() {
        assert_eq!(name_of(Path::new("builtin:chat")), Some("chat"));
        assert_eq!(name_of(Path::new("plugins/chat.wasm")), None);
        assert!(plugin("nope").unwrap_err().contains("builtin:echo, builtin:chat"));
    }

    #[test]
    fn the_demo_page_is_embedded() {
        let (_, index) = static_file(DEMO_PAGE, "").unwrap();
        assert!(index.starts_with(b"<!doctype html") || index.starts_with(b"<!DOCTYPE html"));
        assert!(static_file(DEMO_PAGE, "app.js").is_some());
        assert!(static_file(DEMO_PAGE, "../Cargo.toml").is_none());
        assert!(static_file("other", "index.html").is_none());
    }
}
