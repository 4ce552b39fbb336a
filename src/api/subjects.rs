//! Erasure of a data subject's personal data over GraphQL (admin).

use async_graphql::{Context, Object};
use chronicle_aggregates::subject::{Subject, SubjectCommand};
use chrono::Utc;

use super::outcome::CommandOutcome;
use super::{ApiError, Caller};
use crate::command::Commands;
use crate::privacy::Vault;

/// The kinds of subject whose data is sealed.
const KINDS: [&str; 2] = ["learner", "patient"];

/// Subject mutations.
#[derive(Default)]
pub(crate) struct SubjectMutation;

#[Object]
impl SubjectMutation {
    /// Erases a subject's personal data (admin): `learner:<learner id>` (simulations) or
    /// `patient:<PatientID>` (transfer tasks' patient ids and pseudonyms). Its data key is
    /// destroyed; events stay and still verify, but every read (queries, read models,
    /// replays, exports) shows its personal fields as `[erased]` from now on, and later data
    /// about it is stored erased. The log records only a pseudonymous reference. Errors:
    /// `FORBIDDEN`, `VALIDATION`, `INVALID_TRANSITION` (forgotten already).
    async fn forget_subject(
        &self,
        ctx: &Context<'_>,
        subject_id: String,
    ) -> Result<CommandOutcome, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        caller.require_admin()?;
        let valid = subject_id.split_once(':').is_some_and(|(kind, id)| {
            KINDS.contains(&kind)
                && (1..=200).contains(&id.len())
                && !id.chars().any(char::is_control)
        });
        if !valid {
            return Err(ApiError::Validation(format!(
                "subjectId must be <kind>:<id> with kind one of {}",
                KINDS.join(", ")
            )));
        }
        let reference = ctx.data_unchecked::<Vault>().subject_ref(&subject_id);
        let command = SubjectCommand::Forget {
            by: caller.actor.clone(),
            at: Utc::now(),
        };
        let receipt = ctx
            .data_unchecked::<Commands>()
            .execute::<Subject>(&caller.command_context(), &reference, command, &(), None)
            .await?;
        Ok(receipt.into())
    }
}
