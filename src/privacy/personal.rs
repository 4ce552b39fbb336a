//! Which fields of which events (and snapshots) are personal data, and whose.
//!
//! A simulation's personal data is its learner's: the learner id, the patient profile the
//! learner was given, every message, every AI call's request and answer, and the feedback.
//! The subject is named once, by `SimulationCreated`; later events of the stream belong to the
//! same subject.

use serde_json::Value;

/// The personal fields of one aggregate type.
pub(super) struct Rules {
    /// The event that names the subject, and the path (from the payload) of the natural id.
    pub(super) subject: (&'static str, &'static [&'static str], &'static str),
    /// Per event type, the paths (from the payload) of personal subtrees; `*` spans an array.
    pub(super) events: &'static [(&'static str, &'static [&'static [&'static str]])],
    /// The paths of personal subtrees in the aggregate's snapshot.
    pub(super) snapshot: &'static [&'static [&'static str]],
}

const SIMULATION: Rules = Rules {
    subject: (
        "SimulationCreated",
        &["Created", "spec", "learner_id"],
        "learner",
    ),
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
};

/// The rules of `aggregate_type`, if it holds personal data.
pub(super) fn rules(aggregate_type: &str) -> Option<&'static Rules> {
    (aggregate_type == "Simulation").then_some(&SIMULATION)
}

/// Whether events of `aggregate_type` may hold sealed values (readers open only those).
pub(super) fn holds_personal_data(aggregate_type: &str) -> bool {
    rules(aggregate_type).is_some()
}

impl Rules {
    /// The subject (`<kind>:<natural id>`) an event of type `event_type` names, if it does.
    pub(super) fn subject_of(&self, event_type: &str, payload: &Value) -> Option<String> {
        let (naming, path, kind) = self.subject;
        if event_type != naming {
            return None;
        }
        let natural = path.iter().try_fold(payload, |value, key| value.get(key))?;
        natural.as_str().map(|id| format!("{kind}:{id}"))
    }

    /// The personal paths of an event type.
    pub(super) fn event_paths(&self, event_type: &str) -> &'static [&'static [&'static str]] {
        self.events
            .iter()
            .find(|(name, _)| *name == event_type)
            .map_or(&[], |(_, paths)| paths)
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
