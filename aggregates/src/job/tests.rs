use std::collections::{BTreeSet, HashSet, VecDeque};

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::Aggregate;
use uuid::Uuid;

use super::{JobStatus, TaskOutcome, TaskStatus, MAX_RETRIES};
use crate::transfer::{
    TaskSpec, TransferCommand, TransferError, TransferEvent, TransferJob, TransferSpec,
};

const JOB: Uuid = Uuid::from_u128(11);

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

fn task(n: u32) -> TaskSpec {
    TaskSpec {
        patient_id: format!("P{n}"),
        study_instance_uid: format!("1.2.3.{n}"),
        series_instance_uids: Vec::new(),
        pseudonym: None,
    }
}

fn spec(tasks: u32) -> TransferSpec {
    TransferSpec {
        source: "clinical".into(),
        destination: "research".into(),
        pseudonymize: true,
        pseudonym: None,
        protocol: None,
        urgent: false,
        tasks: (1..=tasks).map(task).collect(),
    }
}

fn create(tasks: u32, trusted: bool) -> TransferCommand {
    TransferCommand::Create {
        job_id: JOB,
        owner: "client-1".into(),
        spec: spec(tasks),
        trusted,
        at: at(),
    }
}

fn start(task: u32) -> TransferCommand {
    TransferCommand::StartTask { task, at: at() }
}

fn finish(task: u32, outcome: TaskOutcome) -> TransferCommand {
    TransferCommand::FinishTask {
        task,
        run: None,
        outcome,
        message: None,
        count: 1,
        output: (),
        at: at(),
    }
}

fn transient(task: u32) -> TransferCommand {
    TransferCommand::FailTransiently {
        task,
        run: None,
        reason: "source unreachable".into(),
        retry_at: at(),
        at: at(),
    }
}

/// Runs `commands` from nothing; panics on a refusal.
fn run(commands: Vec<TransferCommand>) -> TransferJob {
    let mut job = TransferJob::default();
    for command in commands {
        let events = job
            .decide(command.clone())
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        for event in events {
            job.apply(event);
        }
    }
    job
}

/// Every command the job can be given, for a job of `tasks` tasks.
fn every_command(tasks: u32) -> Vec<TransferCommand> {
    let mut commands = vec![
        TransferCommand::Verify {
            by: "admin".into(),
            at: at(),
        },
        TransferCommand::Cancel { at: at() },
        TransferCommand::Resume { at: at() },
        TransferCommand::RetryFailed { at: at() },
        TransferCommand::Restart {
            by: "admin".into(),
            at: at(),
        },
    ];
    for n in 1..=tasks {
        commands.push(start(n));
        commands.push(transient(n));
        commands.push(TransferCommand::InterruptTask {
            task: n,
            run: None,
            reason: "stopped".into(),
            at: at(),
        });
        for outcome in [
            TaskOutcome::Success,
            TaskOutcome::Warning,
            TaskOutcome::Failure,
            TaskOutcome::Canceled,
        ] {
            commands.push(finish(n, outcome));
        }
    }
    commands
}

/// Status changes seen, as (from, to).
type Changes = BTreeSet<(&'static str, &'static str)>;

/// Explores every state a two-task job can reach (trusted or not) through every command.
/// Returns the job and task status changes seen.
fn explore() -> (Changes, Changes) {
    let mut jobs = BTreeSet::new();
    let mut tasks = BTreeSet::new();
    let mut seen = HashSet::new();
    let mut queue: VecDeque<TransferJob> =
        [run(vec![create(2, true)]), run(vec![create(2, false)])]
            .into_iter()
            .collect();
    while let Some(job) = queue.pop_front() {
        // Runs only grow (they tell reports apart): the state space is the rest.
        let mut key = job.clone();
        for task in &mut key.tasks {
            task.runs = 0;
        }
        if !seen.insert(serde_json::to_string(&key).unwrap()) {
            continue;
        }
        for command in every_command(2) {
            let events = match job.decide(command.clone()) {
                Ok(events) => events,
                Err(e @ TransferError::InvalidTransition { .. }) => {
                    panic!("the rule derived a change the table forbids: {command:?}: {e}")
                }
                Err(_) => continue,
            };
            let mut after = job.clone();
            for event in events {
                if let TransferEvent::StatusChanged { from, to, .. } = event {
                    jobs.insert((from.as_str(), to.as_str()));
                }
                after.apply(event);
            }
            for (before, now) in job.tasks().iter().zip(after.tasks()) {
                if before.status != now.status {
                    assert!(
                        before.status.can_transition_to(now.status),
                        "{command:?}: task {:?} -> {:?}",
                        before.status,
                        now.status
                    );
                    tasks.insert((before.status.as_str(), now.status.as_str()));
                }
            }
            assert_eq!(after.status(), Some(after.derived()), "{command:?}");
            queue.push_back(after);
        }
    }
    (jobs, tasks)
}

#[test]
fn every_job_and_task_transition_in_the_tables_happens_and_no_other_does() {
    let (jobs, tasks) = explore();
    for from in JobStatus::ALL {
        for to in JobStatus::ALL.into_iter().filter(|to| *to != from) {
            assert_eq!(
                jobs.contains(&(from.as_str(), to.as_str())),
                from.can_transition_to(to),
                "job {from:?} -> {to:?}"
            );
        }
    }
    for from in TaskStatus::ALL {
        for to in TaskStatus::ALL.into_iter().filter(|to| *to != from) {
            assert_eq!(
                tasks.contains(&(from.as_str(), to.as_str())),
                from.can_transition_to(to),
                "task {from:?} -> {to:?}"
            );
        }
    }
}

#[test]
fn the_job_status_rule_covers_every_case() {
    use JobStatus as J;
    use TaskStatus::{Canceled, Failure, InProgress, Pending, Success, Warning};
    let cases: &[(bool, bool, &[TaskStatus], JobStatus)] = &[
        (false, false, &[Pending], J::Unverified),
        (false, true, &[Canceled], J::Canceled),
        (true, false, &[], J::Success),
        (true, false, &[Pending, Pending], J::Pending),
        (true, false, &[Pending, InProgress], J::InProgress),
        (true, false, &[Pending, Success], J::InProgress),
        (true, false, &[InProgress, Failure], J::InProgress),
        (true, true, &[InProgress, Canceled], J::Canceling),
        (true, true, &[Success, Canceled], J::Canceled),
        (true, true, &[Canceled], J::Canceled),
        (true, false, &[Success, Success], J::Success),
        (true, false, &[Success, Failure], J::Failure),
        (true, false, &[Warning, Failure, Canceled], J::Failure),
        (true, false, &[Success, Warning], J::Warning),
        (true, false, &[Warning], J::Warning),
        (true, false, &[Success, Canceled], J::Warning),
        (true, false, &[Canceled, Canceled], J::Canceled),
    ];
    for (verified, cancel, tasks, expected) in cases {
        assert_eq!(
            JobStatus::derive(*verified, *cancel, tasks.iter().copied()),
            *expected,
            "verified {verified}, cancel {cancel}, tasks {tasks:?}"
        );
    }
}

#[test]
fn an_untrusted_owners_job_runs_only_after_an_admin_verifies_it() {
    let job = run(vec![create(1, false)]);
    assert_eq!(job.status(), Some(JobStatus::Unverified));
    assert!(matches!(
        job.decide(start(1)),
        Err(TransferError::JobRefuses { .. })
    ));
    let job = run(vec![
        create(1, false),
        TransferCommand::Verify {
            by: "admin".into(),
            at: at(),
        },
        start(1),
        finish(1, TaskOutcome::Success),
    ]);
    assert_eq!(job.status(), Some(JobStatus::Success));
}

#[test]
fn transient_failures_are_retried_three_times_then_the_task_fails() {
    let mut commands = vec![create(1, true)];
    for _ in 0..MAX_RETRIES {
        commands.extend([start(1), transient(1)]);
    }
    let job = run(commands.clone());
    assert_eq!(job.tasks()[0].status, TaskStatus::Pending);
    assert_eq!(job.tasks()[0].attempts, MAX_RETRIES);
    commands.extend([start(1), transient(1)]);
    let job = run(commands);
    assert_eq!(job.tasks()[0].status, TaskStatus::Failure);
    assert_eq!(job.status(), Some(JobStatus::Failure));
}

#[test]
fn an_interrupted_task_waits_again_without_spending_an_attempt() {
    let interrupt = TransferCommand::InterruptTask {
        task: 1,
        run: None,
        reason: "runner stopped".into(),
        at: at(),
    };
    let job = run(vec![create(1, true), start(1), interrupt.clone(), start(1)]);
    assert_eq!(job.tasks()[0].attempts, 1);
    let job = run(vec![create(1, true), start(1), interrupt]);
    assert_eq!(job.status(), Some(JobStatus::Pending));
}

#[test]
fn cancel_stops_pending_tasks_at_once_and_running_ones_when_they_report() {
    let cancel = TransferCommand::Cancel { at: at() };
    let job = run(vec![
        create(3, true),
        start(1),
        finish(1, TaskOutcome::Success),
        start(2),
        cancel,
    ]);
    assert_eq!(job.status(), Some(JobStatus::Canceling));
    assert_eq!(job.tasks()[2].status, TaskStatus::Canceled);
    assert!(matches!(
        job.decide(start(3)),
        Err(TransferError::InvalidTaskTransition { .. } | TransferError::JobRefuses { .. })
    ));
    let mut job = job;
    for event in job.decide(finish(2, TaskOutcome::Canceled)).unwrap() {
        job.apply(event);
    }
    assert_eq!(job.status(), Some(JobStatus::Canceled));
    for event in job.decide(TransferCommand::Resume { at: at() }).unwrap() {
        job.apply(event);
    }
    let statuses: Vec<_> = job.tasks().iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        [
            TaskStatus::Success,
            TaskStatus::Pending,
            TaskStatus::Pending
        ]
    );
    assert_eq!(job.status(), Some(JobStatus::InProgress));
}

#[test]
fn a_task_is_canceled_only_when_its_job_is_canceling() {
    let job = run(vec![create(1, true), start(1)]);
    assert!(matches!(
        job.decide(finish(1, TaskOutcome::Canceled)),
        Err(TransferError::JobRefuses { .. })
    ));
}

#[test]
fn retry_failed_requeues_only_the_failed_tasks_and_restart_requeues_all() {
    let job = run(vec![
        create(2, true),
        start(1),
        finish(1, TaskOutcome::Success),
        start(2),
        finish(2, TaskOutcome::Failure),
    ]);
    assert_eq!(job.status(), Some(JobStatus::Failure));
    let events = job
        .decide(TransferCommand::RetryFailed { at: at() })
        .unwrap();
    assert!(matches!(&events[0], TransferEvent::TasksRequeued { tasks, .. } if tasks == &[2]));
    let restart = TransferCommand::Restart {
        by: "admin".into(),
        at: at(),
    };
    let events = job.decide(restart).unwrap();
    assert!(matches!(&events[0], TransferEvent::TasksRequeued { tasks, .. } if tasks == &[1, 2]));
    assert!(matches!(
        events.last(),
        Some(TransferEvent::StatusChanged {
            to: JobStatus::Pending,
            ..
        })
    ));
}

#[test]
fn a_repeated_finish_records_nothing_and_a_finished_task_cannot_change_outcome() {
    let job = run(vec![
        create(1, true),
        start(1),
        finish(1, TaskOutcome::Success),
    ]);
    assert_eq!(job.decide(finish(1, TaskOutcome::Success)), Ok(Vec::new()));
    assert!(matches!(
        job.decide(finish(1, TaskOutcome::Failure)),
        Err(TransferError::InvalidTaskTransition { .. })
    ));
    assert_eq!(
        job.decide(transient(9)),
        Err(TransferError::NoSuchTask { task: 9 })
    );
}

#[test]
fn every_broken_rule_of_a_job_is_reported_with_its_task_number() {
    let mut bad = spec(2);
    bad.destination = "clinical".into();
    bad.tasks[1].study_instance_uid = "1.02.x".into();
    bad.tasks[1].patient_id = " ".into();
    let refused = TransferJob::default().decide(TransferCommand::Create {
        job_id: JOB,
        owner: "o".into(),
        spec: bad,
        trusted: true,
        at: at(),
    });
    let Err(TransferError::InvalidSpec { problems }) = refused else {
        panic!("{refused:?}");
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[1].starts_with("task 2: PatientID"), "{problems:?}");
    assert!(
        problems[2].starts_with("task 2: StudyInstanceUID"),
        "{problems:?}"
    );
}

#[test]
fn uids_follow_the_dicom_rules() {
    for good in ["1.2.840.10008.1.2", "0.1", "2.25.1234567890"] {
        assert!(crate::transfer::is_uid(good), "{good}");
    }
    let long = format!("1.{}", "2".repeat(64));
    for bad in ["", "1..2", "1.02", "1.2.", "a.b", long.as_str()] {
        assert!(!crate::transfer::is_uid(bad), "{bad}");
    }
}

#[test]
fn a_late_report_of_an_earlier_run_is_refused() {
    let interrupt = TransferCommand::InterruptTask {
        task: 1,
        run: Some(1),
        reason: "role lost".into(),
        at: at(),
    };
    // Run 1 was cut off and run 2 started: run 1's late outcome must not end run 2.
    let job = run(vec![create(1, true), start(1), interrupt.clone(), start(1)]);
    assert_eq!(job.tasks()[0].runs, 2);
    let late = TransferCommand::FinishTask {
        task: 1,
        run: Some(1),
        outcome: TaskOutcome::Success,
        message: None,
        count: 1,
        output: (),
        at: at(),
    };
    assert_eq!(
        job.decide(late),
        Err(TransferError::StaleRun { task: 1, run: 1 })
    );
    assert_eq!(
        job.decide(interrupt),
        Err(TransferError::StaleRun { task: 1, run: 1 })
    );
}
