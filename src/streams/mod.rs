//! The streams registry: every attached stream's spec, state, media timeline and feature
//! stores, in one place. Ingest writes to it (GStreamer threads place media on the timeline
//! and push descriptors and faces); inference reads it through [`StreamView`], so the
//! utterance path runs, and is tested, without GStreamer; the control socket and metrics list
//! it. It knows nothing of GStreamer, sockets or the model.

pub mod features;
pub mod timeline;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::Serialize;
use tokio::sync::Notify;

use features::{AudioFeatures, VisualFeatures};
use timeline::Timeline;

/// What to attach: a `[[streams]]` table of the config, or an attach request.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Stream id: 1-128 characters of `A-Z a-z 0-9 . _ : -` (not `daemon`); the `stream` of
    /// transcripts and the suffix of event topics (`emotion.<id>`).
    pub id: String,
    /// Source URI handed to the template (`file:///...`, `rtsp://...`, `udp://...`, ...).
    pub uri: String,
    /// Pipeline template name: `<pipelines.dir>/<template>.gst`, letters, digits, `_`, `-`.
    pub template: String,
    /// Speaker label in transcripts -> role (e.g. `"spk0" = "agent"`). Unmapped labels are
    /// their own role.
    #[serde(default)]
    pub speakers: BTreeMap<String, String>,
    /// Roles whose emotions may be inferred at all. Empty: every role. Set it to exclude
    /// agents where EU AI Act art. 5(1)(f) applies.
    #[serde(default)]
    pub infer_speakers: Vec<String>,
    /// Overrides `events.publish_text` for this stream.
    #[serde(default)]
    pub publish_text: Option<bool>,
    /// Extra template values: `{name}` in the template (e.g. `sync = "false"` to read a file
    /// as fast as possible instead of in real time).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// One speaker per audio channel: channel index (from 0) -> the speaker label its
    /// transcripts carry (e.g. `"0" = "agent"`, `"1" = "customer"`). Each mapped channel gets
    /// its own descriptors and normalisation, a transcript's span is analysed on its speaker's
    /// channel, and the tap carries the channels interleaved. Empty: the audio is mixed to
    /// mono.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, String>,
}

impl StreamSpec {
    /// A recording attached as stream `id` through the `file` template, with no speaker
    /// roles (every speaker is inferred).
    pub fn for_file(id: String, media: &std::path::Path) -> StreamSpec {
        StreamSpec {
            id,
            uri: format!("file://{}", media.display()),
            template: "file".into(),
            speakers: BTreeMap::new(),
            infer_speakers: Vec::new(),
            publish_text: None,
            options: BTreeMap::new(),
            channels: BTreeMap::new(),
        }
    }

    /// The channel map as (channel, speaker label), by channel; keys that are not channel
    /// numbers are left out (the stream checks refuse them).
    pub fn channel_map(&self) -> Vec<(usize, String)> {
        let mut v: Vec<(usize, String)> = self
            .channels
            .iter()
            .filter_map(|(k, s)| Some((k.parse().ok()?, s.clone())))
            .collect();
        v.sort();
        v
    }

    /// The mapped channels whose speaker the policy infers: the ones described.
    pub fn described_channels(&self) -> Vec<(usize, String)> {
        self.channel_map()
            .into_iter()
            .filter(|(_, s)| self.infers(s))
            .collect()
    }

    /// The role a speaker label plays on this stream (the label itself when unmapped).
    pub fn role<'a>(&'a self, speaker: &'a str) -> &'a str {
        self.speakers.get(speaker).map_or(speaker, String::as_str)
    }

    /// The speaker policy: may this speaker's emotions be inferred at all?
    pub fn infers(&self, speaker: &str) -> bool {
        self.infer_speakers.is_empty()
            || self.infer_speakers.iter().any(|r| r == self.role(speaker))
    }
}

/// A stream's state, as `list` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Building or waiting for first media.
    Starting,
    /// Media is flowing.
    Up,
    /// Down, waiting to retry.
    Retrying,
    /// A non-live source reached its end.
    Ended,
    /// A source that never produced media gave up after `ingest.max_attempts` tries.
    Failed,
}

/// One attached stream as `list` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    /// Its spec.
    #[serde(flatten)]
    pub spec: StreamSpec,
    /// Its state.
    pub state: StreamState,
    /// Media seconds received so far (end of the timeline).
    pub media_time: f64,
    /// Restarts so far.
    pub restarts: u64,
    /// With a channel map: the audio channels the media has (0 before any audio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_channels: Option<u32>,
    /// With a channel map: the speakers whose channel's descriptors are computed (those the
    /// speaker policy infers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub described: Option<Vec<String>>,
}

/// An attached stream as the inference stages see it.
#[derive(Clone)]
pub struct StreamView {
    /// Which attachment of its id this is ([`Stream::generation`]).
    pub generation: u64,
    /// Its spec (speaker roles, `infer_speakers`, `publish_text`).
    pub spec: StreamSpec,
    /// Its acoustic descriptors, when computed: the mixed audio's, or each mapped channel's.
    pub features: Descriptors,
    /// What its vision stage saw, when it runs.
    pub visual: Option<Arc<VisualFeatures>>,
    /// End of its media timeline so far, seconds.
    pub media_end: f64,
}

impl StreamView {
    /// The descriptors a transcript of `speaker` is analysed on.
    pub fn features_for(&self, speaker: &str) -> Option<Arc<AudioFeatures>> {
        self.features.of(speaker).cloned()
    }
}

/// A stream's acoustic descriptors.
#[derive(Clone, Default)]
pub enum Descriptors {
    /// Not computed.
    #[default]
    None,
    /// Of the audio mixed to mono: every speaker's spans.
    Mixed(Arc<AudioFeatures>),
    /// One store per mapped channel whose speaker is inferred: (channel, speaker, store).
    Channels(Vec<(usize, String, Arc<AudioFeatures>)>),
}

impl Descriptors {
    /// The store `speaker`'s spans are analysed on (None: not computed for this speaker).
    pub fn of(&self, speaker: &str) -> Option<&Arc<AudioFeatures>> {
        match self {
            Descriptors::None => None,
            Descriptors::Mixed(f) => Some(f),
            Descriptors::Channels(v) => v.iter().find(|(_, s, _)| s == speaker).map(|(.., f)| f),
        }
    }

    /// Channel `ch`'s store (None: not mapped, not inferred or not computed).
    pub fn of_channel(&self, ch: usize) -> Option<&Arc<AudioFeatures>> {
        match self {
            Descriptors::Channels(v) => v.iter().find(|(c, ..)| *c == ch).map(|(.., f)| f),
            _ => None,
        }
    }

    /// The mixed audio's store.
    pub fn mixed(&self) -> Option<&Arc<AudioFeatures>> {
        match self {
            Descriptors::Mixed(f) => Some(f),
            _ => None,
        }
    }

    /// Whether anything is computed.
    pub fn any(&self) -> bool {
        match self {
            Descriptors::None => false,
            Descriptors::Mixed(_) => true,
            Descriptors::Channels(v) => !v.is_empty(),
        }
    }
}

/// One stream's state and stores.
pub struct Stream {
    spec: StreamSpec,
    generation: u64,
    state: Mutex<StreamState>,
    timeline: Mutex<Timeline>,
    restarts: AtomicU64,
    features: Descriptors,
    /// Audio channels the media has, as the audio thread last saw them.
    audio_channels: AtomicU32,
    visual: Option<Arc<VisualFeatures>>,
}

impl Stream {
    /// A new stream, starting, over given descriptors (`summerd replay` fills them from a
    /// recording; [`Registry::new_stream`] makes them notify the registry).
    pub fn with_features(
        spec: StreamSpec,
        features: Descriptors,
        visual_history_s: Option<f64>,
    ) -> Stream {
        static GENERATION: AtomicU64 = AtomicU64::new(1);
        Stream {
            spec,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(StreamState::Starting),
            timeline: Mutex::new(Timeline::new()),
            restarts: AtomicU64::new(0),
            features,
            audio_channels: AtomicU32::new(0),
            visual: visual_history_s.map(|h| Arc::new(VisualFeatures::new(h))),
        }
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Which attachment of its id this is: a stream detached and attached again under the
    /// same id is a new generation, whose conversation starts afresh.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Its spec.
    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    /// Its state now.
    pub fn state(&self) -> StreamState {
        *self.state.lock().expect("state lock")
    }

    /// Set its state.
    pub fn set_state(&self, s: StreamState) {
        *self.state.lock().expect("state lock") = s;
    }

    /// Its media timeline.
    pub fn timeline(&self) -> MutexGuard<'_, Timeline> {
        self.timeline.lock().expect("timeline lock")
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Count a restart.
    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Its acoustic descriptors.
    pub fn features(&self) -> &Descriptors {
        &self.features
    }

    /// Audio channels the media has (0 before any audio).
    pub fn audio_channels(&self) -> u32 {
        self.audio_channels.load(Ordering::Relaxed)
    }

    /// What the audio thread saw: the media's audio channels.
    pub fn set_audio_channels(&self, n: u32) {
        self.audio_channels.store(n, Ordering::Relaxed);
    }

    /// Its face store, when the vision stage runs.
    pub fn visual(&self) -> Option<&Arc<VisualFeatures>> {
        self.visual.as_ref()
    }

    /// As the inference stages see it.
    pub fn view(&self) -> StreamView {
        StreamView {
            generation: self.generation,
            spec: self.spec.clone(),
            features: self.features.clone(),
            visual: self.visual.clone(),
            media_end: self.timeline().end(),
        }
    }

    /// As `list` reports it.
    pub fn info(&self) -> StreamInfo {
        StreamInfo {
            spec: self.spec.clone(),
            state: self.state(),
            media_time: self.timeline().end(),
            restarts: self.restarts.load(Ordering::Relaxed),
            audio_channels: (!self.spec.channels.is_empty()).then(|| self.audio_channels()),
            described: match &self.features {
                Descriptors::Channels(v) => Some(v.iter().map(|(_, s, _)| s.clone()).collect()),
                _ if self.spec.channels.is_empty() => None,
                _ => Some(Vec::new()),
            },
        }
    }
}

/// Why a stream could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream '{0}' is already attached")]
pub struct Duplicate(pub String);

/// Every attached stream, by id. Cheap to share (`Arc`); reads do not block each other.
#[derive(Default)]
pub struct Registry {
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    coverage: Arc<Notify>,
}

impl Registry {
    /// No streams.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A new stream whose descriptors notify [`Registry::coverage`] as they grow (not yet
    /// registered: [`Registry::insert`] it). With a channel map, a store per mapped channel
    /// whose speaker the policy infers; a speaker it excludes gets none.
    pub fn new_stream(
        &self,
        spec: StreamSpec,
        acoustic: Option<crate::acoustic::Settings>,
        visual_history_s: Option<f64>,
    ) -> Stream {
        let store = |a| Arc::new(AudioFeatures::notifying(a, self.coverage.clone()));
        let features = match acoustic {
            None => Descriptors::None,
            Some(a) if spec.channels.is_empty() => Descriptors::Mixed(store(a)),
            Some(a) => Descriptors::Channels(
                spec.described_channels()
                    .into_iter()
                    .map(|(c, s)| (c, s, store(a)))
                    .collect(),
            ),
        };
        Stream::with_features(spec, features, visual_history_s)
    }

    /// Notified whenever a stream made by [`Registry::new_stream`] has more of its audio
    /// described: what a segment waiting for its descriptors waits on.
    pub fn coverage(&self) -> Arc<Notify> {
        self.coverage.clone()
    }

    /// Add a stream; refused when its id is taken.
    pub fn insert(&self, stream: Arc<Stream>) -> Result<(), Duplicate> {
        let mut g = self.streams.write().expect("registry lock");
        if g.contains_key(stream.id()) {
            return Err(Duplicate(stream.id().to_string()));
        }
        g.insert(stream.id().to_string(), stream);
        Ok(())
    }

    /// Remove a stream; what it was.
    pub fn remove(&self, id: &str) -> Option<Arc<Stream>> {
        self.streams.write().expect("registry lock").remove(id)
    }

    /// A stream.
    pub fn get(&self, id: &str) -> Option<Arc<Stream>> {
        self.streams.read().expect("registry lock").get(id).cloned()
    }

    /// Whether a stream is attached.
    pub fn contains(&self, id: &str) -> bool {
        self.streams.read().expect("registry lock").contains_key(id)
    }

    /// A stream as the inference stages see it.
    pub fn view(&self, id: &str) -> Option<StreamView> {
        Some(self.get(id)?.view())
    }

    /// The end of a stream's media timeline so far (None: not attached).
    pub fn media_end(&self, id: &str) -> Option<f64> {
        Some(self.get(id)?.timeline().end())
    }

    /// Media time up to which the descriptors `speaker`'s spans are analysed on are computed
    /// (None: not yet). On a stream with a channel map, a speaker no channel describes, or whose
    /// channel the media lacks, never will be: infinity, so its segments wait for nothing.
    pub fn covered_until(&self, id: &str, speaker: &str) -> Option<f64> {
        let s = self.get(id)?;
        let Descriptors::Channels(stores) = s.features() else {
            return s.features().of(speaker)?.covered_until();
        };
        let Some((channel, _, store)) = stores.iter().find(|(_, l, _)| l == speaker) else {
            return Some(f64::INFINITY);
        };
        let have = s.audio_channels() as usize;
        if have > 0 && *channel >= have {
            return Some(f64::INFINITY);
        }
        store.covered_until()
    }

    /// The attached ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .streams
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Every attached stream as `list` reports it, by id.
    pub fn list(&self) -> Vec<StreamInfo> {
        let streams: Vec<Arc<Stream>> = self
            .streams
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        let mut v: Vec<StreamInfo> = streams.iter().map(|s| s.info()).collect();
        v.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> StreamSpec {
        StreamSpec {
            id: id.into(),
            uri: "file:///x".into(),
            template: "file".into(),
            speakers: [("spk0".to_string(), "agent".to_string())].into(),
            infer_speakers: vec!["customer".into()],
            publish_text: None,
            options: BTreeMap::new(),
            channels: BTreeMap::new(),
        }
    }

    #[test]
    fn a_channel_map_gives_a_store_to_each_inferred_channel_only() {
        let r = Registry::new();
        let s = StreamSpec {
            channels: [("1", "customer"), ("0", "agent"), ("x", "nobody")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .into(),
            speakers: BTreeMap::new(),
            ..spec("c")
        };
        assert_eq!(
            s.channel_map(),
            [(0, "agent".to_string()), (1, "customer".to_string())]
        );
        r.insert(Arc::new(r.new_stream(s, Some(Default::default()), None)))
            .unwrap();
        let v = r.view("c").unwrap();
        assert!(v.features_for("customer").is_some());
        assert!(
            v.features_for("agent").is_none(),
            "the agent is not inferred"
        );
        assert!(v.features.of_channel(1).is_some() && v.features.of_channel(0).is_none());
        assert!(v.features.mixed().is_none());
        let info = &r.list()[0];
        assert_eq!(
            info.described.as_deref(),
            Some(&["customer".to_string()][..])
        );
        assert_eq!(info.audio_channels, Some(0));
        // Without a map: one mixed store for every speaker.
        r.insert(Arc::new(r.new_stream(
            spec("m"),
            Some(Default::default()),
            None,
        )))
        .unwrap();
        let m = r.view("m").unwrap();
        assert!(m.features_for("anyone").is_some() && m.features.mixed().is_some());
        assert_eq!(r.list()[1].described, None);
        // Nothing to wait for: a label no channel describes, a channel the media lacks.
        assert_eq!(r.covered_until("c", "nobody"), Some(f64::INFINITY));
        assert_eq!(r.covered_until("c", "customer"), None, "no audio yet");
        r.get("c").unwrap().set_audio_channels(1);
        assert_eq!(r.covered_until("c", "customer"), Some(f64::INFINITY));
        r.get("c").unwrap().set_audio_channels(2);
        assert_eq!(r.covered_until("c", "customer"), None);
    }

    #[test]
    fn the_speaker_policy_maps_labels_to_roles() {
        let s = spec("a");
        assert_eq!(s.role("spk0"), "agent");
        assert_eq!(s.role("customer"), "customer");
        assert!(!s.infers("spk0"));
        assert!(s.infers("customer"));
        assert!(!s.infers("spk1"));
        let open = StreamSpec {
            infer_speakers: vec![],
            ..spec("b")
        };
        assert!(open.infers("spk0") && open.infers("anyone"));
    }

    #[test]
    fn the_registry_refuses_duplicates_and_lists_by_id() {
        let r = Registry::new();
        r.insert(Arc::new(r.new_stream(spec("b"), None, None)))
            .unwrap();
        r.insert(Arc::new(r.new_stream(spec("a"), None, Some(10.0))))
            .unwrap();
        assert_eq!(
            r.insert(Arc::new(r.new_stream(spec("a"), None, None))),
            Err(Duplicate("a".into()))
        );
        assert_eq!(r.ids(), ["a", "b"]);
        let list = r.list();
        assert_eq!(list[0].state, StreamState::Starting);
        assert!(r.view("a").unwrap().visual.is_some());
        assert!(!r.view("b").unwrap().features.any());
        let first = r.view("a").unwrap().generation;
        assert!(r.remove("a").is_some());
        assert!(!r.contains("a") && r.view("a").is_none());
        r.insert(Arc::new(r.new_stream(spec("a"), None, None)))
            .unwrap();
        assert_ne!(
            r.view("a").unwrap().generation,
            first,
            "a re-attached id is new"
        );
    }
}
