//! Stream ids: which strings name a stream (in `[[streams]]`, on the control socket and on the
//! wire), and the ids the daemon keeps for itself. Imports nothing of the crate.

/// What a stream id may be, as error messages state it.
pub const STREAM_ID_ALLOWED: &str =
    "1-128 characters of A-Z a-z 0-9 . _ : -, other than the reserved id 'daemon'";

/// Ids the daemon uses for itself: `lifecycle.daemon` carries the daemon's own lifecycle.
pub const RESERVED: &[&str] = &["daemon"];

/// True for a stream id the daemon accepts (also used on the wire).
pub fn valid_stream_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        && !RESERVED.contains(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_the_daemons_own_is_reserved() {
        assert!(valid_stream_id("call-42.a:b_c"));
        assert!(valid_stream_id(&"x".repeat(128)));
        assert!(!valid_stream_id(""));
        assert!(!valid_stream_id(&"x".repeat(129)));
        assert!(!valid_stream_id("a/b"));
        assert!(!valid_stream_id("a b"));
        assert!(!valid_stream_id("daemon"));
        assert!(valid_stream_id("daemon2"));
    }
}
