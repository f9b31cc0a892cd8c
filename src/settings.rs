//! What every component's settings share: durations as people write them, and the
//! [`Checker`] each component's `check` reports its problems to. Each component owns its
//! table (`[transcripts]` in `transcripts.rs`, `[ingest]` in `ingest/settings.rs`, ...) and its
//! range checks; `config` parses the file into those tables and reports every problem at once.
//! The same checks run for `summerd validate` and at start-up. Imports nothing of the crate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration written as a human string: `"10s"`, `"250ms"`, `"5m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{e}: expected a duration such as \"10s\", \"250ms\" or \"5m\""
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// Whether a host name or address reaches only this machine: `localhost` or a loopback
/// address (IPv6 possibly in brackets).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One invalid value: which key, what is wrong, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `streams[1].id` or `events.endpoint`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What would be accepted.
    pub allowed: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: {} (allowed: {})",
            self.key, self.problem, self.allowed
        )
    }
}

/// Collects the problems of a configuration; resolves relative paths against the
/// directory of the file they were written in.
#[derive(Debug)]
pub struct Checker {
    problems: Vec<Problem>,
    base: PathBuf,
}

impl Checker {
    /// A checker for a file in directory `base`.
    pub fn new(base: PathBuf) -> Checker {
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Checker {
            problems: Vec::new(),
            base,
        }
    }

    /// Record a problem.
    pub fn bad(&mut self, key: impl Into<String>, problem: impl Into<String>, allowed: &str) {
        self.problems.push(Problem {
            key: key.into(),
            problem: problem.into(),
            allowed: allowed.into(),
        });
    }

    /// `p` as an absolute path, or relative to the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// `v` must lie in `lo..=hi`. A NaN lies in no range.
    pub fn range<T: PartialOrd + fmt::Display + Copy>(&mut self, key: &str, v: T, lo: T, hi: T) {
        // Written so that an unordered value (NaN) fails: both comparisons are false for it.
        if !(v >= lo && v <= hi) {
            self.bad(
                key,
                format!("{v} is out of range"),
                &format!("{lo} to {hi}"),
            );
        }
    }

    /// `v` must lie strictly between `lo` and `hi` (a NaN never does).
    pub fn open_range<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        key: &str,
        v: T,
        lo: T,
        hi: T,
    ) {
        if !(v > lo && v < hi) {
            self.bad(
                key,
                format!("{v} is out of range"),
                &format!("more than {lo} and less than {hi}"),
            );
        }
    }

    /// `d` must lie in `lo..=hi`.
    pub fn duration(&mut self, key: &str, d: Duration, lo: Duration, hi: Duration) {
        if d < lo || d > hi {
            self.bad(
                key,
                format!("{} is out of range", humantime::format_duration(d)),
                &format!(
                    "{} to {}",
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ),
            );
        }
    }

    /// True while no problem was recorded.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Every problem recorded, in order.
    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }
}

/// Run `check` on a fresh checker; its first problem, for the callers that take one error.
pub fn first_problem(check: impl FnOnce(&mut Checker)) -> Result<(), String> {
    let mut c = Checker::new(PathBuf::new());
    check(&mut c);
    match c.into_problems().into_iter().next() {
        Some(p) => Err(p.to_string()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_fails_every_range() {
        let mut c = Checker::new(PathBuf::new());
        c.range("a", f64::NAN, 0.0, 1.0);
        c.open_range("b", f64::NAN, 0.0, 1.0);
        c.range("c", 0.5, 0.0, 1.0);
        c.open_range("d", 0.5, 0.0, 1.0);
        let keys: Vec<String> = c.into_problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn open_ranges_refuse_their_ends() {
        let mut c = Checker::new(PathBuf::new());
        c.open_range("lo", 0.1, 0.1, 0.95);
        c.open_range("hi", 0.95, 0.1, 0.95);
        c.range("closed", 0.95, 0.1, 0.95);
        assert_eq!(c.into_problems().len(), 2);
    }
}
