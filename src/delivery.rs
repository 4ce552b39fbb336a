//! Delivery: pushes every processed request's result to its owner's webhook or RabbitMQ
//! destination, at least once, recording each attempt as a `RequestDeliveryAttempted` event;
//! and takes batches from `ready_to_deliver` through `delivering` to `done`.
//!
//! Live instances share the work by partitions of the request (and batch) id space, each
//! partition delivered by one instance at a time (`Roles::partitioned`). What is due comes
//! from the `requests` read model (`delivering`, `next_attempt_at` passed); whether an attempt
//! is really due, and its number, come from the request's own events, so neither a lagging
//! read model nor a restart can skip or double-record an attempt. An attempt cut off by a
//! crash is sent again, with the same delivery id. Fairness: at most `per_target` attempts
//! in flight per target (a webhook origin, a queue or an exchange), and due work is taken round-robin
//! across targets, so one slow receiver cannot hold every slot.

mod batches;
mod envelope;
mod outcome;
mod rabbitmq;
mod secrets;
mod signature;
mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_aggregates::request::{
    delivery_id, AttemptVerdict, DeliveryAttempt, Request, RequestCommand, RequestStatus,
};
use chronicle_aggregates::Delivery;
use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::{self, JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use envelope::Envelope;
pub use outcome::{RetryPolicy, SendOutcome};
pub use rabbitmq::{RabbitPublisher, Route};
pub use secrets::WebhookSecrets;
pub use signature::{sign, SIGNATURE_HEADER};
pub use webhook::{WebhookCall, WebhookSender};

use crate::command::{CommandContext, CommandError, Commands};
use crate::log::{next_due, LogWaker, Waiter};
use crate::projection::Role;
pub use batches::batch_step;
use batches::BatchDelivery;

/// How long a finished round's request is kept out of the due list while the read model
/// catches up (a redelivery starts a new round and is not held back).
const SETTLING: Duration = Duration::from_secs(5);
/// How long in-flight attempts may finish (and be recorded) when the worker stops.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The shortest pause between looks for due work.
const MIN_POLL: Duration = Duration::from_millis(10);

/// How much the worker does at once and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Attempts in flight at once per target.
    pub per_target: usize,
    /// Pause between looks for due work.
    pub poll_every: Duration,
    /// Retries and giving up.
    pub policy: RetryPolicy,
}

/// What sends: webhooks, the broker, and the owners' signing secrets.
pub struct Transports {
    /// Webhook calls.
    pub webhooks: WebhookSender,
    /// Broker publishes.
    pub rabbitmq: RabbitPublisher,
    /// Signing secrets.
    pub secrets: Arc<WebhookSecrets>,
}

/// The delivery worker.
pub struct DeliveryWorker {
    attempts: Arc<Attempts>,
    batches: BatchDelivery,
    pool: PgPool,
    settings: DeliverySettings,
}

/// Keeps a request out of the due list while the read model still shows an attempt that is
/// over: until `until`, for rounds up to `round` (a redelivery's new round is not held).
#[derive(Debug, Clone, Copy)]
struct Hold {
    round: u32,
    until: Instant,
}

/// Makes single attempts; shared by the in-flight tasks.
struct Attempts {
    commands: Commands,
    transports: Transports,
    policy: RetryPolicy,
}

/// What the worker is doing while it holds the role.
struct InFlight {
    tasks: JoinSet<Option<Hold>>,
    ids: HashMap<task::Id, Uuid>,
    held: HashMap<Uuid, Hold>,
    targets: HashMap<String, Arc<Semaphore>>,
    slots: Arc<Semaphore>,
}

impl DeliveryWorker {
    /// A worker over `pool`, commanding through `commands`.
    pub fn new(
        commands: Commands,
        pool: PgPool,
        transports: Transports,
        settings: DeliverySettings,
    ) -> Self {
        let settings = DeliverySettings {
            concurrency: settings.concurrency.max(1),
            per_target: settings.per_target.max(1),
            poll_every: settings.poll_every.max(MIN_POLL),
            ..settings
        };
        Self {
            batches: BatchDelivery::new(commands.clone(), pool.clone()),
            attempts: Arc::new(Attempts {
                commands,
                transports,
                policy: settings.policy,
            }),
            pool,
            settings,
        }
    }

    /// The role that lets an instance deliver.
    pub const ROLE: &'static str = "delivery";

    /// Runs until `shutdown`, delivering in the partitions of `role` this instance holds; it
    /// looks for work when read models change (`waker`), when timed work falls due and when
    /// it gains partitions.
    pub async fn run(self, role: Role, waker: LogWaker, shutdown: CancellationToken) {
        let pause = self.settings.poll_every;
        role.lead_while_held(pause, &shutdown, |role| {
            self.deliver(role, waker.following(&["requests", "batches"]), &shutdown)
        })
        .await;
    }

    /// Delivers until shutdown or until the role is lost. Batches advance and due work is
    /// read when a projector changed read models (at most every `poll_every`, however busy
    /// the worker is), when a retry or a hold falls due, and after a finished attempt that
    /// left work waiting; an idle worker reads nothing.
    async fn deliver(&self, mut role: Role, mut wake: Waiter, shutdown: &CancellationToken) {
        let mut work = InFlight {
            tasks: JoinSet::new(),
            ids: HashMap::new(),
            held: HashMap::new(),
            targets: HashMap::new(),
            slots: Arc::new(Semaphore::new(self.settings.concurrency)),
        };
        let mut look = true;
        let mut more_due = false;
        let mut due = None;
        let mut looked = tokio::time::Instant::now();
        while !shutdown.is_cancelled() && role.is_held() {
            if look {
                looked = tokio::time::Instant::now();
                if let Err(error) = self.batches.advance(&role).await {
                    tracing::warn!(%error, "advancing batch deliveries failed; will retry");
                }
            }
            // A finished attempt frees a slot: look again only if work was left waiting.
            if look || more_due {
                more_due = self
                    .dispatch(&mut work, &role)
                    .await
                    .unwrap_or_else(|error| {
                        tracing::warn!(%error, "reading due deliveries failed; will retry");
                        false
                    });
            }
            if look {
                due = self.next_due(&work, &role).await;
            }
            look = tokio::select! {
                Some(done) = work.tasks.join_next_with_id(), if !work.tasks.is_empty() => {
                    work.finished(&done);
                    false
                }
                () = wake.wait_until(due) => true,
                () = role.changed() => true,
                () = shutdown.cancelled() => false,
            };
            if look {
                tokio::time::sleep_until(looked + self.settings.poll_every).await;
            }
            while let Some(done) = work.tasks.try_join_next_with_id() {
                work.finished(&done);
            }
        }
        // Attempts under way finish and are recorded, unless they take too long.
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while work.tasks.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            work.tasks.abort_all();
        }
    }

    /// When the next retry or hold falls due.
    async fn next_due(&self, work: &InFlight, role: &Role) -> Option<tokio::time::Instant> {
        let retry = next_due(
            &self.pool,
            "SELECT min(next_attempt_at) FROM requests
              WHERE status = 'delivering' AND next_attempt_at > now()
                AND chronicle_partition(id) = ANY($1)",
            &role.partitions(),
        )
        .await;
        let held = work
            .held
            .values()
            .map(|hold| tokio::time::Instant::from_std(hold.until))
            .min();
        retry.into_iter().chain(held).min()
    }

    /// Starts an attempt for each due delivery that has a free slot, round-robin by target;
    /// true when due work was left waiting for a slot.
    async fn dispatch(&self, work: &mut InFlight, role: &Role) -> Result<bool, sqlx::Error> {
        let now = Instant::now();
        work.held.retain(|_, hold| hold.until > now);
        let in_flight: Vec<Uuid> = work.ids.values().copied().collect();
        let per_target = self.settings.per_target;
        let limit = self.settings.concurrency * 2 + work.held.len();
        let due: Vec<(Uuid, String, i32)> = sqlx::query_as(
            "SELECT id, target, delivery_rounds FROM (
                 SELECT id, coalesce(delivery_target, '') AS target, delivery_rounds,
                        row_number() OVER (PARTITION BY delivery_target
                                           ORDER BY next_attempt_at NULLS FIRST, id) AS turn
                   FROM requests
                  WHERE status = 'delivering'
                    AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                    AND chronicle_partition(id) = ANY($4)
                    AND NOT (id = ANY($1))) AS due
              WHERE turn <= $2
              ORDER BY turn, random()
              LIMIT $3",
        )
        .bind(&in_flight)
        .bind(i64::try_from(per_target + work.held.len()).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(role.partitions())
        .fetch_all(&self.pool)
        .await?;
        let mut waiting = false;
        // Held ones are filtered here, not in SQL: they are many, and briefly so.
        let held = |id: &Uuid, round: i32| {
            work.held
                .get(id)
                .is_some_and(|hold| i64::from(hold.round) >= i64::from(round))
        };
        let due: Vec<(Uuid, String)> = due
            .into_iter()
            .filter(|(id, _, round)| !held(id, *round))
            .map(|(id, target, _)| (id, target))
            .collect();
        for (id, target) in due {
            // Handed on since the read: its new holder delivers it.
            let Some(lease) = role.lease(id) else {
                continue;
            };
            let limit = work
                .targets
                .entry(target)
                .or_insert_with(|| Arc::new(Semaphore::new(per_target)))
                .clone();
            let Ok(target_slot) = limit.try_acquire_owned() else {
                waiting = true;
                continue;
            };
            // Never wait for a slot here: the loop must keep confirming its role.
            let Ok(slot) = work.slots.clone().try_acquire_owned() else {
                waiting = true;
                break;
            };
            let attempts = self.attempts.clone();
            let task = work.tasks.spawn(async move {
                let _held = (slot, target_slot, lease);
                attempts.attempt(id).await.unwrap_or_else(|error| {
                    tracing::warn!(request.id = %id, %error, "delivery attempt not recorded; will retry");
                    None
                })
            });
            work.ids.insert(task.id(), id);
        }
        work.targets
            .retain(|_, limit| limit.available_permits() < per_target);
        Ok(waiting)
    }
}

impl Hold {
    /// A round that is over, while the read model catches up.
    fn settling(round: u32) -> Self {
        Self {
            round,
            until: Instant::now() + SETTLING,
        }
    }

    /// A round whose next attempt is due at `at`.
    fn until(round: u32, at: chrono::DateTime<Utc>) -> Self {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        Self {
            round,
            until: Instant::now() + wait.min(SETTLING),
        }
    }
}

impl InFlight {
    /// Frees a finished attempt's request (also when its task panicked).
    fn finished(&mut self, done: &Result<(task::Id, Option<Hold>), task::JoinError>) {
        let (task, hold) = match done {
            Ok((task, hold)) => (*task, *hold),
            Err(error) => (error.id(), None),
        };
        if let Some(id) = self.ids.remove(&task) {
            if let Some(hold) = hold {
                self.held.insert(id, hold);
            }
        }
    }
}

impl Attempts {
    /// Makes the request's next attempt if it is due; says how long to hold the request
    /// back (its round is over, or its next attempt is not due yet).
    async fn attempt(&self, request_id: Uuid) -> Result<Option<Hold>, CommandError> {
        let id = request_id.to_string();
        let request = self.commands.load::<Request>(&id).await?;
        let progress = request.delivery().clone();
        let (Some(RequestStatus::Delivering), Some(submission)) =
            (request.status(), request.submission())
        else {
            return Ok(Some(Hold::settling(progress.round)));
        };
        let started_at = Utc::now();
        if let Some(retry_at) = progress.retry_at.filter(|at| *at > started_at) {
            return Ok(Some(Hold::until(progress.round, retry_at)));
        }
        let number = progress.attempts + 1;
        let delivery_id = delivery_id(request_id, progress.round);
        let Some(envelope) = Envelope::of(&request, delivery_id, number) else {
            return Ok(Some(Hold::settling(progress.round)));
        };
        let body = envelope.to_bytes();
        let clock = Instant::now();
        let outcome = match &submission.spec.delivery {
            Delivery::Webhook { url } => {
                let secret = self.transports.secrets.for_owner(&submission.owner).await?;
                let call = WebhookCall {
                    url,
                    body: &body,
                    delivery_id,
                    attempt: number,
                    secret: &secret,
                };
                self.transports.webhooks.send(call).await
            }
            Delivery::Rabbitmq { queue } => {
                let route = Route::Queue(queue);
                (self.transports.rabbitmq)
                    .publish(route, &body, delivery_id, number)
                    .await
            }
            Delivery::RabbitmqExchange {
                exchange,
                routing_key,
            } => {
                let route = Route::Exchange {
                    exchange,
                    routing_key,
                };
                (self.transports.rabbitmq)
                    .publish(route, &body, delivery_id, number)
                    .await
            }
            Delivery::Poll => return Ok(Some(Hold::settling(progress.round))),
        };
        let took = clock.elapsed();
        let system = match &submission.spec.delivery {
            Delivery::Webhook { .. } => "webhook",
            Delivery::Rabbitmq { .. } | Delivery::RabbitmqExchange { .. } | Delivery::Poll => {
                "rabbitmq"
            }
        };
        let result = match &outcome {
            SendOutcome::Accepted { .. } => "accepted",
            SendOutcome::Transient { .. } => "transient",
            SendOutcome::Rejected { .. } => "rejected",
        };
        crate::metrics::call(system, result, took);
        let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let now = Utc::now();
        let verdict =
            self.policy
                .verdict(&outcome, number, progress.started_at.unwrap_or(now), now);
        let hold = match verdict {
            AttemptVerdict::RetryAt(at) => Hold::until(progress.round, at),
            AttemptVerdict::Delivered | AttemptVerdict::GiveUp { .. } => {
                Hold::settling(progress.round)
            }
        };
        let attempt = DeliveryAttempt {
            delivery_id,
            round: progress.round,
            number,
            started_at,
            duration_ms,
            status_code: outcome.status_code(),
            error: outcome.error().map(str::to_owned),
        };
        let context = CommandContext::system(submission.batch_id);
        let command = RequestCommand::RecordDeliveryAttempt {
            attempt,
            verdict,
            at: now,
        };
        self.commands
            .execute::<Request>(&context, &id, command, &(), None)
            .await?;
        Ok(Some(hold))
    }
}
