//! Reading the shared data sets (never committed): `SUMMERD_ASSETS`, default `../shared`.

use std::path::{Path, PathBuf};

/// Where the shared assets are, if present: `$SUMMERD_ASSETS`, else `../shared` (relative to
/// the working directory, i.e. beside a checkout).
pub fn dir() -> Option<PathBuf> {
    let p = std::env::var_os("SUMMERD_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared"));
    p.is_dir().then_some(p)
}

/// The `.wav` files directly in `dir`, sorted by name.
pub fn wav_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "wav") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// One row of a MELD `*_sent_emo.csv` file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct MeldRow {
    /// What was said.
    #[serde(rename = "Utterance")]
    pub utterance: String,
    /// Who said it.
    #[serde(rename = "Speaker")]
    pub speaker: String,
    /// One of MELD's 7 emotions.
    #[serde(rename = "Emotion")]
    pub emotion: String,
    /// Dialogue number.
    #[serde(rename = "Dialogue_ID")]
    pub dialogue: u32,
    /// Utterance number within the dialogue.
    #[serde(rename = "Utterance_ID")]
    pub index: u32,
}

/// Read a MELD CSV file (the columns named in [`MeldRow`]; the others are ignored).
pub fn read_meld(path: &Path) -> Result<Vec<MeldRow>, csv::Error> {
    csv::Reader::from_path(path)?.deserialize().collect()
}
