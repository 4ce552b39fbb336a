//! What owners do with their simulations: create, post, end, archive, retry a failed call.
//! Each checks ownership (someone else's simulation is NOT_FOUND), then runs one command.

use chronicle_aggregates::simulation::{EndReason, Simulation, SimulationCommand, SimulationSpec};
use chronicle_aggregates::ErrorCode;
use chrono::Utc;
use uuid::Uuid;

use crate::command::{CommandContext, CommandError, CommandReceipt, Commands, IdempotencyKey};

/// Owner actions on simulations.
#[derive(Clone)]
pub struct SimulationActions {
    commands: Commands,
}

impl SimulationActions {
    /// Actions through `commands`.
    pub fn new(commands: Commands) -> Self {
        Self { commands }
    }

    /// The simulation, if `owner` owns it.
    ///
    /// # Errors
    /// `NOT_FOUND` when it does not exist or is someone else's.
    pub async fn owned(&self, owner: Option<&str>, id: Uuid) -> Result<Simulation, CommandError> {
        let simulation = self.commands.load::<Simulation>(&id.to_string()).await?;
        let visible = simulation
            .owner()
            .is_some_and(|actual| owner.is_none_or(|owner| owner == actual));
        if visible {
            Ok(simulation)
        } else {
            Err(CommandError::Rejected {
                code: ErrorCode::NotFound,
                message: "simulation not found".into(),
            })
        }
    }

    /// Creates a simulation; with an idempotency key its id derives from the key, so a
    /// retried call creates nothing new.
    ///
    /// # Errors
    /// `CONFLICT`, or a reused key.
    pub async fn create(
        &self,
        context: &CommandContext,
        spec: SimulationSpec,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        self.commands
            .once(context, key, |seed| async move {
                let id = seed.map_or_else(Uuid::now_v7, |seed| Uuid::new_v5(&seed, b"simulation"));
                let command = SimulationCommand::Create {
                    simulation_id: id,
                    owner: context.actor.clone(),
                    spec,
                    at: Utc::now(),
                };
                self.commands
                    .execute::<Simulation>(context, &id.to_string(), command, &(), None)
                    .await
            })
            .await
    }

    /// Runs `command` on the caller's simulation `id`.
    ///
    /// # Errors
    /// `NOT_FOUND`, the simulation's refusal, `CONFLICT`.
    pub async fn command(
        &self,
        context: &CommandContext,
        id: Uuid,
        command: SimulationCommand,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        self.owned(Some(&context.actor), id).await?;
        self.commands
            .execute::<Simulation>(context, &id.to_string(), command, &(), key)
            .await
    }

    /// The learner's message.
    pub fn post(text: String) -> SimulationCommand {
        SimulationCommand::PostMessage {
            text,
            at: Utc::now(),
        }
    }

    /// The learner ends the session.
    pub fn end() -> SimulationCommand {
        SimulationCommand::End {
            reason: EndReason::Learner,
            at: Utc::now(),
        }
    }

    /// The owner archives it.
    pub fn archive() -> SimulationCommand {
        SimulationCommand::Archive { at: Utc::now() }
    }

    /// The owner retries the failed call.
    pub fn retry() -> SimulationCommand {
        SimulationCommand::RetryAiCall { at: Utc::now() }
    }
}
