//! `[ingest]` and `[pipelines]`, and the checks of a stream's spec: the same checks for a
//! `[[streams]]` table at start-up (and `summerd validate`) and for an attach request on the
//! control socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::template::{self, Template};
use crate::settings::{Checker, HumanDuration};
use crate::stream_id::{STREAM_ID_ALLOWED, valid_stream_id};
use crate::streams::StreamSpec;

/// `[pipelines]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelinesConfig {
    /// Directory of `<template>.gst` launch templates.
    pub dir: PathBuf,
}

impl Default for PipelinesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("../pipelines"),
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// First delay before a failed stream is rebuilt; doubles on each failure.
    pub backoff_initial: HumanDuration,
    /// Longest delay between rebuilds (keep it short: a returning source is picked up within
    /// about this long).
    pub backoff_max: HumanDuration,
    /// A live source that delivers no media for this long is rebuilt.
    pub stall_timeout: HumanDuration,
    /// Video frames per second handed to the vision stage (`{fps}` in templates).
    pub video_fps: u32,
    /// Largest width of those frames (`{max_width}`; scaled inside GStreamer).
    pub video_max_width: u32,
    /// Largest height of those frames (`{max_height}`).
    pub video_max_height: u32,
    /// Audio chunks queued per stream between GStreamer and the audio stage (full: a chunk
    /// is dropped, counted and logged).
    pub audio_queue: usize,
    /// Video frames queued per stream (full: the oldest is dropped and counted).
    pub video_queue: usize,
    /// Threads per libav video decoder (`max-threads` of `avdec_*`); 0: libav's choice (one
    /// per core). With many streams on few cores one each costs least.
    pub decoder_threads: u32,
    /// Nice value (0-19) of every media thread: GStreamer's streaming threads and the
    /// per-stream audio and vision threads. Above 0, the transcript -> event path (sockets,
    /// model worker) goes first when the cores are busy; media is buffered and catches up.
    pub nice: i32,
    /// Tries a stream gets to produce its first media: a source whose template is not
    /// declared live (`# live: yes`) that never produced any (a missing, empty or non-media
    /// file) is then `failed` and stops retrying. A live source, or one that has played,
    /// retries for as long as it is attached. 0: retry forever.
    pub max_attempts: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            backoff_initial: HumanDuration(Duration::from_millis(250)),
            backoff_max: HumanDuration(Duration::from_secs(1)),
            stall_timeout: HumanDuration(Duration::from_secs(3)),
            video_fps: 5,
            video_max_width: 640,
            video_max_height: 480,
            audio_queue: 512,
            video_queue: 4,
            decoder_threads: 1,
            nice: 19,
            max_attempts: 10,
        }
    }
}

impl IngestConfig {
    /// Check the table.
    pub fn check(&self, c: &mut Checker) {
        c.duration(
            "ingest.backoff_initial",
            self.backoff_initial.0,
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        c.duration(
            "ingest.backoff_max",
            self.backoff_max.0,
            self.backoff_initial.0,
            Duration::from_secs(600),
        );
        c.duration(
            "ingest.stall_timeout",
            self.stall_timeout.0,
            Duration::from_millis(500),
            Duration::from_secs(600),
        );
        c.range("ingest.video_fps", self.video_fps, 1, 60);
        c.range("ingest.video_max_width", self.video_max_width, 16, 7680);
        c.range("ingest.video_max_height", self.video_max_height, 16, 4320);
        c.range("ingest.audio_queue", self.audio_queue, 1, 100_000);
        c.range("ingest.video_queue", self.video_queue, 1, 1000);
        c.range("ingest.decoder_threads", self.decoder_threads, 0, 64);
        c.range("ingest.nice", self.nice, 0, 19);
        c.range("ingest.max_attempts", self.max_attempts, 0, 1_000_000);
    }

    /// The values a stream's template is rendered with.
    pub fn template_vars(&self, spec: &StreamSpec) -> BTreeMap<String, String> {
        template::template_vars(
            spec,
            self.video_fps,
            self.video_max_width,
            self.video_max_height,
        )
    }
}

/// A checked stream: its launch description and whether its template declares it live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The rendered launch description.
    pub desc: String,
    /// Declared by the template (`# live: yes|no`); None: inferred per connection.
    pub live: Option<bool>,
}

/// Audio channels a channel map may name (0 to 63).
pub const MAX_CHANNELS: usize = 64;

/// Check a stream's spec (id, URI, template, speaker roles, channel map, placeholders) with
/// its fields named under `key` (`streams[2]`, `attach`); the launch description when it is
/// usable. A template is a name inside `pipelines_dir` and nothing else.
pub fn check_stream(
    c: &mut Checker,
    key: &str,
    spec: &StreamSpec,
    pipelines_dir: &Path,
    vars: &BTreeMap<String, String>,
) -> Option<Launch> {
    let k = |f: &str| format!("{key}.{f}");
    if !valid_stream_id(&spec.id) {
        c.bad(
            k("id"),
            format!("'{}' is not a valid stream id", spec.id),
            STREAM_ID_ALLOWED,
        );
    }
    if spec.uri.is_empty() || !spec.uri.contains(':') {
        c.bad(
            k("uri"),
            format!("'{}' is not a URI", spec.uri),
            "a URI with a scheme, e.g. file:///calls/a.mp4 or rtsp://host/path",
        );
    }
    for (label, role) in &spec.speakers {
        if label.is_empty() || role.is_empty() {
            c.bad(
                k("speakers"),
                format!("'{label}' = '{role}' has an empty side"),
                "non-empty speaker label = non-empty role",
            );
        }
    }
    if spec.infer_speakers.iter().any(String::is_empty) {
        c.bad(k("infer_speakers"), "holds an empty role", "role names");
    }
    let mut labels: Vec<&str> = Vec::new();
    for (ch, label) in &spec.channels {
        let allowed = "channel numbers from 0 to 63 = distinct, non-empty speaker labels (at \
                       most 128 characters), e.g. { \"0\" = \"agent\", \"1\" = \"customer\" }";
        if !ch
            .parse::<usize>()
            .is_ok_and(|n| n < MAX_CHANNELS && n.to_string() == *ch)
        {
            c.bad(
                k("channels"),
                format!("'{ch}' is not a channel number"),
                allowed,
            );
        }
        let problem = if label.is_empty() {
            Some("an empty label")
        } else if label.len() > 128 {
            Some("a label over 128 characters")
        } else if labels.contains(&label.as_str()) {
            Some("a label already on another channel")
        } else {
            None
        };
        if let Some(p) = problem {
            c.bad(
                k("channels"),
                format!("channel {ch}: '{label}' is {p}"),
                allowed,
            );
        }
        labels.push(label);
    }
    for name in spec.options.keys() {
        if template::FIXED.contains(&name.as_str()) {
            c.bad(
                k("options"),
                format!(
                    "'{name}' is set by the daemon (the URI, the frame size and rate, the audio \
                     caps)"
                ),
                "template options other than uri, fps, max_width, max_height, video_caps and \
                 audio_caps",
            );
        }
    }
    if !template::valid_name(&spec.template) {
        c.bad(
            k("template"),
            format!("'{}' is not a template name", spec.template),
            template::NAME_ALLOWED,
        );
        return None;
    }
    let file = pipelines_dir.join(format!("{}.gst", spec.template));
    if !file.is_file() {
        c.bad(
            k("template"),
            format!(
                "pipeline template '{}' has no file {}",
                spec.template,
                file.display()
            ),
            &format!("one of: {}", list_templates(pipelines_dir).join(", ")),
        );
        return None;
    }
    let t = match Template::load(pipelines_dir, &spec.template) {
        Ok(t) => t,
        Err(e) => {
            c.bad(k("template"), e.to_string(), "a readable template");
            return None;
        }
    };
    if let Err(e) = t.check_uri(&spec.uri) {
        c.bad(
            k("uri"),
            e.to_string(),
            &format!("a URI of scheme {}", t.schemes.join(", ")),
        );
        return None;
    }
    for name in &t.uris {
        let Some(uri) = spec.options.get(name) else {
            continue; // rendering names what is missing
        };
        if let Err(e) = t.check_uri(uri) {
            c.bad(
                k(&format!("options.{name}")),
                e.to_string(),
                &format!("a URI of scheme {}", t.schemes.join(", ")),
            );
            return None;
        }
    }
    if !spec.channels.is_empty() && !t.body.contains("{audio_caps}") {
        c.bad(
            k("channels"),
            format!(
                "template '{}' mixes the audio to mono (it has no {{audio_caps}})",
                spec.template
            ),
            "a template whose audio ends in `capsfilter caps={audio_caps}`, as the bundled ones do",
        );
        return None;
    }
    match t.render(vars) {
        Ok(desc) => Some(Launch { desc, live: t.live }),
        Err(e) => {
            c.bad(
                k("options"),
                e.to_string(),
                "a value for every {placeholder} of the template",
            );
            None
        }
    }
}

/// The template names in a directory, sorted.
pub fn list_templates(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            if p.extension()? != "gst" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    v
}

impl PipelinesConfig {
    /// The resolved directory (it must exist when streams are configured).
    pub fn check(&self, c: &mut Checker, streams: usize) -> PathBuf {
        let dir = c.resolve(&self.dir);
        if streams > 0 && !dir.is_dir() {
            c.bad(
                "pipelines.dir",
                format!("'{}' is not a directory", dir.display()),
                "the directory holding <template>.gst files",
            );
        }
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, template: &str) -> StreamSpec {
        StreamSpec {
            id: id.into(),
            uri: "file:///calls/a.wav".into(),
            template: template.into(),
            speakers: BTreeMap::new(),
            infer_speakers: Vec::new(),
            publish_text: None,
            options: BTreeMap::new(),
            channels: BTreeMap::new(),
        }
    }

    /// A template is a name inside the pipelines directory: a path to a `.gst` file that
    /// exists elsewhere (which would let a local client run any pipeline) is refused.
    #[test]
    fn templates_are_names_inside_the_directory_never_paths() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pipelines");
        std::fs::create_dir(&dir).unwrap();
        let body = "# schemes: file\nfilesrc location={uri} ! fakesink name=audio\n";
        std::fs::write(dir.join("file.gst"), body).unwrap();
        std::fs::write(root.path().join("evil.gst"), body).unwrap();
        let vars = IngestConfig::default().template_vars(&spec("a", "file"));
        let mut c = Checker::new(dir.clone());
        assert!(check_stream(&mut c, "attach", &spec("a", "file"), &dir, &vars).is_some());
        assert!(c.is_clean());
        let evil = root.path().join("evil");
        for name in ["../evil", evil.to_str().unwrap(), "./file", "", "fi le"] {
            let mut c = Checker::new(dir.clone());
            assert!(
                check_stream(&mut c, "attach", &spec("a", name), &dir, &vars).is_none(),
                "{name}"
            );
            let p = c.into_problems();
            assert_eq!(p[0].key, "attach.template", "{name}: {p:?}");
            assert!(p[0].problem.contains("not a template name"), "{p:?}");
        }
        // Loading by name refuses a path too, whoever calls it.
        assert!(Template::load(&dir, "../evil").is_err());
        // Nor may options replace the URI (whose scheme the template was checked against).
        let mut sneaky = spec("a", "file");
        sneaky
            .options
            .insert("uri".into(), "rtsp://elsewhere/x".into());
        let mut c = Checker::new(dir.clone());
        check_stream(&mut c, "attach", &sneaky, &dir, &vars);
        let p = c.into_problems();
        assert_eq!(p[0].key, "attach.options", "{p:?}");
    }

    #[test]
    fn channel_maps_and_further_uris_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::write(
            d.join("legs.gst"),
            "# schemes: udp\n# uris: uri_b\nudpsrc uri={uri} ! x ! capsfilter caps={audio_caps} ! \
             appsink name=audio udpsrc uri={uri_b} ! y\n",
        )
        .unwrap();
        std::fs::write(
            d.join("mono.gst"),
            "# schemes: udp\nudpsrc uri={uri} ! appsink name=audio\n",
        )
        .unwrap();
        let problems = |spec: &StreamSpec| {
            let vars = IngestConfig::default().template_vars(spec);
            let mut c = Checker::new(d.clone());
            check_stream(&mut c, "attach", spec, &d, &vars);
            c.into_problems()
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.problem))
                .collect::<Vec<_>>()
        };
        let mapped = |pairs: &[(&str, &str)], template: &str, uri_b: &str| StreamSpec {
            uri: "udp://0.0.0.0:5004".into(),
            channels: pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            options: [("uri_b".to_string(), uri_b.to_string())].into(),
            ..spec("a", template)
        };
        let good = mapped(
            &[("0", "agent"), ("1", "customer")],
            "legs",
            "udp://0.0.0.0:5006",
        );
        assert_eq!(problems(&good), Vec::<String>::new());
        for (bad, why) in [
            (
                mapped(&[("x", "agent")], "legs", "udp://h:1"),
                "'x' is not a channel number",
            ),
            (
                mapped(&[("00", "agent")], "legs", "udp://h:1"),
                "'00' is not a channel number",
            ),
            (
                mapped(&[("64", "agent")], "legs", "udp://h:1"),
                "'64' is not a channel number",
            ),
            (
                mapped(&[("0", "agent"), ("1", "agent")], "legs", "udp://h:1"),
                "already on another channel",
            ),
            (mapped(&[("0", "")], "legs", "udp://h:1"), "an empty label"),
            (
                mapped(&[("0", "agent")], "mono", "udp://h:1"),
                "mixes the audio to mono",
            ),
            (
                mapped(&[("0", "agent")], "legs", "file:///etc/passwd"),
                "has scheme 'file'",
            ),
        ] {
            let p = problems(&bad);
            assert!(p.iter().any(|x| x.contains(why)), "{why}: {p:?}");
        }
    }

    #[test]
    fn the_daemons_own_id_is_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checker::new(dir.path().to_path_buf());
        let vars = BTreeMap::new();
        check_stream(
            &mut c,
            "streams[0]",
            &spec("daemon", "x"),
            dir.path(),
            &vars,
        );
        let p = c.into_problems();
        assert_eq!(p[0].key, "streams[0].id");
        assert!(p[0].allowed.contains("reserved"), "{p:?}");
        let mut c = Checker::new(dir.path().to_path_buf());
        check_stream(&mut c, "attach", &spec("daemon:1", "x"), dir.path(), &vars);
        assert_eq!(c.into_problems()[0].key, "attach.id");
    }
}
