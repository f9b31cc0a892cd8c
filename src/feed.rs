//! The event feed of the live web page: every message the events publisher sends, numbered,
//! with the most recent ones kept so that a page opened mid-call (or a browser reconnecting
//! with `Last-Event-ID`) sees what it missed.
//!
//! The publisher thread pushes; pushing never blocks on a reader: live readers get a
//! `tokio::sync::broadcast` channel, and one that falls more than its capacity behind is told
//! how many it lost and catches up from the history. Memory is bounded by the history length
//! and the channel's capacity.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::wire::Multipart;

/// One fed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Its number, from 1, increasing.
    pub id: u64,
    /// `emotion`, `lifecycle` or `signal` (the topic up to its first dot).
    pub kind: String,
    /// The stream (the topic after its first dot; `daemon` for the daemon's own lifecycle).
    pub stream: String,
    /// The event's JSON, one line.
    pub json: String,
}

struct History {
    next: u64,
    items: VecDeque<Arc<Item>>,
}

/// The feed. Shared as `Arc<Feed>` by the publisher and the web server.
pub struct Feed {
    epoch: u64,
    history: Mutex<History>,
    keep: usize,
    tx: broadcast::Sender<Arc<Item>>,
}

/// What a new reader gets: the kept items after the id it asked for, and the live channel
/// from the item after them on (no gap, no repeat).
pub struct Subscription {
    /// Kept items, oldest first.
    pub backlog: Vec<Arc<Item>>,
    /// Everything pushed after them.
    pub live: broadcast::Receiver<Arc<Item>>,
}

impl Feed {
    /// A feed that keeps the last `keep` items and lets a live reader fall `lag` behind.
    pub fn new(keep: usize, lag: usize) -> Feed {
        let (tx, _) = broadcast::channel(lag.max(1));
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Feed {
            epoch,
            history: Mutex::new(History {
                next: 1,
                items: VecDeque::with_capacity(keep.min(1 << 16)),
            }),
            keep,
            tx,
        }
    }

    /// Feed a published message `[topic, json, ...]`; anything else is ignored.
    pub fn push(&self, msg: &Multipart) {
        let (Some(topic), Some(json)) = (msg.first(), msg.get(1)) else {
            return;
        };
        let topic = String::from_utf8_lossy(topic);
        let (kind, stream) = topic.split_once('.').unwrap_or((&topic, ""));
        let (kind, stream) = (kind.to_string(), stream.to_string());
        // One line, as a server-sent event's data must be (serde_json's compact form is;
        // anything else is made so here, once, not per reader).
        let json = String::from_utf8_lossy(json).replace(['\n', '\r'], " ");
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let item = Arc::new(Item {
            id: h.next,
            kind,
            stream,
            json,
        });
        h.next += 1;
        if self.keep > 0 {
            if h.items.len() == self.keep {
                h.items.pop_front();
            }
            h.items.push_back(item.clone());
        }
        // No receiver is not an error: nobody has the page open.
        let _ = self.tx.send(item);
    }

    /// Subscribe, with the kept items numbered above `after` (all kept items for 0).
    pub fn subscribe(&self, after: u64) -> Subscription {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock, so that nothing is pushed between the backlog and the live channel.
        let live = self.tx.subscribe();
        let backlog = h.items.iter().filter(|i| i.id > after).cloned().collect();
        Subscription { backlog, live }
    }

    /// This feed's epoch (its creation time, Unix milliseconds): item numbers restart with a
    /// new daemon, so a reader's resume point is only good in the epoch it was given in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The number of the newest item pushed (0: none yet).
    pub fn newest(&self) -> u64 {
        self.history.lock().unwrap_or_else(|e| e.into_inner()).next - 1
    }

    /// Readers connected now.
    pub fn readers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, n: u32) -> Multipart {
        vec![
            topic.as_bytes().to_vec(),
            format!("{{\"n\":{n}}}").into_bytes(),
        ]
    }

    #[test]
    fn a_late_reader_gets_the_kept_items_then_the_live_ones_without_gap_or_repeat() {
        let feed = Feed::new(3, 16);
        for n in 1..=5 {
            feed.push(&msg("emotion.call-1", n));
        }
        let mut s = feed.subscribe(0);
        let ids: Vec<u64> = s.backlog.iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![3, 4, 5], "only the last 3 are kept");
        assert_eq!(s.backlog[0].kind, "emotion");
        assert_eq!(s.backlog[0].stream, "call-1");
        feed.push(&msg("lifecycle.daemon", 6));
        let next = s.live.try_recv().unwrap();
        assert_eq!((next.id, next.kind.as_str()), (6, "lifecycle"));
        assert!(s.live.try_recv().is_err());
        // A reconnect after id 4 gets 5 and 6.
        let again = feed.subscribe(4);
        let ids: Vec<u64> = again.backlog.iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![5, 6]);
        assert_eq!(feed.readers(), 2);
        assert_eq!(feed.newest(), 6);
    }

    #[test]
    fn a_slow_reader_is_told_it_lagged_and_the_pusher_never_waits() {
        let feed = Feed::new(0, 4);
        let mut s = feed.subscribe(0);
        assert!(s.backlog.is_empty());
        for n in 0..100 {
            feed.push(&msg("emotion.x", n));
        }
        assert!(matches!(
            s.live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(96))
        ));
        assert_eq!(s.live.try_recv().unwrap().id, 97);
        feed.push(&[b"only-a-topic".to_vec()].to_vec());
        assert_eq!(s.live.try_recv().unwrap().id, 98);
    }
}
