//! Moving many requests with one command: the driver's and delivery's request events, decided
//! by each request's transition table and committed together through the group commit, so the
//! read models that follow requests are applied in the same transaction.

use chronicle_aggregates::request::{Request, RequestEvent, RequestStatus};
use chronicle_projections::request_moves;
use cqrs_es::{Aggregate, AggregateError};
use uuid::Uuid;

use super::{CommandContext, CommandError, Commands};

impl Commands {
    /// Appends to each request of `ids` the event `decide` returns for its current status,
    /// where the transition table allows it, all in one transaction; returns how many moved.
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
    ) -> Result<usize, CommandError> {
        let moves = {
            let mut conn = self.pool().acquire().await?;
            request_moves::decide(&mut conn, ids, decide).await?
        };
        let command_id = command_id.unwrap_or_else(Uuid::now_v7).to_string();
        self.stores
            .append_moves(moves, &context.metadata(command_id))
            .await
            .map_err(|error| AggregateError::<<Request as Aggregate>::Error>::from(error).into())
    }
}
