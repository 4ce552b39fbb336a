//! Moving requests through the command path: many requests at once (the driver's and
//! delivery's request events), and the requests a batch command settles (a cancellation,
//! failure or withdrawal). Each request's move is decided by its current status and
//! transition table, and committed together through the group commit, so the read models
//! that follow requests are applied in the same transaction.

use chronicle_aggregates::request::{Request, RequestEvent, RequestStatus};
use chronicle_aggregates::{Settled, Settlement, StreamEvent};
use chronicle_projections::request_moves::{self, RequestMove};
use cqrs_es::{Aggregate, AggregateError};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{CommandContext, CommandError, Commands};

impl Commands {
    /// Appends to each request of `ids` the event `decide` returns for its current status,
    /// where the transition table allows it, all in one transaction; returns the ids of those
    /// that moved.
    /// `command_id` stamps the events (a fresh one when `None`).
    ///
    /// # Errors
    /// `Conflict` when another writer moved one of the requests first (nothing is appended:
    /// decide again); the database's failure otherwise.
    pub async fn move_requests(
        &self,
        context: &CommandContext,
        command_id: Option<Uuid>,
        ids: &[String],
        decide: impl Fn(&str, RequestStatus) -> Option<RequestEvent>,
    ) -> Result<Vec<String>, CommandError> {
        let moves = {
            let mut conn = self.pool().acquire().await?;
            request_moves::decide(&mut conn, ids, decide).await?
        };
        let moved: Vec<String> = moves.iter().map(|m| m.request_id.clone()).collect();
        let command_id = command_id.unwrap_or_else(Uuid::now_v7).to_string();
        self.stores
            .append_others(stream_events(moves)?, &context.metadata(command_id))
            .await
            .map_err(AggregateError::<<Request as Aggregate>::Error>::from)?;
        Ok(moved)
    }

    /// The request events that `settlements` (of one command) make, decided on the
    /// requests' current statuses; appended with the command's own events.
    pub(super) async fn settle(
        &self,
        settlements: &[Settlement],
    ) -> Result<Vec<StreamEvent>, CommandError> {
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool().acquire().await?;
        let mut moves = Vec::new();
        for settlement in settlements {
            let ids = settled_ids(&mut conn, settlement.settled()).await?;
            let decide = |_: &str, from| settlement.event_for(from);
            moves.extend(request_moves::decide(&mut conn, &ids, decide).await?);
        }
        stream_events(moves)
    }
}

/// The ids of the requests `settled` names.
async fn settled_ids(
    conn: &mut PgConnection,
    settled: Settled,
) -> Result<Vec<String>, CommandError> {
    match settled {
        Settled::Request(request_id) => Ok(vec![request_id.to_string()]),
        Settled::Batch(batch_id) => Ok(sqlx::query_scalar(
            "SELECT request_id::text FROM batch_custom_ids WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_all(conn)
        .await?),
    }
}

/// Each move as the request stream's next event.
fn stream_events(moves: Vec<RequestMove>) -> Result<Vec<StreamEvent>, CommandError> {
    moves
        .into_iter()
        .map(
            |RequestMove {
                 request_id,
                 sequence,
                 event,
             }| {
                let sequence = usize::try_from(sequence).unwrap_or_default();
                StreamEvent::new::<Request>(request_id, sequence, &event)
                    .map_err(|error| CommandError::Internal(error.to_string()))
            },
        )
        .collect()
}
