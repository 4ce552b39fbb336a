use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use serde_json::json;
use uuid::Uuid;

use super::{
    delivery_id, AttemptVerdict, DeliveryAttempt, Request, RequestCommand, RequestError,
    RequestEvent, RequestSpec, RequestStatus,
};
use crate::Delivery;

type Framework = TestFramework<Request>;

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap()
}

fn spec(delivery: Delivery) -> RequestSpec {
    RequestSpec::parse(
        "row-1".into(),
        "/v1/chat/completions",
        "gpt-4o-mini".into(),
        json!({ "model": "gpt-4o-mini", "messages": [] }),
        Ok(delivery),
    )
    .unwrap()
}

fn submitted(delivery: Delivery) -> RequestEvent {
    RequestEvent::Submitted {
        request_id: Uuid::from_u128(1),
        owner: "client-1".into(),
        batch_id: Uuid::from_u128(2),
        spec: spec(delivery),
        at: at(),
    }
}

fn webhook() -> Delivery {
    Delivery::webhook("https://receiver.test/hook").unwrap()
}

/// The first attempt of round 1, by the test clock.
fn first_attempt(status_code: Option<u16>) -> DeliveryAttempt {
    DeliveryAttempt {
        delivery_id: delivery_id(Uuid::from_u128(1), 1),
        round: 1,
        number: 1,
        started_at: at(),
        duration_ms: 12,
        status_code,
        error: None,
    }
}

/// The attempt event recorded with `retry_at`.
fn attempted(status_code: Option<u16>, retry_at: Option<DateTime<Utc>>) -> RequestEvent {
    RequestEvent::DeliveryAttempted {
        attempt: first_attempt(status_code),
        retry_at,
        at: at(),
    }
}

/// The command whose events lead to `to`, and those events.
fn command_to(to: RequestStatus) -> (RequestCommand, Vec<RequestEvent>) {
    let (command, event) = single_step(to);
    match to {
        RequestStatus::Delivered => (
            RequestCommand::RecordDeliveryAttempt {
                attempt: first_attempt(Some(200)),
                verdict: AttemptVerdict::Delivered,
                at: at(),
            },
            vec![attempted(Some(200), None), event],
        ),
        RequestStatus::DeliveryFailed => (
            RequestCommand::RecordDeliveryAttempt {
                attempt: first_attempt(Some(400)),
                verdict: AttemptVerdict::GiveUp { reason: "r".into() },
                at: at(),
            },
            vec![attempted(Some(400), None), event],
        ),
        RequestStatus::Pending
        | RequestStatus::ProviderProcessing
        | RequestStatus::ProviderProcessed
        | RequestStatus::Delivering
        | RequestStatus::Failed
        | RequestStatus::Expired
        | RequestStatus::Cancelled
        | RequestStatus::Consumed
        | RequestStatus::ConsumeFailed => (command, vec![event]),
    }
}

/// The command of one step toward `to` and its event (delivery outcomes: the event only).
fn single_step(to: RequestStatus) -> (RequestCommand, RequestEvent) {
    let at = at();
    let (response, error, reason) = (
        json!({ "ok": true }),
        json!({ "code": "x" }),
        "r".to_owned(),
    );
    match to {
        RequestStatus::Pending => (
            RequestCommand::Submit {
                request_id: Uuid::from_u128(1),
                owner: "client-1".into(),
                batch_id: Uuid::from_u128(2),
                spec: spec(webhook()),
                at,
            },
            submitted(webhook()),
        ),
        RequestStatus::ProviderProcessing => (
            RequestCommand::MarkSentToProvider { at },
            RequestEvent::SentToProvider { at },
        ),
        RequestStatus::ProviderProcessed => (
            RequestCommand::RecordResult {
                response: response.clone(),
                cost: None,
                at,
            },
            RequestEvent::ResultRecorded {
                response,
                cost: None,
                at,
            },
        ),
        RequestStatus::Failed => (
            RequestCommand::Fail {
                error: error.clone(),
                at,
            },
            RequestEvent::Failed { error, at },
        ),
        RequestStatus::Expired => (RequestCommand::Expire { at }, RequestEvent::Expired { at }),
        RequestStatus::Cancelled => (
            RequestCommand::Cancel { at },
            RequestEvent::Cancelled { at },
        ),
        RequestStatus::Delivering => (
            RequestCommand::StartDelivery { at },
            RequestEvent::DeliveryStarted { at },
        ),
        RequestStatus::Delivered => (
            RequestCommand::StartDelivery { at },
            RequestEvent::Delivered { at },
        ),
        RequestStatus::DeliveryFailed => (
            RequestCommand::StartDelivery { at },
            RequestEvent::DeliveryFailed { reason, at },
        ),
        RequestStatus::Consumed => (
            RequestCommand::Acknowledge { at },
            RequestEvent::Consumed { at },
        ),
        RequestStatus::ConsumeFailed => (
            RequestCommand::ReportConsumeFailure {
                reason: reason.clone(),
                at,
            },
            RequestEvent::ConsumeFailed { reason, at },
        ),
    }
}

/// Events that bring a request with `delivery` to `status`.
fn history(status: RequestStatus, delivery: &Delivery) -> Vec<RequestEvent> {
    let path: &[RequestStatus] = match status {
        RequestStatus::Pending => &[],
        RequestStatus::ProviderProcessing => &[RequestStatus::ProviderProcessing],
        RequestStatus::ProviderProcessed => &[
            RequestStatus::ProviderProcessing,
            RequestStatus::ProviderProcessed,
        ],
        RequestStatus::Delivering => &[
            RequestStatus::ProviderProcessing,
            RequestStatus::ProviderProcessed,
            RequestStatus::Delivering,
        ],
        RequestStatus::Delivered => &[
            RequestStatus::ProviderProcessing,
            RequestStatus::ProviderProcessed,
            RequestStatus::Delivering,
            RequestStatus::Delivered,
        ],
        RequestStatus::DeliveryFailed => &[
            RequestStatus::ProviderProcessing,
            RequestStatus::ProviderProcessed,
            RequestStatus::Delivering,
            RequestStatus::DeliveryFailed,
        ],
        RequestStatus::Failed => &[RequestStatus::Failed],
        RequestStatus::Expired => &[RequestStatus::Expired],
        RequestStatus::Cancelled => &[RequestStatus::Cancelled],
        RequestStatus::Consumed => &[
            RequestStatus::ProviderProcessing,
            RequestStatus::ProviderProcessed,
            RequestStatus::Consumed,
        ],
        RequestStatus::ConsumeFailed => &[
            RequestStatus::ProviderProcessing,
            RequestStatus::ProviderProcessed,
            RequestStatus::ConsumeFailed,
        ],
    };
    std::iter::once(submitted(delivery.clone()))
        .chain(path.iter().flat_map(|&step| command_to(step).1))
        .collect()
}

fn needs_push(status: RequestStatus) -> bool {
    matches!(
        status,
        RequestStatus::Delivering | RequestStatus::Delivered | RequestStatus::DeliveryFailed
    )
}

fn needs_poll(status: RequestStatus) -> bool {
    matches!(
        status,
        RequestStatus::Consumed | RequestStatus::ConsumeFailed
    )
}

#[test]
fn every_transition_in_the_table_is_allowed_and_every_other_is_refused() {
    for from in RequestStatus::ALL {
        for to in RequestStatus::ALL {
            // Pick the delivery mode under which the move could be legal at all.
            let delivery = if needs_poll(from) || (needs_poll(to) && !needs_push(from)) {
                Delivery::Poll
            } else {
                webhook()
            };
            let (command, events) = command_to(to);
            let result = Framework::with(())
                .given(history(from, &delivery))
                .when(command)
                .inspect_result();
            if to == RequestStatus::Pending {
                assert_eq!(
                    result,
                    Err(RequestError::AlreadySubmitted),
                    "{from:?} -> {to:?}"
                );
            } else if from.can_transition_to(to) {
                assert_eq!(result, Ok(events), "{from:?} -> {to:?}");
            } else if from != RequestStatus::Delivering
                && matches!(to, RequestStatus::Delivered | RequestStatus::DeliveryFailed)
            {
                // Delivery outcomes come with an attempt, recorded only while delivering.
                assert_eq!(
                    result,
                    Err(RequestError::NotDelivering { status: from }),
                    "{from:?} -> {to:?}"
                );
            } else {
                assert_eq!(
                    result,
                    Err(RequestError::InvalidTransition { from, to }),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }
}

#[test]
fn submitting_a_new_request_records_it_as_pending() {
    let (command, events) = command_to(RequestStatus::Pending);
    Framework::with(())
        .given_no_previous_events()
        .when(command)
        .then_expect_events(events);
}

#[test]
fn commands_on_a_request_that_was_never_submitted_are_not_found() {
    Framework::with(())
        .given_no_previous_events()
        .when(RequestCommand::Cancel { at: at() })
        .then_expect_error(RequestError::NotFound);
}

#[test]
fn a_polled_result_is_never_pushed() {
    Framework::with(())
        .given(history(RequestStatus::ProviderProcessed, &Delivery::Poll))
        .when(RequestCommand::StartDelivery { at: at() })
        .then_expect_error(RequestError::Polled);
}

#[test]
fn a_pushed_result_cannot_be_acknowledged() {
    Framework::with(())
        .given(history(RequestStatus::ProviderProcessed, &webhook()))
        .when(RequestCommand::Acknowledge { at: at() })
        .then_expect_error(RequestError::NotPolled);
}

#[test]
fn a_failed_delivery_may_be_started_again() {
    Framework::with(())
        .given(history(RequestStatus::DeliveryFailed, &webhook()))
        .when(RequestCommand::StartDelivery { at: at() })
        .then_expect_events(vec![RequestEvent::DeliveryStarted { at: at() }]);
}

fn parse(
    custom_id: &str,
    endpoint: &str,
    model: &str,
    body: serde_json::Value,
) -> Result<RequestSpec, Vec<String>> {
    RequestSpec::parse(
        custom_id.into(),
        endpoint,
        model.into(),
        body,
        Ok(Delivery::Poll),
    )
}

#[test]
fn each_submission_rule_is_reported() {
    let body = json!({ "messages": [] });
    let cases = [
        (parse("", "/v1/embeddings", "m", body.clone()), "custom id"),
        (
            parse(&"x".repeat(65), "/v1/embeddings", "m", body.clone()),
            "custom id",
        ),
        (
            parse("a", "/v1/images", "m", body.clone()),
            "endpoint must be one of",
        ),
        (
            parse("a", "/v1/embeddings", " ", body.clone()),
            "model must not be empty",
        ),
        (
            parse("a", "/v1/embeddings", "m", json!([1])),
            "body must be a JSON object",
        ),
        (
            parse("a", "/v1/embeddings", "m", json!({ "model": "other" })),
            "body.model",
        ),
        (
            parse(
                "a",
                "/v1/embeddings",
                "m",
                json!({ "input": "x".repeat(1_000_001) }),
            ),
            "at most 1000000 bytes",
        ),
    ];
    for (result, expected) in cases {
        let problems = result.expect_err(expected);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{problems:?}"
        );
    }
    let nul = parse("a\0", "/v1/embeddings", "m", json!({ "input": "x\u{0}y" }));
    assert_eq!(nul.expect_err("NUL").len(), 1);
    let bad_delivery = RequestSpec::parse(
        "a".into(),
        "/v1/embeddings",
        "m".into(),
        body.clone(),
        Delivery::webhook("ftp://x"),
    );
    assert!(bad_delivery.is_err());
    let all_wrong = parse("", "/nope", "", json!(1)).expect_err("four problems");
    assert_eq!(all_wrong.len(), 4, "{all_wrong:?}");
}

#[test]
fn a_valid_request_counts_its_jsonl_line() {
    let spec = parse(
        "a",
        "/v1/embeddings",
        "m",
        json!({ "model": "m", "input": "hi" }),
    )
    .unwrap();
    let line = spec.jsonl_line();
    let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed["custom_id"], "a");
    assert_eq!(parsed["method"], "POST");
    assert_eq!(parsed["url"], "/v1/embeddings");
    assert_eq!(spec.jsonl_bytes(), line.len() as u64 + 1);
}

#[test]
fn every_event_type_names_the_status_it_leads_to() {
    use cqrs_es::DomainEvent;
    for status in RequestStatus::ALL {
        for event in command_to(status).1 {
            assert_eq!(
                RequestEvent::status_after_type(&event.event_type()),
                Some(event.status())
            );
        }
    }
    assert_eq!(RequestEvent::status_after_type("BatchOpened"), None);
}

#[test]
fn a_body_without_model_gets_the_requests_model_in_its_jsonl_line() {
    let spec = parse("a", "/v1/embeddings", "m", json!({ "input": "hi" })).unwrap();
    let line: serde_json::Value = serde_json::from_str(&spec.jsonl_line()).unwrap();
    assert_eq!(line["body"]["model"], "m");
    assert_eq!(spec.jsonl_bytes(), spec.jsonl_line().len() as u64 + 1);
}

#[test]
fn anthropic_custom_ids_are_limited_to_its_alphabet() {
    let body = json!({ "messages": [] });
    assert!(parse("row_1-a", "/v1/messages", "claude", body.clone()).is_ok());
    let refused = parse("row.1", "/v1/messages", "claude", body.clone()).expect_err("dot");
    assert!(refused[0].contains("/v1/messages"), "{refused:?}");
    assert!(parse("row.1", "/v1/chat/completions", "m", body).is_ok());
}

#[test]
fn a_delivered_result_may_be_delivered_again_in_a_new_round() {
    Framework::with(())
        .given(history(RequestStatus::Delivered, &webhook()))
        .when(RequestCommand::StartDelivery { at: at() })
        .then_expect_events(vec![RequestEvent::DeliveryStarted { at: at() }]);
}

#[test]
fn a_failed_attempt_with_a_retry_keeps_the_request_delivering_until_the_next() {
    let retry_at = at() + chrono::Duration::seconds(2);
    Framework::with(())
        .given(history(RequestStatus::Delivering, &webhook()))
        .when(RequestCommand::RecordDeliveryAttempt {
            attempt: first_attempt(Some(503)),
            verdict: AttemptVerdict::RetryAt(retry_at),
            at: at(),
        })
        .then_expect_events(vec![attempted(Some(503), Some(retry_at))]);
}

#[test]
fn an_attempt_recorded_twice_or_out_of_turn_is_refused() {
    let mut given = history(RequestStatus::Delivering, &webhook());
    given.push(attempted(Some(503), Some(at())));
    for (round, number) in [(1, 1), (1, 3), (2, 1), (0, 2)] {
        let attempt = DeliveryAttempt {
            round,
            number,
            ..first_attempt(None)
        };
        Framework::with(())
            .given(given.clone())
            .when(RequestCommand::RecordDeliveryAttempt {
                attempt,
                verdict: AttemptVerdict::Delivered,
                at: at(),
            })
            .then_expect_error(RequestError::UnexpectedAttempt {
                expected_round: 1,
                expected_number: 2,
            });
    }
}

#[test]
fn each_round_counts_its_attempts_from_one_with_its_own_delivery_id() {
    let mut request = Request::default();
    let mut events = history(RequestStatus::DeliveryFailed, &webhook());
    events.push(RequestEvent::DeliveryStarted { at: at() });
    for event in events {
        cqrs_es::Aggregate::apply(&mut request, event);
    }
    assert_eq!(request.delivery().round, 2);
    assert_eq!(request.delivery().attempts, 0);
    assert_ne!(
        delivery_id(Uuid::from_u128(1), 1),
        delivery_id(Uuid::from_u128(1), 2)
    );
    assert_eq!(
        delivery_id(Uuid::from_u128(1), 2),
        delivery_id(Uuid::from_u128(1), 2)
    );
}
