//! The class sets of the corpora summerd trains on (MELD, EmoDB) and how one maps onto the
//! other. The writers and the default model's mix both read them from here.

/// MELD's classes, in the order of its documentation.
pub const MELD_CLASSES: [&str; 7] = [
    "neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger",
];

/// EmoDB's classes and their letters (the 6th character of a file name).
pub const EMODB_CLASSES: [(&str, char); 7] = [
    ("anger", 'W'),
    ("boredom", 'L'),
    ("disgust", 'E'),
    ("fear", 'A'),
    ("happiness", 'F'),
    ("sadness", 'T'),
    ("neutral", 'N'),
];

/// The MELD class of an EmoDB class (None: boredom, which MELD does not have).
pub fn meld_class(emodb: &str) -> Option<&'static str> {
    match emodb {
        "happiness" => Some("joy"),
        "boredom" => None,
        other => MELD_CLASSES.iter().copied().find(|c| *c == other),
    }
}

/// The index in [`MELD_CLASSES`] of an EmoDB class (None: boredom).
pub fn meld_index(emodb: &str) -> Option<usize> {
    meld_class(emodb).and_then(|m| MELD_CLASSES.iter().position(|c| *c == m))
}

/// [`MELD_CLASSES`] as owned names, as a dataset's sidecar lists them.
pub fn meld_names() -> Vec<String> {
    MELD_CLASSES.iter().map(|c| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emodb_labels_map_to_meld_and_boredom_is_unlabelled() {
        assert_eq!(meld_class("happiness"), Some("joy"));
        assert_eq!(meld_class("anger"), Some("anger"));
        assert_eq!(meld_class("boredom"), None);
        assert_eq!(meld_index("happiness"), Some(4));
        assert_eq!(meld_index("boredom"), None);
    }
}
