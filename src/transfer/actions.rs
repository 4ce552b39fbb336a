//! What owners and admins do with transfer jobs, query jobs and DICOM servers. Someone else's job is
//! NOT_FOUND; admin-only actions (servers, verify, restart) are FORBIDDEN to others.

use std::sync::Arc;

use chronicle_aggregates::client::Role;
use chronicle_aggregates::dicom_server::{DicomServer, DicomServerCommand, ServerSpec};
use chronicle_aggregates::job::{Job, JobCommand, JobKind};
use chronicle_aggregates::query::{Query, QuerySpec};
use chronicle_aggregates::transfer::{Transfer, TransferSpec};
use chronicle_aggregates::ErrorCode;
use chrono::Utc;
use uuid::Uuid;

use crate::command::{CommandContext, CommandError, CommandReceipt, Commands, IdempotencyKey};
use crate::security::EgressPolicy;

/// Owner and admin actions on transfers.
#[derive(Clone)]
pub struct TransferActions {
    commands: Commands,
    trusted: Arc<[String]>,
    egress: EgressPolicy,
}

fn rejected(code: ErrorCode, message: impl Into<String>) -> CommandError {
    CommandError::Rejected {
        code,
        message: message.into(),
    }
}

fn admin_only(authority: Role) -> Result<(), CommandError> {
    match authority {
        Role::Admin => Ok(()),
        Role::Client => Err(rejected(ErrorCode::Forbidden, "only an admin may do this")),
    }
}

impl TransferActions {
    /// Actions through `commands`; jobs of admins and of `trusted` owners (`*`: everyone) need
    /// no verify; servers must be reachable under `egress`.
    pub fn new(commands: Commands, trusted: Vec<String>, egress: EgressPolicy) -> Self {
        Self {
            commands,
            trusted: trusted.into(),
            egress,
        }
    }

    /// Registers (or updates) server `name`.
    ///
    /// # Errors
    /// FORBIDDEN for clients, VALIDATION, CONFLICT.
    pub async fn register_server(
        &self,
        context: &CommandContext,
        authority: Role,
        name: String,
        spec: ServerSpec,
    ) -> Result<CommandReceipt, CommandError> {
        admin_only(authority)?;
        // A URL that is not http(s) with a host is left to the aggregate's own rules.
        let reachable = reqwest::Url::parse(&spec.base_url)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
        if reachable {
            if let Err(refused) = self.egress.check_url(&spec.base_url).await {
                return Err(rejected(
                    ErrorCode::Validation,
                    format!("baseUrl: {refused}"),
                ));
            }
        }
        let id = name.clone();
        let command = DicomServerCommand::Register {
            name,
            spec,
            by: context.actor.clone(),
            at: Utc::now(),
        };
        self.commands
            .execute::<DicomServer>(context, &id, command, &(), None)
            .await
    }

    /// Removes server `name`.
    ///
    /// # Errors
    /// FORBIDDEN for clients, NOT_FOUND, CONFLICT.
    pub async fn remove_server(
        &self,
        context: &CommandContext,
        authority: Role,
        name: &str,
    ) -> Result<CommandReceipt, CommandError> {
        admin_only(authority)?;
        let command = DicomServerCommand::Remove {
            by: context.actor.clone(),
            at: Utc::now(),
        };
        self.commands
            .execute::<DicomServer>(context, name, command, &(), None)
            .await
    }

    /// The registered server `name`.
    ///
    /// # Errors
    /// VALIDATION when it is not registered.
    pub async fn server(&self, name: &str) -> Result<ServerSpec, CommandError> {
        let server = self.commands.load::<DicomServer>(name).await?;
        server.spec().cloned().ok_or_else(|| {
            rejected(
                ErrorCode::Validation,
                format!("{name:?} is not a registered DICOM server"),
            )
        })
    }

    /// Creates a transfer job; with an idempotency key its id derives from the key.
    ///
    /// # Errors
    /// VALIDATION (including servers that are not registered), CONFLICT, a reused key.
    pub async fn create(
        &self,
        context: &CommandContext,
        authority: Role,
        spec: TransferSpec,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        self.server(&spec.source).await?;
        self.server(&spec.destination).await?;
        self.create_job::<Transfer>(context, authority, spec, key)
            .await
    }

    /// Creates a query job; with an idempotency key its id derives from the key.
    ///
    /// # Errors
    /// VALIDATION (including a source that is not registered), CONFLICT, a reused key.
    pub async fn create_query(
        &self,
        context: &CommandContext,
        authority: Role,
        spec: QuerySpec,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        self.server(&spec.source).await?;
        self.create_job::<Query>(context, authority, spec, key)
            .await
    }

    async fn create_job<K: JobKind>(
        &self,
        context: &CommandContext,
        authority: Role,
        spec: K::Spec,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        let trusted = authority == Role::Admin
            || self
                .trusted
                .iter()
                .any(|owner| owner == "*" || *owner == context.actor);
        self.commands
            .once(context, key, |seed| async move {
                let id =
                    seed.map_or_else(Uuid::now_v7, |seed| Uuid::new_v5(&seed, K::TYPE.as_bytes()));
                let command = JobCommand::<K>::Create {
                    job_id: id,
                    owner: context.actor.clone(),
                    spec,
                    trusted,
                    at: Utc::now(),
                };
                self.commands
                    .execute::<Job<K>>(context, &id.to_string(), command, &(), None)
                    .await
            })
            .await
    }

    /// The job, if the caller may see it.
    ///
    /// # Errors
    /// NOT_FOUND when it does not exist or is someone else's.
    pub async fn visible<K: JobKind>(
        &self,
        context: &CommandContext,
        authority: Role,
        id: Uuid,
    ) -> Result<Job<K>, CommandError> {
        let job = self.commands.load::<Job<K>>(&id.to_string()).await?;
        let mine = job.owner() == Some(context.actor.as_str());
        if job.owner().is_some() && (mine || authority == Role::Admin) {
            Ok(job)
        } else {
            Err(rejected(ErrorCode::NotFound, "job not found"))
        }
    }

    /// Runs an owner's (or admin's) `action` on job `id`.
    ///
    /// # Errors
    /// NOT_FOUND, FORBIDDEN for admin-only actions, the job's refusal, CONFLICT.
    pub async fn act<K: JobKind>(
        &self,
        context: &CommandContext,
        authority: Role,
        id: Uuid,
        action: JobAction,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        self.visible::<K>(context, authority, id).await?;
        let (at, by) = (Utc::now(), context.actor.clone());
        let command = match action {
            JobAction::Cancel => JobCommand::<K>::Cancel { at },
            JobAction::Resume => JobCommand::Resume { at },
            JobAction::RetryFailed => JobCommand::RetryFailed { at },
            JobAction::Verify => {
                admin_only(authority)?;
                JobCommand::Verify { by, at }
            }
            JobAction::Restart => {
                admin_only(authority)?;
                JobCommand::Restart { by, at }
            }
        };
        self.commands
            .execute::<Job<K>>(context, &id.to_string(), command, &(), key)
            .await
    }
}

/// What may be done to an existing job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    /// Owner: cancel.
    Cancel,
    /// Owner: resume a canceled job.
    Resume,
    /// Owner: retry the failed tasks.
    RetryFailed,
    /// Admin: let an unverified job run.
    Verify,
    /// Admin: run every task again.
    Restart,
}
