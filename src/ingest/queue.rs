//! The drop-oldest queue between a stream's video appsink and its vision thread: video
//! wants the newest frame, so a full queue drops its oldest.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A bounded queue that drops its oldest item when full (video: the newest frame matters).
pub struct DropOldest<T> {
    inner: Mutex<(VecDeque<T>, bool)>,
    ready: Condvar,
    cap: usize,
}

impl<T> DropOldest<T> {
    /// A queue holding at most `cap` items.
    pub fn new(cap: usize) -> Self {
        DropOldest {
            inner: Mutex::new((VecDeque::with_capacity(cap), false)),
            ready: Condvar::new(),
            cap: cap.max(1),
        }
    }

    /// Add an item; returns true if the oldest was dropped to make room.
    pub fn push(&self, item: T) -> bool {
        let mut g = self.inner.lock().expect("queue lock");
        let dropped = g.0.len() >= self.cap;
        if dropped {
            g.0.pop_front();
        }
        g.0.push_back(item);
        self.ready.notify_one();
        dropped
    }

    /// No more items will come.
    pub fn close(&self) {
        self.inner.lock().expect("queue lock").1 = true;
        self.ready.notify_all();
    }

    /// The next item, waiting up to `timeout`.
    pub fn pop(&self, timeout: Duration) -> Pop<T> {
        let mut g = self.inner.lock().expect("queue lock");
        if g.0.is_empty() && !g.1 {
            g = self.ready.wait_timeout(g, timeout).expect("queue lock").0;
        }
        match g.0.pop_front() {
            Some(x) => Pop::Item(x),
            None if g.1 => Pop::Closed,
            None => Pop::Empty,
        }
    }
}

/// What [`DropOldest::pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    /// An item.
    Item(T),
    /// Nothing within the timeout.
    Empty,
    /// Closed and drained.
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let q = DropOldest::new(2);
        assert!(!q.push(1));
        assert!(!q.push(2));
        assert!(q.push(3));
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(2));
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(3));
        assert_eq!(q.pop(Duration::ZERO), Pop::Empty);
        q.close();
        assert_eq!(q.pop(Duration::ZERO), Pop::Closed);
    }
}
