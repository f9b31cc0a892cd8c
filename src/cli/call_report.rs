//! `summerd report EVENTS.jsonl --out CALL.html|CALL.svg`: a picture of a whole call (the
//! drawing is `summerd::report`'s).

use std::path::Path;

use anyhow::{Context, bail};
use summerd::report::{self, plural};

/// What `out`'s extension asks for.
enum Format {
    Html,
    Svg,
}

fn format_of(out: &Path) -> anyhow::Result<Format> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => Ok(Format::Html),
        Some("svg") => Ok(Format::Svg),
        _ => bail!(
            "{}: the output's extension must be .html, .htm or .svg",
            out.display()
        ),
    }
}

/// Read the events at `input` (JSONL, as `replay --out` and `tail --json` write them) and
/// write the call's report to `out`: an HTML page or an SVG, by its extension.
pub fn run(input: &Path, out: &Path) -> anyhow::Result<()> {
    let format = format_of(out)?;
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("reading the events {}", input.display()))?;
    let call = report::read(&text).with_context(|| input.display().to_string())?;
    let doc = match format {
        Format::Html => report::html(&call),
        Format::Svg => report::svg(&call),
    };
    std::fs::write(out, doc).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "report: {} of {}, {} -> {}",
        plural(call.utterances(), "utterance"),
        plural(call.streams.len(), "stream"),
        plural(call.signals(), "signal"),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_picks_the_format() {
        assert!(matches!(
            format_of(Path::new("a/CALL.HTML")),
            Ok(Format::Html)
        ));
        assert!(matches!(format_of(Path::new("c.htm")), Ok(Format::Html)));
        assert!(matches!(format_of(Path::new("c.svg")), Ok(Format::Svg)));
        let err = format_of(Path::new("c.pdf")).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("c.pdf: the output's extension must be .html, .htm or .svg")
        );
        assert!(format_of(Path::new("noext")).is_err());
    }
}
