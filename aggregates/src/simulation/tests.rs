use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use serde_json::json;
use uuid::Uuid;

use super::{
    call_id, AiCallFailure, AiCallRecord, AiOutput, AiService, AiSettings, Difficulty, EndReason,
    Feedback, PatientProfile, Role, Scenario, Simulation, SimulationCommand, SimulationError,
    SimulationEvent, SimulationSpec, SimulationStatus, TokenUsage,
};

type Framework = TestFramework<Simulation>;

const SIM: Uuid = Uuid::from_u128(7);

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

fn spec() -> SimulationSpec {
    SimulationSpec {
        learner_id: "learner-1".into(),
        scenario: Scenario {
            diagnosis: "appendicitis".into(),
            chief_complaint: "abdominal pain".into(),
            difficulty: Difficulty::Medium,
        },
        patient: PatientProfile {
            name: "Alex Doe".into(),
            age: 34,
            sex: "female".into(),
            history: "none".into(),
        },
        ai: AiSettings {
            model: "gpt-4o-mini".into(),
            temperature: Some(0.7),
            max_tokens: None,
        },
        time_limit_seconds: Some(1_800),
    }
}

fn create() -> SimulationCommand {
    SimulationCommand::Create {
        simulation_id: SIM,
        owner: "client-1".into(),
        spec: spec(),
        at: at(),
    }
}

fn record(n: u32, service: AiService) -> AiCallRecord {
    AiCallRecord {
        call_id: call_id(SIM, n),
        service,
        model: "gpt-4o-mini".into(),
        request: json!([{ "role": "system", "content": "…" }]),
        response_text: "{}".into(),
        output: json!({}),
        schema: service.schema().into(),
        usage: TokenUsage {
            prompt: 10,
            completion: 5,
        },
        finish_reason: "stop".into(),
        latency_ms: 20,
        attempts: 1,
    }
}

fn result(n: u32, service: AiService) -> SimulationCommand {
    let output = match service {
        AiService::PatientInitial | AiService::PatientReply => {
            AiOutput::PatientLine(format!("line {n}"))
        }
        AiService::FeedbackHotwash => AiOutput::Feedback(Feedback {
            went_well: vec!["rapport".into()],
            missed: vec![],
            scores: vec![],
        }),
    };
    SimulationCommand::RecordAiResult {
        call: record(n, service),
        output,
        at: at(),
    }
}

fn failure(n: u32) -> SimulationCommand {
    SimulationCommand::RecordAiFailure {
        failure: AiCallFailure {
            call_id: call_id(SIM, n),
            request: json!([]),
            error: "503".into(),
            attempts: 3,
            latency_ms: 90,
        },
        at: at(),
    }
}

fn post(text: &str) -> SimulationCommand {
    SimulationCommand::PostMessage {
        text: text.into(),
        at: at(),
    }
}

/// Runs `commands` from scratch and returns the events, panicking on a refusal.
fn run(commands: Vec<SimulationCommand>) -> Vec<SimulationEvent> {
    let mut state = Simulation::default();
    let mut all = Vec::new();
    for command in commands {
        let events = state.decide(command).expect("command accepted");
        for event in events {
            state.apply(event.clone());
            all.push(event);
        }
    }
    all
}

/// Commands that bring a simulation to `status` (the failed one failed its reply call).
fn path(status: SimulationStatus) -> Vec<SimulationCommand> {
    let started = vec![create(), result(1, AiService::PatientInitial)];
    let end = SimulationCommand::End {
        reason: EndReason::Learner,
        at: at(),
    };
    match status {
        SimulationStatus::Created => vec![create()],
        SimulationStatus::InProgress => started,
        SimulationStatus::Failed => [started, vec![post("hello"), failure(2)]].concat(),
        SimulationStatus::Ended => [started, vec![end]].concat(),
        SimulationStatus::FeedbackReady => {
            [started, vec![end, result(2, AiService::FeedbackHotwash)]].concat()
        }
        SimulationStatus::Archived => {
            [started, vec![end, SimulationCommand::Archive { at: at() }]].concat()
        }
    }
}

fn state_of(events: &[SimulationEvent]) -> Simulation {
    let mut state = Simulation::default();
    for event in events {
        state.apply(event.clone());
    }
    state
}

/// The command that would take a simulation in `from` to `to`.
fn command_to(
    from: SimulationStatus,
    to: SimulationStatus,
    state: &Simulation,
) -> SimulationCommand {
    let next = state.calls + 1;
    match to {
        SimulationStatus::Created if from == SimulationStatus::Failed => {
            SimulationCommand::RetryAiCall { at: at() }
        }
        SimulationStatus::Created => create(),
        SimulationStatus::InProgress => match from {
            SimulationStatus::Created => result(state.calls, AiService::PatientInitial),
            SimulationStatus::Failed => SimulationCommand::RetryAiCall { at: at() },
            SimulationStatus::InProgress
            | SimulationStatus::Ended
            | SimulationStatus::FeedbackReady
            | SimulationStatus::Archived => post("anyone there?"),
        },
        SimulationStatus::Ended => SimulationCommand::End {
            reason: EndReason::Learner,
            at: at(),
        },
        SimulationStatus::FeedbackReady => result(
            state.pending().map_or(next, |_| state.calls),
            AiService::FeedbackHotwash,
        ),
        SimulationStatus::Failed => failure(state.pending().map_or(next, |_| state.calls)),
        SimulationStatus::Archived => SimulationCommand::Archive { at: at() },
    }
}

#[test]
fn every_transition_in_the_table_is_allowed_and_every_other_is_refused() {
    for from in SimulationStatus::ALL {
        for to in SimulationStatus::ALL {
            let mut commands = path(from);
            match (from, to) {
                // A failed session whose failed call was the opening line goes back to created.
                (SimulationStatus::Failed, SimulationStatus::Created) => {
                    commands = vec![create(), failure(1)];
                }
                // A running session fails when its pending reply fails.
                (SimulationStatus::InProgress, SimulationStatus::Failed) => {
                    commands.push(post("hello"));
                }
                _ => {}
            }
            let state = state_of(&run(commands));
            assert_eq!(state.status(), Some(from));
            let command = command_to(from, to, &state);
            let result = state.decide(command);
            if from.can_transition_to(to) {
                let events = result.unwrap_or_else(|e| panic!("{from:?} -> {to:?}: {e}"));
                let mut after = state.clone();
                for event in events {
                    after.apply(event);
                }
                assert_eq!(after.status(), Some(to), "{from:?} -> {to:?}");
            } else if from != to || to != SimulationStatus::InProgress {
                assert!(result.is_err(), "{from:?} -> {to:?} was allowed");
            }
        }
    }
}

#[test]
fn creating_requests_the_opening_line_and_sets_the_time_limit() {
    Framework::with(())
        .given_no_previous_events()
        .when(create())
        .then_expect_events(vec![
            SimulationEvent::Created {
                simulation_id: SIM,
                owner: "client-1".into(),
                spec: spec(),
                ends_at: Some(at() + chrono::Duration::minutes(30)),
                at: at(),
            },
            SimulationEvent::AiCallRequested {
                call_id: call_id(SIM, 1),
                service: AiService::PatientInitial,
                at: at(),
            },
        ]);
}

#[test]
fn messages_are_numbered_without_gaps_and_turns_alternate() {
    let events = run(vec![
        create(),
        result(1, AiService::PatientInitial),
        post("what brings you in?"),
        result(2, AiService::PatientReply),
        post("where does it hurt?"),
        result(3, AiService::PatientReply),
    ]);
    let state = state_of(&events);
    let turns: Vec<(u32, Role)> = state.messages().iter().map(|m| (m.seq, m.role)).collect();
    assert_eq!(
        turns,
        [
            (1, Role::Patient),
            (2, Role::Learner),
            (3, Role::Patient),
            (4, Role::Learner),
            (5, Role::Patient)
        ]
    );
    assert_eq!(state.messages()[4].call_id, Some(call_id(SIM, 3)));
}

#[test]
fn the_learner_cannot_post_while_the_patient_is_replying() {
    let state = state_of(&run(vec![
        create(),
        result(1, AiService::PatientInitial),
        post("first"),
    ]));
    assert_eq!(
        state.decide(post("second")),
        Err(SimulationError::ReplyPending)
    );
    let opening = state_of(&run(vec![create()]));
    assert_eq!(
        opening.decide(post("hi")),
        Err(SimulationError::ReplyPending)
    );
}

#[test]
fn a_duplicated_answer_is_persisted_once() {
    let state = state_of(&run(vec![create(), result(1, AiService::PatientInitial)]));
    assert_eq!(
        state.decide(result(1, AiService::PatientInitial)),
        Ok(vec![])
    );
    assert_eq!(state.messages().len(), 1);
}

#[test]
fn an_answer_for_no_pending_call_or_of_the_wrong_kind_is_refused() {
    let state = state_of(&run(vec![create()]));
    assert_eq!(
        state.decide(result(5, AiService::PatientReply)),
        Err(SimulationError::UnknownCall {
            call_id: call_id(SIM, 5)
        })
    );
    let mut wrong = result(1, AiService::FeedbackHotwash);
    if let SimulationCommand::RecordAiResult { call, .. } = &mut wrong {
        call.schema = "patient_reply".into();
    }
    assert_eq!(
        state.decide(wrong),
        Err(SimulationError::WrongOutput {
            service: AiService::PatientInitial
        })
    );
}

#[test]
fn a_failed_call_is_retried_as_a_new_call_for_the_same_service() {
    let failed = state_of(&run(vec![
        create(),
        result(1, AiService::PatientInitial),
        post("hello"),
        failure(2),
    ]));
    assert_eq!(failed.status(), Some(SimulationStatus::Failed));
    assert_eq!(
        failed.decide(post("again")),
        Err(SimulationError::NotTakingMessages {
            status: SimulationStatus::Failed
        })
    );
    assert_eq!(
        failed.decide(SimulationCommand::RetryAiCall { at: at() }),
        Ok(vec![SimulationEvent::AiCallRequested {
            call_id: call_id(SIM, 3),
            service: AiService::PatientReply,
            at: at()
        }])
    );
    assert_eq!(
        failed.decide(failure(2)),
        Ok(vec![]),
        "a repeated failure is recorded once"
    );
}

#[test]
fn messages_are_refused_once_ended_or_after_the_time_limit() {
    let ended = state_of(&run(path(SimulationStatus::Ended)));
    assert_eq!(
        ended.decide(post("wait")),
        Err(SimulationError::NotTakingMessages {
            status: SimulationStatus::Ended
        })
    );
    let running = state_of(&run(path(SimulationStatus::InProgress)));
    let late = SimulationCommand::PostMessage {
        text: "late".into(),
        at: at() + chrono::Duration::minutes(31),
    };
    assert_eq!(running.decide(late), Err(SimulationError::TimeUp));
    for bad in ["", "   ", "a\0b"] {
        assert!(matches!(
            running.decide(post(bad)),
            Err(SimulationError::InvalidMessage { .. })
        ));
    }
}

#[test]
fn ending_abandons_a_pending_reply_and_requests_the_feedback() {
    let replying = state_of(&run(vec![
        create(),
        result(1, AiService::PatientInitial),
        post("hello"),
    ]));
    let events = replying
        .decide(SimulationCommand::End {
            reason: EndReason::TimeLimit,
            at: at(),
        })
        .unwrap();
    assert_eq!(
        events,
        vec![
            SimulationEvent::Ended {
                reason: EndReason::TimeLimit,
                abandoned_call: Some(call_id(SIM, 2)),
                at: at()
            },
            SimulationEvent::AiCallRequested {
                call_id: call_id(SIM, 3),
                service: AiService::FeedbackHotwash,
                at: at()
            }
        ]
    );
}

#[test]
fn set_up_rules_are_all_reported() {
    let mut bad = spec();
    bad.learner_id = String::new();
    bad.patient.age = 200;
    bad.ai.temperature = Some(3.0);
    bad.time_limit_seconds = Some(0);
    assert_eq!(bad.validate().unwrap_err().len(), 4);
    assert!(spec().validate().is_ok());
}

#[test]
fn a_session_ends_once_and_a_failed_feedback_is_only_retried() {
    let end = || SimulationCommand::End {
        reason: EndReason::Learner,
        at: at(),
    };
    let failed_feedback = state_of(&run(vec![
        create(),
        result(1, AiService::PatientInitial),
        end(),
        failure(2),
    ]));
    assert_eq!(failed_feedback.status(), Some(SimulationStatus::Failed));
    assert_eq!(
        failed_feedback.decide(end()),
        Err(SimulationError::InvalidTransition {
            from: SimulationStatus::Failed,
            to: SimulationStatus::Ended
        })
    );
    let retried = failed_feedback
        .decide(SimulationCommand::RetryAiCall { at: at() })
        .unwrap();
    assert_eq!(
        retried,
        vec![SimulationEvent::AiCallRequested {
            call_id: call_id(SIM, 3),
            service: AiService::FeedbackHotwash,
            at: at()
        }]
    );
}

#[test]
fn an_answer_after_the_session_moved_on_is_audited_without_a_message() {
    let ended = state_of(&run(vec![
        create(),
        result(1, AiService::PatientInitial),
        post("hello"),
        SimulationCommand::End {
            reason: EndReason::Learner,
            at: at(),
        },
    ]));
    let late = ended.decide(result(2, AiService::PatientReply)).unwrap();
    assert_eq!(
        late,
        vec![SimulationEvent::AiCallCompleted {
            call: record(2, AiService::PatientReply),
            at: at()
        }]
    );
    let mut after = ended.clone();
    for event in late {
        after.apply(event);
    }
    assert_eq!(after.messages().len(), 2, "no message from the late answer");
    assert_eq!(
        after.pending().map(|p| p.service),
        Some(AiService::FeedbackHotwash),
        "the feedback is still awaited"
    );
    assert_eq!(after.decide(result(2, AiService::PatientReply)), Ok(vec![]));
}

#[test]
fn retrying_a_patient_call_after_the_time_limit_ends_the_session_instead() {
    let failed = state_of(&run(vec![
        create(),
        result(1, AiService::PatientInitial),
        post("hello"),
        failure(2),
    ]));
    let late = at() + chrono::Duration::hours(1);
    let events = failed
        .decide(SimulationCommand::RetryAiCall { at: late })
        .unwrap();
    assert!(matches!(
        events[0],
        SimulationEvent::Ended {
            reason: EndReason::TimeLimit,
            ..
        }
    ));
    assert!(matches!(
        events[1],
        SimulationEvent::AiCallRequested {
            service: AiService::FeedbackHotwash,
            ..
        }
    ));
}
