//! Which fields of which events (and snapshots) are personal data, and whose.
//!
//! A simulation's personal data is its learner's: the learner id, the patient profile the
//! learner was given, every message, every AI call's request and answer, and the feedback.
//! The subject is named once, by `SimulationCreated`; later events of the stream belong to the
//! same subject.

use serde_json::Value;

/// Elements of an array that each belong to their own subject (a transfer job's tasks).
pub(super) struct Elements {
    /// The path of the array.
    pub(super) array: &'static [&'static str],
    /// The element field holding the subject's natural id, and the subject's kind.
    pub(super) subject: (&'static str, &'static str),
    /// The personal fields of an element.
    pub(super) fields: &'static [&'static str],
}

impl Elements {
    /// The subject (`<kind>:<natural id>`) of an element, if it names one in the clear.
    pub(super) fn subject_of(&self, element: &Value) -> Option<String> {
        let (field, kind) = self.subject;
        let id = element.get(field)?.as_str()?;
        Some(format!("{kind}:{id}"))
    }
}

/// The personal fields of one aggregate type.
pub(super) struct Rules {
    /// The event that names the aggregate's one subject, the path (from the payload) of the
    /// natural id, and the subject's kind.
    pub(super) subject: Option<(&'static str, &'static [&'static str], &'static str)>,
    /// Per event type, the paths (from the payload) of personal subtrees; `*` spans an array.
    pub(super) events: &'static [(&'static str, &'static [&'static [&'static str]])],
    /// The paths of personal subtrees in the aggregate's snapshot.
    pub(super) snapshot: &'static [&'static [&'static str]],
    /// Per event type, arrays whose elements have subjects of their own.
    pub(super) event_elements: &'static [(&'static str, Elements)],
    /// The same in the snapshot.
    pub(super) snapshot_elements: &'static [Elements],
}

const SIMULATION: Rules = Rules {
    subject: Some((
        "SimulationCreated",
        &["Created", "spec", "learner_id"],
        "learner",
    )),
    events: &[
        (
            "SimulationCreated",
            &[
                &["Created", "spec", "learner_id"],
                &["Created", "spec", "patient"],
            ],
        ),
        (
            "SimulationMessagePosted",
            &[&["MessagePosted", "message", "text"]],
        ),
        (
            "SimulationAiCallCompleted",
            &[
                &["AiCallCompleted", "call", "request"],
                &["AiCallCompleted", "call", "response_text"],
                &["AiCallCompleted", "call", "output"],
            ],
        ),
        (
            "SimulationAiCallFailed",
            &[&["AiCallFailed", "failure", "request"]],
        ),
        (
            "SimulationFeedbackRecorded",
            &[&["FeedbackRecorded", "feedback"]],
        ),
    ],
    snapshot: &[
        &["spec", "learner_id"],
        &["spec", "patient"],
        &["messages", "*", "text"],
        &["feedback"],
    ],
    event_elements: &[],
    snapshot_elements: &[],
};

const TASK_FIELDS: [&str; 2] = ["patient_id", "pseudonym"];

const TRANSFER_JOB: Rules = Rules {
    subject: None,
    events: &[],
    snapshot: &[],
    event_elements: &[(
        "TransferJobCreated",
        Elements {
            array: &["Created", "spec", "tasks"],
            subject: ("patient_id", "patient"),
            fields: &TASK_FIELDS,
        },
    )],
    snapshot_elements: &[Elements {
        array: &["spec", "tasks"],
        subject: ("patient_id", "patient"),
        fields: &TASK_FIELDS,
    }],
};

/// The rules of `aggregate_type`, if it holds personal data.
pub(super) fn rules(aggregate_type: &str) -> Option<&'static Rules> {
    match aggregate_type {
        "Simulation" => Some(&SIMULATION),
        "TransferJob" => Some(&TRANSFER_JOB),
        _ => None,
    }
}

/// Whether events of `aggregate_type` may hold sealed values (only those are sealed and
/// opened).
pub fn holds_personal_data(aggregate_type: &str) -> bool {
    rules(aggregate_type).is_some()
}

impl Rules {
    /// The subject (`<kind>:<natural id>`) an event of type `event_type` names, if it does.
    pub(super) fn subject_of(&self, event_type: &str, payload: &Value) -> Option<String> {
        let (naming, path, kind) = self.subject?;
        if event_type != naming {
            return None;
        }
        let natural = path.iter().try_fold(payload, |value, key| value.get(key))?;
        natural.as_str().map(|id| format!("{kind}:{id}"))
    }

    /// The arrays of an event type whose elements have subjects of their own.
    pub(super) fn event_elements(
        &self,
        event_type: &str,
    ) -> impl Iterator<Item = &'static Elements> + '_ {
        let elements: &'static [(&'static str, Elements)] = self.event_elements;
        let event_type = event_type.to_owned();
        elements
            .iter()
            .filter(move |(name, _)| *name == event_type)
            .map(|(_, elements)| elements)
    }

    /// The personal paths of an event type.
    pub(super) fn event_paths(&self, event_type: &str) -> &'static [&'static [&'static str]] {
        self.events
            .iter()
            .find(|(name, _)| *name == event_type)
            .map_or(&[], |(_, paths)| paths)
    }
}

/// The elements of the array at `path` in `value`.
pub(super) fn elements_at<'v>(value: &'v mut Value, path: &[&str]) -> &'v mut [Value] {
    let found = path
        .iter()
        .try_fold(value, |inner, key| inner.get_mut(*key))
        .and_then(Value::as_array_mut);
    match found {
        Some(items) => items.as_mut_slice(),
        None => &mut [],
    }
}

/// Calls `change` on every scalar leaf below `path` in `value`.
pub(super) fn for_each_leaf(value: &mut Value, path: &[&str], change: &mut impl FnMut(&mut Value)) {
    match path.split_first() {
        None => leaves(value, change),
        Some((&"*", rest)) => {
            if let Value::Array(items) = value {
                for item in items {
                    for_each_leaf(item, rest, change);
                }
            }
        }
        Some((key, rest)) => {
            if let Some(inner) = value.get_mut(*key) {
                for_each_leaf(inner, rest, change);
            }
        }
    }
}

fn leaves(value: &mut Value, change: &mut impl FnMut(&mut Value)) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|item| leaves(item, change)),
        Value::Object(fields) => fields.values_mut().for_each(|field| leaves(field, change)),
        Value::Null => {}
        Value::Bool(_) | Value::Number(_) | Value::String(_) => change(value),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_creation_names_the_learner_and_leaves_below_paths_are_visited() {
        let created = json!({ "Created": { "spec": { "learner_id": "l-1",
            "patient": { "name": "Ann", "age": 40, "tags": ["a", null] } } } });
        assert_eq!(
            SIMULATION.subject_of("SimulationCreated", &created),
            Some("learner:l-1".into())
        );
        assert_eq!(SIMULATION.subject_of("SimulationEnded", &created), None);
        let mut value = created;
        let mut seen = Vec::new();
        for path in SIMULATION.event_paths("SimulationCreated") {
            for_each_leaf(&mut value, path, &mut |leaf| seen.push(leaf.clone()));
        }
        let mut seen: Vec<String> = seen.iter().map(Value::to_string).collect();
        seen.sort();
        assert_eq!(seen, ["\"Ann\"", "\"a\"", "\"l-1\"", "40"]);
        let mut snapshot = json!({ "messages": [{ "text": "hi", "seq": 1 }, { "text": "yo" }] });
        let mut texts = Vec::new();
        for_each_leaf(&mut snapshot, &["messages", "*", "text"], &mut |leaf| {
            texts.push(leaf.clone())
        });
        assert_eq!(texts, [json!("hi"), json!("yo")]);
    }
}
