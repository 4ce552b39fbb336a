//! Forming groups: whatever is queued, one append per aggregate, within size limits.

use std::collections::{HashSet, VecDeque};

use tokio::sync::mpsc;

use super::Pending;

/// Appends one group takes at most.
pub(super) const GROUP_APPENDS: usize = 256;
/// A group takes no further append once it holds this many events (one append may hold more).
pub(super) const GROUP_EVENTS: usize = 4_096;

/// The next group: appends deferred from the last group first, then whatever is queued,
/// without waiting for more; `None` once every `Appender` is gone and nothing is left.
pub(super) async fn next_group(
    queue: &mut mpsc::Receiver<Pending>,
    deferred: &mut VecDeque<Pending>,
) -> Option<Vec<Pending>> {
    let first = match deferred.pop_front() {
        Some(pending) => pending,
        None => queue.recv().await?,
    };
    let mut group = Group::default();
    let mut later = VecDeque::new();
    group.take(first, &mut later);
    while let Some(pending) = deferred.pop_front() {
        if group.full() {
            later.push_back(pending);
        } else {
            group.take(pending, &mut later);
        }
    }
    // Appends waiting for their aggregate's turn stop the draining: the queue's bound stays
    // the backpressure on senders.
    while !group.full() && later.len() < GROUP_APPENDS {
        match queue.try_recv() {
            Ok(pending) => group.take(pending, &mut later),
            Err(_) => break,
        }
    }
    *deferred = later;
    Some(group.members)
}

#[derive(Default)]
struct Group {
    members: Vec<Pending>,
    aggregates: HashSet<(&'static str, String)>,
    events: usize,
}

impl Group {
    fn full(&self) -> bool {
        self.members.len() >= GROUP_APPENDS || self.events >= GROUP_EVENTS
    }

    /// Takes `pending`, unless its aggregate is in the group already: then it waits. An
    /// append whose caller gave up (a dropped request) is left out: never acknowledged, it
    /// must not commit.
    fn take(&mut self, pending: Pending, later: &mut VecDeque<Pending>) {
        if pending.reply.is_closed() {
            return;
        }
        let streams: Vec<(&'static str, String)> = pending
            .append
            .unit()
            .map(|a| (a.aggregate_type, a.aggregate_id.clone()))
            .collect();
        if streams
            .iter()
            .any(|stream| self.aggregates.contains(stream))
        {
            later.push_back(pending);
            return;
        }
        self.events += pending.append.unit().map(|a| a.events.len()).sum::<usize>();
        self.aggregates.extend(streams);
        self.members.push(pending);
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::persist::SerializedEvent;
    use serde_json::Value;

    use tokio::sync::oneshot;

    use super::*;
    use crate::store::append::Append;
    use crate::store::group_commit::QUEUE;

    type Answer =
        oneshot::Receiver<Result<crate::store::Appended, cqrs_es::persist::PersistenceError>>;

    /// An append queued by a caller that waits for its answer (or, without one, gave up).
    fn pending(id: &str, events: usize) -> (Pending, Option<Answer>) {
        let event = |sequence| {
            SerializedEvent::new(
                id.into(),
                sequence,
                "Ledger".into(),
                "Deposited".into(),
                "2.0.0".into(),
                Value::Null,
                Value::Null,
            )
        };
        let append = Append {
            aggregate_type: "Ledger",
            aggregate_id: id.into(),
            events: (1..=events).map(event).collect(),
            snapshot: None,
            together: Vec::new(),
        };
        let (reply, answer) = oneshot::channel();
        (Pending { append, reply }, Some(answer))
    }

    async fn groups(queued: Vec<(Pending, Option<Answer>)>) -> Vec<Vec<String>> {
        let (sender, mut queue) = mpsc::channel(QUEUE);
        let mut waiting = Vec::new();
        for (pending, answer) in queued {
            assert!(sender.try_send(pending).is_ok());
            waiting.push(answer);
        }
        drop(sender);
        let mut deferred = VecDeque::new();
        let mut groups = Vec::new();
        while let Some(group) = next_group(&mut queue, &mut deferred).await {
            groups.push(group.into_iter().map(|p| p.append.aggregate_id).collect());
        }
        groups
    }

    #[tokio::test]
    async fn an_aggregate_appears_once_per_group_and_its_appends_keep_their_order() {
        let queued = ["a", "b", "a", "c", "a", "b"].map(|id| pending(id, 1));
        assert_eq!(
            groups(queued.into()).await,
            [vec!["a", "b", "c"], vec!["a", "b"], vec!["a"]]
        );
    }

    #[tokio::test]
    async fn a_group_stops_taking_appends_at_its_size_limits() {
        let many: Vec<_> = (0..GROUP_APPENDS + 1)
            .map(|n| pending(&n.to_string(), 1))
            .collect();
        let sizes: Vec<usize> = groups(many).await.iter().map(Vec::len).collect();
        assert_eq!(sizes, [GROUP_APPENDS, 1]);

        let big = vec![pending("big", GROUP_EVENTS + 1), pending("next", 1)];
        assert_eq!(groups(big).await, [vec!["big"], vec!["next"]]);
    }

    #[tokio::test]
    async fn an_append_whose_caller_gave_up_is_left_out() {
        let (gone, _) = pending("gone", 1);
        let queued = vec![pending("a", 1), (gone, None), pending("b", 1)];
        assert_eq!(groups(queued).await, [vec!["a", "b"]]);
    }
}
