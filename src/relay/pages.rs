//! The files a relay serves (the demo page, its script and style, the JavaScript client) and
//! the policy they are served under.
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

/// The file served at a route, if any.
pub(crate) fn file(route: &str) -> Option<PageFile> {
    let (content_type, body) = match route {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "/page.js" => ("text/javascript; charset=utf-8", PAGE_JS),
        "/am.js" => ("text/javascript; charset=utf-8", AM_JS),
        "/page.css" => ("text/css; charset=utf-8", PAGE_CSS),
        _ => return None,
    };
    Some(PageFile { content_type, body })
}

/// The Content-Security-Policy of the page's files, for a relay reached as `host` (already
/// checked: it names the relay and holds no separator) over `ws` or `wss`.
pub(crate) fn policy(host: &str, secure: bool) -> String {
    let ws = if secure { "wss" } else { "ws" };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
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
        for file in [INDEX_HTML, PAGE_JS, AM_JS] {
            assert!(!file.contains("innerHTML"), "no innerHTML anywhere");
            assert!(!file.contains("outerHTML") && !file.contains("insertAdjacentHTML"));
            assert!(!file.contains(" onclick=") && !file.contains("style="));
        }
    }
}
