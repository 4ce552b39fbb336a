//! `Ledger`: a test-only aggregate with one versioned event, used to exercise the event store,
//! snapshots, upcasting and the log without depending on a business domain.

use chronicle_aggregates::{DomainError, ErrorCode, Upcast};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Ledger {
    opened: bool,
    balance: i64,
}

#[derive(Debug, Clone)]
pub enum LedgerCommand {
    Open,
    /// One event per amount.
    Deposit(Vec<i64>),
    Withdraw(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LedgerEvent {
    Opened,
    /// Version 2 added `memo`; version 1 events are upcast with an empty memo.
    Deposited {
        amount: i64,
        memo: String,
    },
    Withdrawn {
        amount: i64,
    },
}

impl DomainEvent for LedgerEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Opened => "Opened",
            Self::Deposited { .. } => "Deposited",
            Self::Withdrawn { .. } => "Withdrawn",
        }
        .into()
    }

    fn event_version(&self) -> String {
        match self {
            Self::Deposited { .. } => "2.0.0",
            Self::Opened | Self::Withdrawn { .. } => "1.0.0",
        }
        .into()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger is already open")]
    AlreadyOpen,
    #[error("the ledger is not open")]
    NotOpen,
    #[error("balance {balance} does not cover {amount}")]
    Insufficient { balance: i64, amount: i64 },
}

impl DomainError for LedgerError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::AlreadyOpen | Self::NotOpen => ErrorCode::InvalidTransition,
            Self::Insufficient { .. } => ErrorCode::Validation,
        }
    }
}

impl Aggregate for Ledger {
    const TYPE: &'static str = "Ledger";
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = LedgerError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            LedgerCommand::Open if self.opened => return Err(LedgerError::AlreadyOpen),
            LedgerCommand::Open => sink.write(LedgerEvent::Opened, self).await,
            LedgerCommand::Deposit(_) | LedgerCommand::Withdraw(_) if !self.opened => {
                return Err(LedgerError::NotOpen)
            }
            LedgerCommand::Deposit(amounts) => {
                for amount in amounts {
                    let memo = String::new();
                    sink.write(LedgerEvent::Deposited { amount, memo }, self)
                        .await;
                }
            }
            LedgerCommand::Withdraw(amount) if amount > self.balance => {
                return Err(LedgerError::Insufficient {
                    balance: self.balance,
                    amount,
                })
            }
            LedgerCommand::Withdraw(amount) => {
                sink.write(LedgerEvent::Withdrawn { amount }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            LedgerEvent::Opened => self.opened = true,
            LedgerEvent::Deposited { amount, .. } => self.balance += amount,
            LedgerEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
}

impl chronicle_aggregates::Effects for Ledger {}

impl Upcast for Ledger {
    fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
        vec![Box::new(SemanticVersionEventUpcaster::new(
            "Deposited",
            "2.0.0",
            Box::new(|mut payload: Value| {
                if let Some(body) = payload.get_mut("Deposited") {
                    body["memo"] = json!("");
                }
                payload
            }),
        ))]
    }
}
