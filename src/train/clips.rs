//! EmoDB clips read once, as the default model's mix ([`super::mix`]) and `summerd eval
//! --wavs` use them: one raw eGeMAPS vector, speaker and MELD label per clip.

use super::classes::meld_index;
use super::data::Dataset;
use crate::model::AUDIO_EXTRACTOR;
use crate::model::norm::SpeakerNorm;

/// Labelled clips: raw vectors, speakers, MELD labels.
pub struct Clips {
    /// Raw 88-d vectors, one per clip.
    pub audio: Vec<Vec<f32>>,
    /// Speaker per clip.
    pub speaker: Vec<String>,
    /// MELD class index per clip (None: boredom, or a label the reader did not know).
    pub label: Vec<Option<usize>>,
    /// The same clips through other conditions (a telephone channel, noise), by name: raw
    /// vectors in the same order as `audio`. The mix draws from them ([`super::mix`]).
    pub conditions: Vec<(String, Vec<Vec<f32>>)>,
    /// The extractor that made the vectors (summerd's, heard through one band:
    /// [`crate::acoustic::Band::extractor`]).
    pub extractor: String,
}

impl Clips {
    /// From the EmoDB dataset (`summerd dataset emodb`): one clip per dialogue, speaker as group.
    pub fn from_emodb(ds: &Dataset) -> Clips {
        let d = ds.features[1].size()[1] as usize;
        let flat = Vec::<f32>::try_from(ds.features[1].contiguous().view([-1])).expect("f32");
        let labels = Vec::<i64>::try_from(&ds.label).expect("i64");
        let label = labels
            .iter()
            .map(|l| meld_index(&ds.meta.classes[*l as usize]))
            .collect();
        Clips {
            audio: flat.chunks(d).map(<[f32]>::to_vec).collect(),
            speaker: ds.meta.groups.clone(),
            label,
            conditions: Vec::new(),
            extractor: ds
                .meta
                .features
                .audio
                .as_ref()
                .map_or(AUDIO_EXTRACTOR.into(), |a| a.extractor.clone()),
        }
    }

    /// Clip `c`'s vector through condition `cond` (None: clean).
    pub fn vector(&self, c: usize, cond: Option<usize>) -> &[f32] {
        match cond {
            Some(i) => &self.conditions[i].1[c],
            None => &self.audio[c],
        }
    }

    /// Distinct speakers, sorted.
    pub fn speakers(&self) -> Vec<String> {
        let mut s: Vec<String> = self.speaker.clone();
        s.sort();
        s.dedup();
        s
    }

    /// The indices of `speaker`'s clips, in order.
    pub(crate) fn of(&self, speaker: &str) -> Vec<usize> {
        (0..self.speaker.len())
            .filter(|i| self.speaker[*i] == speaker)
            .collect()
    }

    /// The normalisation prior from `speakers`' clips.
    pub fn prior(&self, speakers: &[String], prior_weight: f64) -> SpeakerNorm {
        let groups: Vec<Vec<&[f32]>> = speakers
            .iter()
            .map(|s| self.of(s).iter().map(|i| &self.audio[*i][..]).collect())
            .collect();
        SpeakerNorm::from_speakers(&groups, prior_weight)
    }
}
