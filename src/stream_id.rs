//! Stream ids: which strings name a stream (in `[[streams]]`, on the control socket and on the
//! wire), and the ids the daemon keeps for itself. Imports nothing of the crate.

/// What a stream id may be, as error messages state it.
pub const STREAM_ID_ALLOWED: &str =
    "1-128 characters of A-Z a-z 0-9 . _ : -, not starting with the reserved 'daemon'";

/// The prefix the daemon keeps for itself: `lifecycle.daemon` carries the daemon's own
/// lifecycle, and ZeroMQ subscriptions match by prefix, so no stream id may start with it
/// (a subscriber to the daemon's events would get that stream's too).
pub const RESERVED: &str = "daemon";

/// True for a stream id the daemon accepts (also used on the wire).
pub fn valid_stream_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        && !id.starts_with(RESERVED)
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
        assert!(!valid_stream_id("daemon2"));
        assert!(!valid_stream_id("daemon.x"));
        assert!(valid_stream_id("my-daemon"));
    }
}
