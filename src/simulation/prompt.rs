//! What the AI is asked: a Chat Completions body built from ordered sections — scenario,
//! patient persona, the conversation so far, instructions — with a strict JSON schema for
//! the answer; and the answer read back against that schema.

use chronicle_aggregates::simulation::{
    AiOutput, AiService, Feedback, Role, RubricScore, Simulation, SimulationSpec,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The rubric the feedback scores, in order.
pub const RUBRIC: [&str; 4] = [
    "history taking",
    "communication",
    "clinical reasoning",
    "safety netting",
];

/// The Chat Completions body for the simulation's pending `service` call.
pub fn request(simulation: &Simulation, spec: &SimulationSpec, service: AiService) -> Value {
    let messages = match service {
        AiService::PatientInitial | AiService::PatientReply => patient_messages(simulation, spec),
        AiService::FeedbackHotwash => feedback_messages(simulation, spec),
    };
    let mut body = json!({
        "model": spec.ai.model,
        "messages": messages,
        "response_format": { "type": "json_schema", "json_schema": {
            "name": service.schema(), "strict": true, "schema": schema(service) } },
    });
    if let Some(temperature) = spec.ai.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(max_tokens) = spec.ai.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

fn patient_messages(simulation: &Simulation, spec: &SimulationSpec) -> Vec<Value> {
    let scenario = &spec.scenario;
    let patient = &spec.patient;
    let system = [
        format!(
            "## Scenario\nChief complaint: {}. Underlying condition (never name it): {}. \
             Difficulty: {}.",
            scenario.chief_complaint,
            scenario.diagnosis,
            scenario.difficulty.as_str()
        ),
        format!(
            "## Patient persona\nYou are {}, {} years old, {}. History: {}",
            patient.name, patient.age, patient.sex, patient.history
        ),
        "## Instructions\nYou are the patient in a clinical training consultation with a \
         trainee clinician. Stay in character, answer only what you are asked, in plain words, \
         and never reveal or name the diagnosis. Answer as JSON: `reply` (what you say) and \
         `emotion` (one word)."
            .to_owned(),
    ]
    .join("\n\n");
    let mut messages = vec![json!({ "role": "system", "content": system })];
    if simulation.messages().is_empty() {
        messages.push(json!({ "role": "user",
            "content": "[The trainee enters the room. Greet them and say why you came.]" }));
    }
    messages.extend(simulation.messages().iter().map(|m| {
        let role = match m.role {
            Role::Learner => "user",
            Role::Patient => "assistant",
        };
        json!({ "role": role, "content": m.text })
    }));
    messages
}

fn feedback_messages(simulation: &Simulation, spec: &SimulationSpec) -> Vec<Value> {
    let system = format!(
        "## Scenario\nChief complaint: {}. Diagnosis: {}. Difficulty: {}.\n\n\
         ## Instructions\nYou are a clinical educator giving a hotwash after a training \
         consultation. From the transcript, list what went well, what was missed, and score \
         each rubric item from 0 to 5 with a short comment. Rubric: {}.",
        spec.scenario.chief_complaint,
        spec.scenario.diagnosis,
        spec.scenario.difficulty.as_str(),
        RUBRIC.join(", ")
    );
    let transcript: Vec<String> = simulation
        .messages()
        .iter()
        .map(|m| format!("{} {}: {}", m.seq, m.role.as_str(), m.text))
        .collect();
    vec![
        json!({ "role": "system", "content": system }),
        json!({ "role": "user", "content": format!("## Transcript\n{}", transcript.join("\n")) }),
    ]
}

/// The strict JSON schema of `service`'s answer.
pub fn schema(service: AiService) -> Value {
    match service {
        AiService::PatientInitial | AiService::PatientReply => json!({
            "type": "object", "additionalProperties": false,
            "required": ["reply", "emotion"],
            "properties": { "reply": { "type": "string" }, "emotion": { "type": "string" } },
        }),
        AiService::FeedbackHotwash => json!({
            "type": "object", "additionalProperties": false,
            "required": ["went_well", "missed", "scores"],
            "properties": {
                "went_well": { "type": "array", "items": { "type": "string" } },
                "missed": { "type": "array", "items": { "type": "string" } },
                "scores": { "type": "array", "items": {
                    "type": "object", "additionalProperties": false,
                    "required": ["item", "score", "comment"],
                    "properties": {
                        "item": { "type": "string" },
                        "score": { "type": "integer", "minimum": 0, "maximum": 5 },
                        "comment": { "type": "string" } } } },
            },
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatientReply {
    reply: String,
    #[serde(rename = "emotion")]
    _emotion: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hotwash {
    went_well: Vec<String>,
    missed: Vec<String>,
    scores: Vec<Score>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Score {
    item: String,
    score: u8,
    comment: String,
}

/// Reads an answer's content against `service`'s schema: the structured output as JSON, and
/// what it means.
///
/// # Errors
/// The content is not JSON of the schema's shape (or a score is above 5, or a reply empty).
pub fn parse(service: AiService, content: &str) -> Result<(Value, AiOutput), String> {
    let value: Value =
        serde_json::from_str(content).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if holds_nul(&value) {
        // The event store cannot hold it, and no clinician needs it.
        return Err("the answer holds a NUL character".into());
    }
    let output = match service {
        AiService::PatientInitial | AiService::PatientReply => {
            let reply: PatientReply = serde_json::from_value(value.clone())
                .map_err(|e| format!("the answer does not fit `patient_reply`: {e}"))?;
            if reply.reply.trim().is_empty() {
                return Err("the patient's reply is empty".into());
            }
            AiOutput::PatientLine(reply.reply)
        }
        AiService::FeedbackHotwash => {
            let hotwash: Hotwash = serde_json::from_value(value.clone())
                .map_err(|e| format!("the answer does not fit `hotwash`: {e}"))?;
            if hotwash.scores.iter().any(|s| s.score > 5) {
                return Err("a rubric score is above 5".into());
            }
            AiOutput::Feedback(Feedback {
                went_well: hotwash.went_well,
                missed: hotwash.missed,
                scores: hotwash
                    .scores
                    .into_iter()
                    .map(|s| RubricScore {
                        item: s.item,
                        score: s.score,
                        comment: s.comment,
                    })
                    .collect(),
            })
        }
    };
    Ok((value, output))
}

/// True when some string in `value` holds U+0000.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(key, field)| key.contains('\0') || holds_nul(field)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use chronicle_aggregates::simulation::{AiOutput, AiService};

    use super::parse;

    #[test]
    fn answers_are_read_against_their_schema() {
        let (_, output) = parse(
            AiService::PatientReply,
            r#"{"reply":"It hurts here","emotion":"worried"}"#,
        )
        .unwrap();
        assert_eq!(output, AiOutput::PatientLine("It hurts here".into()));
        for bad in [
            "not json",
            r#"{"reply":"x"}"#,
            r#"{"reply":"","emotion":"calm"}"#,
            r#"{"reply":"x","emotion":"calm","extra":1}"#,
            r#"{"reply":"x\u0000","emotion":"calm"}"#,
        ] {
            assert!(parse(AiService::PatientReply, bad).is_err(), "{bad}");
        }
        let hotwash =
            r#"{"went_well":[],"missed":[],"scores":[{"item":"a","score":6,"comment":""}]}"#;
        assert!(parse(AiService::FeedbackHotwash, hotwash).is_err());
    }
}
