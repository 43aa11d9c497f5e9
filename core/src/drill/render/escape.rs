//! How report text is made safe for the format it lands in.
//!
//! `core/askama.toml` makes these the escapers of the report templates: [`Markdown`] for
//! `.md`, [`Html`] for `.html` and `.svg`. Askama applies them to every value a template
//! prints, so a template cannot forget to escape; only [`escape_markdown_block`] (through
//! the `md_block` filter) and code spans are chosen by the template.
//!
//! [`Html`] is not askama's own HTML escaper because that one writes numeric entities
//! (`&#60;`) where pgvault always wrote named ones (`&lt;`): the renders of stored reports
//! are hashed, and the same report must keep rendering to the same bytes.

use std::fmt::{self, Write};

use askama::filters::Escaper;

/// The Markdown escaper of the `.md` templates: [`escape_markdown`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Markdown;

impl Escaper for Markdown {
    fn write_escaped_str<W: Write>(&self, dest: W, text: &str) -> fmt::Result {
        write_markdown(dest, text)
    }
}

/// The HTML escaper of the `.html` and `.svg` templates: [`escape_html`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Html;

impl Escaper for Html {
    fn write_escaped_str<W: Write>(&self, dest: W, text: &str) -> fmt::Result {
        write_html(dest, text)
    }
}

/// Writes `text` made safe for a Markdown table cell or list item: `|` and other markup
/// characters are backslash-escaped, `<` cannot open raw HTML, and line breaks (LF, CRLF
/// or CR) become `<br>` so a multi-line value stays inside its cell. A CRLF is one break
/// only when both characters arrive in the same call, which they do: templates print
/// each value whole.
fn write_markdown<W: Write>(mut dest: W, text: &str) -> fmt::Result {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                dest.write_str("<br>")?;
            }
            '\n' => dest.write_str("<br>")?,
            '\\' | '|' | '`' | '*' | '<' | '[' | '~' => {
                dest.write_char('\\')?;
                dest.write_char(c)?;
            }
            _ => dest.write_char(c)?,
        }
    }
    Ok(())
}

/// Writes `text` made safe for HTML content and attribute values.
fn write_html<W: Write>(mut dest: W, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '&' => dest.write_str("&amp;")?,
            '<' => dest.write_str("&lt;")?,
            '>' => dest.write_str("&gt;")?,
            '"' => dest.write_str("&quot;")?,
            '\'' => dest.write_str("&#39;")?,
            _ => dest.write_char(c)?,
        }
    }
    Ok(())
}

/// `text` escaped for Markdown: see [`write_markdown`].
pub(super) fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    // Writing into a String cannot fail.
    let _ = write_markdown(&mut out, text);
    out
}

/// Text made safe to start a paragraph or list item: like [`escape_markdown`], and a
/// leading `#`, `-`, `+` or `>` cannot turn it into a heading, list or quote.
pub(super) fn escape_markdown_block(text: &str) -> String {
    let escaped = escape_markdown(text);
    if escaped.starts_with(['#', '-', '+', '>']) {
        format!("\\{escaped}")
    } else {
        escaped
    }
}

/// `text` escaped for HTML: see [`write_html`].
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    // Writing into a String cannot fail.
    let _ = write_html(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            escape_html("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_markdown("a|b\r\nc\nd"), "a\\|b<br>c<br>d");
        assert_eq!(escape_markdown("a\rb"), "a<br>b");
        assert_eq!(
            escape_markdown_block("# not a heading"),
            "\\# not a heading"
        );
        assert_eq!(escape_markdown("> 0"), "> 0");
        assert_eq!(escape_markdown("count(*) [x]"), "count(\\*) \\[x]");
    }

    #[test]
    fn escapers_write_what_the_functions_return() {
        let text = "<b>|`x`*\r\n'&\"";
        let mut md = String::new();
        Markdown.write_escaped_str(&mut md, text).unwrap();
        assert_eq!(md, escape_markdown(text));
        let mut html = String::new();
        Html.write_escaped_str(&mut html, text).unwrap();
        assert_eq!(html, escape_html(text));
    }
}
