//! The files a relay serves (the demo page, its script and style, the JavaScript client, the
//! foo/bar example) and the policy they are served under.
//!
//! The page runs in the relay's origin, where a token may sit in its address: it loads only
//! its own scripts and style (no inline script, so markup injected through data cannot run),
//! talks only to its own relay, may not be framed, and is never sniffed as another type.

/// A file of the page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageFile {
    pub content_type: &'static str,
    pub body: &'static str,
}

const INDEX_HTML: &str = include_str!("../../relay/web/index.html");
const PAGE_JS: &str = include_str!("../../relay/web/page.js");
const PAGE_CSS: &str = include_str!("../../relay/web/page.css");
const AM_JS: &str = include_str!("../../relay/web/am.js");
const FOOBAR_HTML: &str = include_str!("../../relay/web/foobar.html");
const FOOBAR_JS: &str = include_str!("../../relay/web/foobar.js");

/// The file served at a route, if any.
pub(crate) fn file(route: &str) -> Option<PageFile> {
    let (content_type, body) = match route {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "/page.js" => ("text/javascript; charset=utf-8", PAGE_JS),
        "/am.js" => ("text/javascript; charset=utf-8", AM_JS),
        "/page.css" => ("text/css; charset=utf-8", PAGE_CSS),
        "/foobar.html" => ("text/html; charset=utf-8", FOOBAR_HTML),
        "/foobar.js" => ("text/javascript; charset=utf-8", FOOBAR_JS),
        _ => return None,
    };
    Some(PageFile { content_type, body })
}

/// Where `am.wasm` is looked for when the configuration names no file: where
/// scripts/build-wasm.sh leaves it in this source tree.
pub const DEFAULT_WASM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/wasm/am.wasm");

/// The content type of the WebAssembly module (browsers compile it while it streams in).
pub(crate) const WASM_TYPE: &str = "application/wasm";

/// Why `/am.wasm` cannot be served: said to the page, which shows it.
pub(crate) fn wasm_missing(path: &std::path::Path, error: &std::io::Error) -> String {
    format!(
        "this relay has no am.wasm ({}: {error}); build it with scripts/build-wasm.sh, or give \
         its path with --wasm or `wasm` in the [relay] table, and restart the relay\n",
        path.display()
    )
}

/// The Content-Security-Policy of the page's files, for a relay reached as `host` (already
/// checked: it names the relay and holds no separator) over `ws` or `wss`. The page compiles
/// its own am.wasm ('wasm-unsafe-eval' allows WebAssembly, not JavaScript's eval).
pub(crate) fn policy(host: &str, secure: bool) -> String {
    let ws = if secure { "wss" } else { "ws" };
    format!(
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self'; \
         connect-src 'self' {ws}://{host}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_markup_from_data() {
        let index = file("/").expect("served").body;
        assert!(index.contains(r#"<script type="module" src="/page.js">"#));
        assert_eq!(
            index.matches("<script").count(),
            1,
            "one script, by reference"
        );
        for file in [INDEX_HTML, PAGE_JS, AM_JS, FOOBAR_HTML, FOOBAR_JS] {
            assert!(!file.contains("innerHTML"), "no innerHTML anywhere");
            assert!(!file.contains("outerHTML") && !file.contains("insertAdjacentHTML"));
            assert!(!file.contains(" onclick=") && !file.contains("style="));
        }
    }
}
