//! Pipeline templates: `pipelines/<name>.gst` files holding a gst-launch description with
//! `{placeholders}`, and header comments naming the URI schemes the template takes and
//! whether its source is live (optional):
//!
//! ```text
//! # schemes: rtsp rtsps
//! # live: yes
//! uridecodebin uri={uri} name=dec ...
//! ```
//!
//! A live source's end of stream is an outage to reconnect from; a non-live one's is the end.
//! Without a `live:` line it is inferred from the pipeline (no preroll, or a live latency).
//! A `# uris: NAME...` line names options that hold further URIs (a call's second leg): they
//! are checked against the schemes as `{uri}` is.
//!
//! Every value is inserted as a double-quoted gst-launch string (`"` and `\` escaped), so a
//! URI or option can never add elements to the pipeline. A placeholder with no value is an
//! error naming it; so is a URI whose scheme the template does not list.

use std::collections::BTreeMap;
use std::path::Path;

use crate::streams::StreamSpec;

/// A loaded template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// File stem.
    pub name: String,
    /// URI schemes it accepts (`file`, `rtsp`, ...); empty: any.
    pub schemes: Vec<String>,
    /// Whether the source is live, as the header declares (`# live: yes|no`); None: infer.
    pub live: Option<bool>,
    /// Options holding further URIs (`# uris: uri_b`), checked against `schemes` too.
    pub uris: Vec<String>,
    /// The launch description (comment lines removed, lines joined).
    pub body: String,
}

/// Template errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The file could not be read.
    #[error("pipeline template '{name}' cannot be read from {path}: {message}")]
    Read {
        /// Template name.
        name: String,
        /// Where it was looked for.
        path: String,
        /// The I/O error, as text.
        message: String,
    },
    /// The template names a placeholder nobody supplied.
    #[error(
        "pipeline template '{template}' uses {{{placeholder}}}, which has no value (give it in the stream's options)"
    )]
    Unbound {
        /// Template name.
        template: String,
        /// The placeholder.
        placeholder: String,
    },
    /// The URI's scheme is not one the template takes.
    #[error("URI '{uri}' has scheme '{scheme}', but template '{template}' takes: {allowed}")]
    Scheme {
        /// The URI.
        uri: String,
        /// Its scheme.
        scheme: String,
        /// Template name.
        template: String,
        /// Accepted schemes.
        allowed: String,
    },
    /// A header line with a value it cannot take.
    #[error("pipeline template '{template}' has '# {line}'; live takes yes or no")]
    Header {
        /// Template name.
        template: String,
        /// The offending header.
        line: String,
    },
    /// A name that is not a plain file stem (a path, an empty name, ...).
    #[error("'{0}' is not a template name ({NAME_ALLOWED})")]
    Name(String),
    /// A `{` without its `}`.
    #[error("pipeline template '{0}' has an unclosed '{{'")]
    Unclosed(String),
}

impl Template {
    /// Load `<dir>/<name>.gst`.
    pub fn load(dir: &Path, name: &str) -> Result<Template, TemplateError> {
        if !valid_name(name) {
            return Err(TemplateError::Name(name.to_string()));
        }
        let path = dir.join(format!("{name}.gst"));
        let text = std::fs::read_to_string(&path).map_err(|e| TemplateError::Read {
            name: name.to_string(),
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(name, &text)
    }

    /// Parse template text.
    pub fn parse(name: &str, text: &str) -> Result<Template, TemplateError> {
        let mut schemes = Vec::new();
        let mut uris = Vec::new();
        let mut live = None;
        let mut body = Vec::new();
        for line in text.lines() {
            let t = line.trim();
            if let Some(c) = t.strip_prefix('#') {
                if let Some(list) = c.trim().strip_prefix("schemes:") {
                    schemes.extend(list.split_whitespace().map(str::to_string));
                } else if let Some(list) = c.trim().strip_prefix("uris:") {
                    uris.extend(list.split_whitespace().map(str::to_string));
                } else if let Some(v) = c.trim().strip_prefix("live:") {
                    live = match v.trim() {
                        "yes" | "true" => Some(true),
                        "no" | "false" => Some(false),
                        other => {
                            return Err(TemplateError::Header {
                                template: name.to_string(),
                                line: format!("live: {other}"),
                            });
                        }
                    };
                }
            } else if !t.is_empty() {
                body.push(t.trim_end_matches('\\').trim());
            }
        }
        Ok(Template {
            name: name.to_string(),
            schemes,
            live,
            uris,
            body: body.join(" "),
        })
    }

    /// Check a URI's scheme against the template's list.
    pub fn check_uri(&self, uri: &str) -> Result<(), TemplateError> {
        let scheme = uri.split_once(':').map(|(s, _)| s).unwrap_or("");
        if self.schemes.is_empty() || self.schemes.iter().any(|s| s == scheme) {
            Ok(())
        } else {
            Err(TemplateError::Scheme {
                uri: uri.to_string(),
                scheme: scheme.to_string(),
                template: self.name.clone(),
                allowed: self.schemes.join(", "),
            })
        }
    }

    /// The launch description with every `{name}` replaced by the quoted value of `vars`.
    pub fn render(&self, vars: &BTreeMap<String, String>) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.body.len() + 64);
        let mut rest = self.body.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(self.name.clone()))?;
            let key = &after[..close];
            let value = vars.get(key).ok_or_else(|| TemplateError::Unbound {
                template: self.name.clone(),
                placeholder: key.to_string(),
            })?;
            out.push_str(&quote(value));
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A gst-launch double-quoted string.
pub fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Placeholders the daemon fills and a stream's options may not replace (the URI is checked
/// against the template's schemes; the frame size and rate are the daemon's settings; the
/// audio caps follow the stream's channel map).
pub const FIXED: [&str; 6] = [
    "uri",
    "fps",
    "max_width",
    "max_height",
    "video_caps",
    "audio_caps",
];

/// Audio caps of a stream without a channel map: mixed to mono.
pub const MONO_CAPS: &str = "audio/x-raw,format=F32LE,channels=1,layout=interleaved";
/// Audio caps of a stream with a channel map: the channels as the media has them.
pub const CHANNELS_CAPS: &str = "audio/x-raw,format=F32LE,layout=interleaved";

/// What a template name may be, as error messages state it.
pub const NAME_ALLOWED: &str =
    "the name of a .gst file in pipelines.dir: letters, digits, _ and - (no paths)";

/// True for a template name: a file stem inside `pipelines.dir`, never a path.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The values a stream's template is rendered with: the built-in placeholders (`{uri}`,
/// `{fps}`, `{max_width}`, `{max_height}`, `{sync}`, `{video_caps}`), then the stream's
/// options, which may set `{sync}` and the template's own placeholders but not those in
/// [`FIXED`] (the stream checks refuse them). Validation renders with the same values.
pub fn template_vars(
    spec: &StreamSpec,
    fps: u32,
    max_width: u32,
    max_height: u32,
) -> BTreeMap<String, String> {
    let video_caps = format!(
        "video/x-raw,format=RGB,width=(int)[16,{max_width}],height=(int)[16,{max_height}],pixel-aspect-ratio=(fraction)1/1"
    );
    let mut v: BTreeMap<String, String> = [
        ("uri", spec.uri.clone()),
        ("fps", fps.to_string()),
        ("max_width", max_width.to_string()),
        ("max_height", max_height.to_string()),
        ("sync", "true".to_string()),
        ("video_caps", video_caps),
        (
            "audio_caps",
            if spec.channels.is_empty() {
                MONO_CAPS
            } else {
                CHANNELS_CAPS
            }
            .to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    v.extend(spec.options.clone());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use gstreamer::prelude::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_quoted_values() {
        let t = Template::parse(
            "x",
            "# schemes: file\n# live: no\n# a comment\nuridecodebin uri={uri} ! \\\n  fakesink name={n}\n",
        )
        .unwrap();
        assert_eq!(t.schemes, ["file"]);
        assert_eq!(t.live, Some(false));
        let r = t
            .render(&vars(&[("uri", "file:///a b.mp4"), ("n", "s")]))
            .unwrap();
        assert_eq!(
            r,
            r#"uridecodebin uri="file:///a b.mp4" ! fakesink name="s""#
        );
    }

    #[test]
    fn values_cannot_inject_elements() {
        let t = Template::parse("x", "uridecodebin uri={uri} ! fakesink").unwrap();
        assert_eq!(t.live, None);
        let r = t
            .render(&vars(&[(
                "uri",
                r#"file:///x" ! filesink location="/etc/passwd"#,
            )]))
            .unwrap();
        assert_eq!(
            r,
            r#"uridecodebin uri="file:///x\" ! filesink location=\"/etc/passwd" ! fakesink"#
        );
        // And GStreamer reads it as one property value: the pipeline has no filesink.
        gstreamer::init().unwrap();
        if let Ok(p) = gstreamer::parse::launch(&r) {
            let bin = p.downcast::<gstreamer::Bin>().unwrap();
            assert!(
                bin.iterate_elements()
                    .into_iter()
                    .flatten()
                    .all(|e| { e.factory().map(|f| f.name() != "filesink").unwrap_or(true) })
            );
        }
    }

    #[test]
    fn unbound_placeholder_and_scheme_are_named() {
        let t = Template::parse("rtp", "# schemes: udp\nudpsrc uri={uri} caps={caps}").unwrap();
        let e = Template::parse("rtp", "# live: maybe\nudpsrc").unwrap_err();
        assert!(e.to_string().contains("live: maybe"), "{e}");
        let e = t
            .render(&vars(&[("uri", "udp://0.0.0.0:5004")]))
            .unwrap_err();
        assert!(e.to_string().contains("{caps}"), "{e}");
        let e = t.check_uri("http://x").unwrap_err();
        assert!(
            e.to_string().contains("scheme 'http'") && e.to_string().contains("udp"),
            "{e}"
        );
        assert!(t.check_uri("udp://0.0.0.0:5004").is_ok());
    }
}
