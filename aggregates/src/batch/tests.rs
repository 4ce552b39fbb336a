use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use serde_json::json;
use uuid::Uuid;

use super::{
    Batch, BatchCommand, BatchEntry, BatchError, BatchEvent, BatchKey, BatchLimits, BatchStatus,
    CloseReason,
};
use crate::request::RequestSpec;
use crate::{Delivery, Endpoint};

fn framework() -> TestFramework<Batch> {
    TestFramework::with(())
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap()
}

fn key() -> BatchKey {
    BatchKey {
        owner: "client-1".into(),
        endpoint: Endpoint::Embeddings,
        model: "m".into(),
    }
}

fn entry(custom_id: &str) -> BatchEntry {
    BatchEntry {
        request_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, custom_id.as_bytes()),
        spec: RequestSpec::parse(
            custom_id.into(),
            "/v1/embeddings",
            "m".into(),
            json!({ "input": "hello" }),
            Ok(Delivery::Poll),
        )
        .unwrap(),
    }
}

fn add(entries: Vec<BatchEntry>, limits: BatchLimits) -> BatchCommand {
    BatchCommand::Add {
        batch_id: Uuid::from_u128(7),
        key: key(),
        entries,
        limits,
        at: at(),
    }
}

fn added(entries: Vec<BatchEntry>) -> BatchEvent {
    let size_bytes = entries.iter().map(|e| e.spec.jsonl_bytes()).sum();
    BatchEvent::RequestsAdded {
        entries,
        size_bytes,
        at: at(),
    }
}

fn opened() -> BatchEvent {
    BatchEvent::Opened {
        batch_id: Uuid::from_u128(7),
        key: key(),
        at: at(),
    }
}

/// The lifecycle command leading to `to` (not `Building`), and its event.
fn command_to(to: BatchStatus) -> (BatchCommand, BatchEvent) {
    let at = at();
    let successor = Uuid::from_u128(8);
    match to {
        BatchStatus::Building => unreachable!("building is reached by adding"),
        BatchStatus::Uploading => (
            BatchCommand::Close {
                reason: CloseReason::Flushed,
                successor,
                at,
            },
            BatchEvent::Closed {
                reason: CloseReason::Flushed,
                successor,
                at,
            },
        ),
        BatchStatus::Uploaded => (
            BatchCommand::MarkUploaded {
                input_file_id: "file-1".into(),
                at,
            },
            BatchEvent::InputUploaded {
                input_file_id: "file-1".into(),
                at,
            },
        ),
        BatchStatus::ProviderProcessing => (
            BatchCommand::MarkSubmitted {
                provider_batch_id: "batch_1".into(),
                at,
            },
            BatchEvent::SubmittedToProvider {
                provider_batch_id: "batch_1".into(),
                at,
            },
        ),
        BatchStatus::ProviderCompleted => (
            BatchCommand::MarkProviderCompleted {
                output_file_id: Some("out".into()),
                error_file_id: None,
                at,
            },
            BatchEvent::ProviderCompleted {
                output_file_id: Some("out".into()),
                error_file_id: None,
                at,
            },
        ),
        BatchStatus::Downloading => (
            BatchCommand::StartDownload { at },
            BatchEvent::DownloadStarted { at },
        ),
        BatchStatus::ReadyToDeliver => (
            BatchCommand::MarkDownloaded {
                succeeded: 1,
                failed: 0,
                at,
            },
            BatchEvent::ResultsDownloaded {
                succeeded: 1,
                failed: 0,
                at,
            },
        ),
        BatchStatus::Delivering => (
            BatchCommand::StartDelivery { at },
            BatchEvent::DeliveryStarted { at },
        ),
        BatchStatus::Done => (
            BatchCommand::FinishDelivery {
                delivered: 1,
                undelivered: 0,
                at,
            },
            BatchEvent::DeliveryFinished {
                delivered: 1,
                undelivered: 0,
                at,
            },
        ),
        BatchStatus::Failed => (
            BatchCommand::Fail {
                error: json!({ "message": "x" }),
                at,
            },
            BatchEvent::Failed {
                error: json!({ "message": "x" }),
                at,
            },
        ),
        BatchStatus::Cancelled => (BatchCommand::Cancel { at }, BatchEvent::Cancelled { at }),
        BatchStatus::Expired => (
            BatchCommand::Expire {
                output_file_id: None,
                error_file_id: None,
                at,
            },
            BatchEvent::Expired {
                output_file_id: None,
                error_file_id: None,
                at,
            },
        ),
    }
}

/// Events that bring a one-request batch to `status`.
fn history(status: BatchStatus) -> Vec<BatchEvent> {
    use BatchStatus::{
        Building, Cancelled, Delivering, Done, Downloading, Expired, Failed, ProviderCompleted,
        ProviderProcessing, ReadyToDeliver, Uploaded, Uploading,
    };
    let to_delivering = [
        Uploading,
        Uploaded,
        ProviderProcessing,
        ProviderCompleted,
        Downloading,
        ReadyToDeliver,
        Delivering,
    ];
    let path: Vec<BatchStatus> = match status {
        Building => vec![],
        Uploading | Uploaded | ProviderProcessing | ProviderCompleted | Downloading
        | ReadyToDeliver | Delivering => {
            let end = to_delivering.iter().position(|s| *s == status).unwrap();
            to_delivering[..=end].to_vec()
        }
        Done => [to_delivering.as_slice(), &[Done]].concat(),
        Failed => vec![Uploading, Failed],
        Cancelled => vec![Cancelled],
        Expired => vec![Uploading, Uploaded, ProviderProcessing, Expired],
    };
    [opened(), added(vec![entry("a")])]
        .into_iter()
        .chain(path.into_iter().map(|step| command_to(step).1))
        .collect()
}

#[test]
fn every_transition_in_the_table_is_allowed_and_every_other_is_refused() {
    for from in BatchStatus::ALL {
        for to in BatchStatus::ALL {
            if to == BatchStatus::Building {
                let new = entry("b");
                let result = framework()
                    .given(history(from))
                    .when(add(vec![new.clone()], BatchLimits::default()))
                    .inspect_result();
                let expected = if from == BatchStatus::Building {
                    Ok(vec![added(vec![new])])
                } else {
                    Err(BatchError::NotBuilding { status: from })
                };
                assert_eq!(result, expected, "{from:?} -> {to:?}");
                continue;
            }
            let (command, event) = command_to(to);
            let result = framework()
                .given(history(from))
                .when(command)
                .inspect_result();
            if from.can_transition_to(to) {
                assert_eq!(result, Ok(vec![event]), "{from:?} -> {to:?}");
            } else {
                assert_eq!(
                    result,
                    Err(BatchError::InvalidTransition { from, to }),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }
}

#[test]
fn the_first_requests_open_the_batch() {
    let entries = vec![entry("a"), entry("b")];
    framework()
        .given_no_previous_events()
        .when(add(entries.clone(), BatchLimits::default()))
        .then_expect_events(vec![opened(), added(entries)]);
}

#[test]
fn adding_nothing_is_rejected() {
    framework()
        .given_no_previous_events()
        .when(add(Vec::new(), BatchLimits::default()))
        .then_expect_error(BatchError::NoEntries);
}

#[test]
fn requests_for_another_key_are_rejected() {
    let mut command = add(vec![entry("b")], BatchLimits::default());
    if let BatchCommand::Add { key, .. } = &mut command {
        key.model = "other".into();
    }
    framework()
        .given(history(BatchStatus::Building))
        .when(command)
        .then_expect_error(BatchError::KeyMismatch);
}

#[test]
fn a_custom_id_repeated_within_one_call_is_rejected() {
    framework()
        .given_no_previous_events()
        .when(add(
            vec![entry("x"), entry("y"), entry("x")],
            BatchLimits::default(),
        ))
        .then_expect_error(BatchError::DuplicateCustomIds {
            ids: vec!["x".into()],
        });
}

#[test]
fn requests_beyond_the_count_limit_are_refused_with_the_room_left() {
    let limits = BatchLimits {
        max_requests: 2,
        max_bytes: 1_000_000,
    };
    let used = entry("a").spec.jsonl_bytes();
    framework()
        .given(history(BatchStatus::Building))
        .when(add(vec![entry("b"), entry("c")], limits))
        .then_expect_error(BatchError::WouldOverflow {
            requests: 1,
            bytes: 1_000_000 - used,
        });
}

#[test]
fn requests_beyond_the_size_limit_are_refused_with_the_room_left() {
    let one = entry("a").spec.jsonl_bytes();
    let limits = BatchLimits {
        max_requests: 50_000,
        max_bytes: one * 2,
    };
    framework()
        .given(history(BatchStatus::Building))
        .when(add(vec![entry("b"), entry("c")], limits))
        .then_expect_error(BatchError::WouldOverflow {
            requests: 49_999,
            bytes: one,
        });
}

#[test]
fn requests_that_exactly_fill_the_batch_are_accepted() {
    let limits = BatchLimits {
        max_requests: 2,
        max_bytes: 1_000_000,
    };
    let new = entry("b");
    framework()
        .given(history(BatchStatus::Building))
        .when(add(vec![new.clone()], limits))
        .then_expect_events(vec![added(vec![new])]);
}

#[test]
fn an_empty_batch_cannot_be_closed() {
    let (command, _) = command_to(BatchStatus::Uploading);
    framework()
        .given(vec![opened()])
        .when(command)
        .then_expect_error(BatchError::Empty);
}

#[test]
fn lifecycle_commands_on_a_batch_that_never_opened_are_not_found() {
    framework()
        .given_no_previous_events()
        .when(BatchCommand::Cancel { at: at() })
        .then_expect_error(BatchError::NotFound);
}

#[test]
fn counts_and_sizes_follow_the_added_requests() {
    let mut batch = Batch::default();
    for event in history(BatchStatus::Building) {
        cqrs_es::Aggregate::apply(&mut batch, event);
    }
    cqrs_es::Aggregate::apply(&mut batch, added(vec![entry("b"), entry("c")]));
    assert_eq!(batch.request_count(), 3);
    assert_eq!(batch.size_bytes(), entry("a").spec.jsonl_bytes() * 3);
    assert_eq!(batch.status(), Some(BatchStatus::Building));
}

#[test]
fn provider_progress_is_recorded_only_while_the_provider_processes_the_batch() {
    let progress = || BatchCommand::RecordProviderProgress {
        provider_status: "in_progress".into(),
        total: 1,
        completed: 0,
        failed: 0,
        at: at(),
    };
    for status in BatchStatus::ALL {
        let result = framework()
            .given(history(status))
            .when(progress())
            .inspect_result();
        if status == BatchStatus::ProviderProcessing {
            let expected = BatchEvent::ProviderProgressed {
                provider_status: "in_progress".into(),
                total: 1,
                completed: 0,
                failed: 0,
                at: at(),
            };
            assert_eq!(result, Ok(vec![expected]));
        } else {
            assert_eq!(
                result,
                Err(BatchError::NotAtProvider { status }),
                "{status:?}"
            );
        }
    }
}

#[test]
fn a_cancelled_batch_that_reached_the_provider_records_one_cancel_request() {
    let record = || BatchCommand::RecordProviderCancel { at: at() };
    let mut cancelled_in_flight = history(BatchStatus::ProviderProcessing);
    cancelled_in_flight.push(BatchEvent::Cancelled { at: at() });
    framework()
        .given(cancelled_in_flight.clone())
        .when(record())
        .then_expect_events(vec![BatchEvent::ProviderCancelRequested { at: at() }]);
    cancelled_in_flight.push(BatchEvent::ProviderCancelRequested { at: at() });
    framework()
        .given(cancelled_in_flight)
        .when(record())
        .then_expect_error(BatchError::NoProviderCancel);
    for status in BatchStatus::ALL {
        framework()
            .given(history(status))
            .when(record())
            .then_expect_error(BatchError::NoProviderCancel);
    }
}

#[test]
fn requests_are_withdrawn_only_while_the_batch_builds() {
    let withdraw = || BatchCommand::WithdrawRequest {
        request_id: Uuid::from_u128(9),
        at: at(),
    };
    for status in BatchStatus::ALL {
        let result = framework()
            .given(history(status))
            .when(withdraw())
            .inspect_result();
        let expected = if status == BatchStatus::Building {
            Ok(vec![BatchEvent::RequestWithdrawn {
                request_id: Uuid::from_u128(9),
                at: at(),
            }])
        } else {
            Err(BatchError::NotBuilding { status })
        };
        assert_eq!(result, expected, "{status:?}");
    }
}

#[test]
fn a_request_is_withdrawn_once() {
    let request_id = Uuid::from_u128(9);
    let mut given = history(BatchStatus::Building);
    given.push(BatchEvent::RequestWithdrawn {
        request_id,
        at: at(),
    });
    framework()
        .given(given)
        .when(BatchCommand::WithdrawRequest {
            request_id,
            at: at(),
        })
        .then_expect_error(BatchError::AlreadyWithdrawn);
}

#[test]
fn cancelling_failing_and_withdrawing_settle_requests_and_nothing_else_does() {
    use cqrs_es::Aggregate;

    use crate::{Effects, Settlement};

    let mut batch = Batch::default();
    for event in history(BatchStatus::Building) {
        batch.apply(event);
    }
    let batch_id = Uuid::from_u128(7);
    let request_id = Uuid::from_u128(9);
    let error = json!({ "message": "upload refused" });
    let settling = [
        BatchEvent::Cancelled { at: at() },
        BatchEvent::Failed {
            error: error.clone(),
            at: at(),
        },
        BatchEvent::RequestWithdrawn {
            request_id,
            at: at(),
        },
    ];
    assert_eq!(
        batch.settlements(&settling),
        [
            Settlement::BatchCancelled { batch_id, at: at() },
            Settlement::BatchFailed {
                batch_id,
                error,
                at: at()
            },
            Settlement::Withdrawn {
                request_id,
                at: at()
            },
        ]
    );
    let closed = BatchEvent::Closed {
        reason: CloseReason::Full,
        successor: Uuid::from_u128(8),
        at: at(),
    };
    assert!(batch.settlements(&[closed]).is_empty());
}
