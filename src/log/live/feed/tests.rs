use std::collections::VecDeque;
use std::sync::Arc;

use chronicle_projections::{EventMetadata, LogCursor, RecordedEvent};
use serde_json::json;
use tokio::sync::watch;

use super::{CommittedFeed, Shared};
use crate::log::live::{LiveEvent, Window};
use crate::log::EventFacts;

fn event(position: i64) -> (RecordedEvent, EventFacts) {
    let event = RecordedEvent {
        cursor: LogCursor::at(position),
        aggregate_type: "Ledger".into(),
        aggregate_id: format!("ledger-{position}"),
        sequence: 1,
        event_type: "Opened".into(),
        event_version: "1".into(),
        payload: json!({ "position": position }),
        metadata: EventMetadata::default(),
        recorded_at: chrono::Utc::now(),
    };
    let facts = EventFacts {
        owner: Some("owner".into()),
        text_bytes: Some(20),
    };
    (event, facts)
}

/// A feed into a live log whose window ends at `head`.
fn feed_at(head: i64) -> (CommittedFeed, Arc<Shared>) {
    let head = LogCursor::at(head);
    let window = Window {
        first: head,
        head,
        events: VecDeque::new(),
        bytes: 0,
    };
    let shared = Arc::new(Shared::new(window, watch::channel(head).0));
    let feed = CommittedFeed::default();
    let _ = feed.live.set(shared.clone());
    (feed, shared)
}

fn positions(shared: &Shared) -> Vec<i64> {
    let window = shared.window.read().expect("window");
    window
        .events
        .iter()
        .map(|e| e.event.cursor.position)
        .collect()
}

#[test]
fn a_commit_right_after_the_head_is_taken_and_moves_the_head() {
    let (feed, shared) = feed_at(10);
    feed.publish(vec![event(11), event(12)]);
    assert_eq!(positions(&shared), [11, 12]);
    assert_eq!(shared.moved.borrow().position, 12);
}

#[test]
fn a_commit_after_a_gap_is_left_for_the_follower_to_read() {
    let (feed, shared) = feed_at(10);
    feed.publish(vec![event(12)]);
    assert!(positions(&shared).is_empty());
    assert_eq!(shared.moved.borrow().position, 10);
}

#[test]
fn a_page_overlapping_what_was_handed_over_adds_only_the_rest() {
    let (feed, shared) = feed_at(10);
    feed.publish(vec![event(11), event(12)]);
    let page = [11, 12, 13].map(|p| LiveEvent::new(event(p))).to_vec();
    shared.extend(page, LogCursor::at(13));
    assert_eq!(positions(&shared), [11, 12, 13]);
    // A page read before the hand-over does not move the head back.
    shared.extend(Vec::new(), LogCursor::at(11));
    assert_eq!(shared.moved.borrow().position, 13);
}

#[test]
fn the_follower_waits_only_for_the_commit_announced_right_after_its_head() {
    let (feed, shared) = feed_at(10);
    assert!(!shared.handing_over(12), "nothing announced");
    let committing = feed.committing(11, 12);
    assert!(shared.handing_over(12));
    assert!(shared.handing_over(11));
    assert!(!shared.handing_over(13), "a later commit is someone else's");
    drop(committing);
    assert!(!shared.handing_over(12), "withdrawn with its guard");
    let _after_a_gap = feed.committing(12, 13);
    assert!(!shared.handing_over(13), "position 11 is not in the window");
}
