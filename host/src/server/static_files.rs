//! Static files for plain HTTP GETs on paths that are not WebSocket routes (the browser demo).
//!
//! Only files inside the configured directory are served: the request path is decoded, split into
//! segments, and any `..`, empty-after-decoding, backslash or NUL segment is refused before the file
//! system is touched; the resolved path must still lie under the canonical directory (symlinks out
//! are refused too). Every response closes the connection: this is a WebSocket server that can
//! show its demo page, not a web server.

use std::path::{Path, PathBuf};

use crate::protocol::handshake::{Request, http_response};

/// Files larger than this are not served (the demo pages are small).
const MAX_FILE: u64 = 8 << 20;

/// The full HTTP response for a GET on `request`'s path under `dir`.
pub async fn respond(dir: &Path, request: &Request) -> Vec<u8> {
    let not_found = || http_response(404, &[], "text/plain; charset=utf-8", b"not found\n");
    if let Some(builtin) = crate::builtin::name_of(dir) {
        // The same path rules as on disk, then a lookup in what the binary carries.
        let Some(path) = resolve(Path::new(""), request.path()) else { return not_found() };
        let Some((name, body)) = path.to_str().and_then(|p| crate::builtin::static_file(builtin, p)) else {
            return not_found();
        };
        return ok(Path::new(name), body);
    }
    let Some(path) = resolve(dir, request.path()) else {
        return not_found();
    };
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return not_found();
    };
    let path = if meta.is_dir() { path.join("index.html") } else { path };
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return not_found();
    };
    if !meta.is_file() || meta.len() > MAX_FILE {
        return not_found();
    }
    // Refuse a symlink that leads out of the directory.
    match (tokio::fs::canonicalize(&path).await, tokio::fs::canonicalize(dir).await) {
        (Ok(real), Ok(root)) if real.starts_with(&root) => {}
        _ => return not_found(),
    }
    match tokio::fs::read(&path).await {
        Ok(body) => ok(&path, &body),
        Err(_) => not_found(),
    }
}

fn ok(path: &Path, body: &[u8]) -> Vec<u8> {
    http_response(
        200,
        &[("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")],
        content_type(path),
        body,
    )
}

/// Maps a URL path to a file path under `dir`, or `None` if it tries to leave it.
pub fn resolve(dir: &Path, url_path: &str) -> Option<PathBuf> {
    let mut out = dir.to_path_buf();
    for raw in url_path.split('/') {
        let segment = crate::protocol::handshake::percent_decode(raw, false)?;
        match segment.as_str() {
            "" | "." => continue,
            ".." => return None,
            s if s.contains(['/', '\\', '\0']) || s.starts_with('.') => return None,
            s => out.push(s),
        }
    }
    Some(out)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        let d = Path::new("/srv/static");
        assert_eq!(resolve(d, "/index.html"), Some(PathBuf::from("/srv/static/index.html")));
        assert_eq!(resolve(d, "/"), Some(PathBuf::from("/srv/static")));
        assert_eq!(resolve(d, "/../etc/passwd"), None);
        assert_eq!(resolve(d, "/a/%2e%2e/%2e%2e/etc/passwd"), None);
        assert_eq!(resolve(d, "/%2e%2e%2fetc"), None);
        assert_eq!(resolve(d, "/a%5c..%5cb"), None);
        assert_eq!(resolve(d, "/.git/config"), None);
        assert_eq!(resolve(d, "/x%00y"), None);
        assert_eq!(resolve(d, "/bad%zz"), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(Path::new("a.html")), "text/html; charset=utf-8");
        assert_eq!(content_type(Path::new("a.js")), "text/javascript; charset=utf-8");
        assert_eq!(content_type(Path::new("a.bin")), "application/octet-stream");
    }
}
