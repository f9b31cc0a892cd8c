//! Wire framing shared by the publishers and the event encoders. Imports nothing of the crate.

/// A multipart message for a publisher: topic frame first.
pub type Multipart = Vec<Vec<u8>>;
