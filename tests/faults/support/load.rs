//! Mixed load from many clients: submissions, cancellations, flushes and simulation
//! conversations, each command with its own idempotency key, journaled with its answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::{Answer, Client};

const SUBMIT: &str = "mutation($input: SubmitRequestInput!, $key: String) {
    submitRequest(input: $input, idempotencyKey: $key) { requestId batchId customId } }";
const CANCEL: &str = "mutation($id: UUID!, $key: String) {
    cancelRequest(requestId: $id, idempotencyKey: $key) { aggregateType aggregateId version } }";
const FLUSH: &str = "mutation($id: UUID!, $key: String) {
    flushBatch(batchId: $id, idempotencyKey: $key) { aggregateType aggregateId version } }";
const CREATE_SIMULATION: &str = "mutation($input: CreateSimulationInput!, $key: String) {
    createSimulation(input: $input, idempotencyKey: $key) { aggregateType aggregateId version } }";
const POST_MESSAGE: &str = "mutation($id: UUID!, $text: String!, $key: String) {
    postMessage(simulationId: $id, text: $text, idempotencyKey: $key) {
        aggregateType aggregateId version } }";
const END_SIMULATION: &str = "mutation($id: UUID!, $key: String) {
    endSimulation(simulationId: $id, idempotencyKey: $key) { aggregateType aggregateId version } }";

/// How long a client keeps resending one command before it counts it as unanswered.
const PATIENCE: Duration = Duration::from_secs(90);

/// Messages a client posts to one simulation before it ends it.
const MESSAGES_PER_SIMULATION: usize = 3;

/// What a journaled command was.
#[derive(Debug, Clone)]
pub enum Kind {
    Submit { custom_id: String },
    Cancel { request_id: String },
    Flush { batch_id: String },
    CreateSimulation,
    PostMessage { simulation_id: String, text: String },
    EndSimulation { simulation_id: String },
}

/// One command and how it ended (`None`: never answered within the patience).
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: Kind,
    pub answer: Option<Answer>,
    /// Why it had to be sent again before that (transport failures, retryable codes).
    pub resent_for: Vec<String>,
}

/// What the load sends.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Concurrent clients.
    pub clients: usize,
    /// Delivery inputs, used in turn by each client's submissions.
    pub deliveries: Vec<Value>,
    /// Whether clients also hold simulation conversations.
    pub simulations: bool,
    /// How long each client waits between commands (zero: as fast as answers come).
    pub pause: Duration,
}

/// Load running until stopped.
pub struct Load {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    journal: Arc<Mutex<Vec<Record>>>,
}

impl Load {
    /// Starts `mix.clients` clients against `client`'s server.
    pub fn start(client: &Client, mix: &Mix) -> Self {
        let stop = CancellationToken::new();
        let journal = Arc::default();
        let mut tasks = JoinSet::new();
        for index in 0..mix.clients {
            let worker = Worker {
                index,
                client: client.clone(),
                mix: mix.clone(),
                journal: Arc::clone(&journal),
                random: StdRng::seed_from_u64(index as u64),
                sent: 0,
                requests: Vec::new(),
                batch: None,
                simulation: None,
            };
            tasks.spawn(worker.run(stop.clone()));
        }
        Self {
            stop,
            tasks,
            journal,
        }
    }

    /// Commands journaled so far.
    pub fn count(&self) -> usize {
        self.journal.lock().expect("journal").len()
    }

    /// Stops the clients once their command in flight is answered; the journal.
    pub async fn stop(mut self) -> Vec<Record> {
        self.stop.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            joined.expect("client task");
        }
        std::mem::take(&mut *self.journal.lock().expect("journal"))
    }
}

struct Worker {
    index: usize,
    client: Client,
    mix: Mix,
    journal: Arc<Mutex<Vec<Record>>>,
    random: StdRng,
    sent: usize,
    requests: Vec<String>,
    batch: Option<String>,
    simulation: Option<(String, usize)>,
}

impl Worker {
    async fn run(mut self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            tokio::time::sleep(self.mix.pause).await;
            let roll = self.random.random_range(0..100);
            match roll {
                0..10 if !self.requests.is_empty() => self.cancel().await,
                10..18 if self.batch.is_some() => self.flush().await,
                18..45 if self.mix.simulations => self.converse().await,
                _ => self.submit().await,
            }
        }
    }

    /// Sends one command with a fresh idempotency key and journals it.
    async fn send(
        &mut self,
        kind: Kind,
        query: &str,
        field: &str,
        mut variables: Value,
    ) -> Option<Answer> {
        self.sent += 1;
        variables["key"] = json!(format!("client-{}-command-{}", self.index, self.sent));
        let (answer, resent_for) = self
            .client
            .command(query, field, &variables, PATIENCE)
            .await;
        self.journal.lock().expect("journal").push(Record {
            kind,
            answer: answer.clone(),
            resent_for,
        });
        answer
    }

    async fn submit(&mut self) {
        let custom_id = format!("c{}-{}", self.index, self.sent + 1);
        let delivery = self.mix.deliveries[self.sent % self.mix.deliveries.len()].clone();
        let input = json!({
            "customId": custom_id, "endpoint": "/v1/chat/completions",
            "model": format!("model-{}", self.index % 4), "delivery": delivery,
            "body": { "messages": [{ "role": "user", "content": format!("question {custom_id}") }] },
        });
        let kind = Kind::Submit { custom_id };
        if let Some(Answer::Applied(data)) = self
            .send(kind, SUBMIT, "submitRequest", json!({ "input": input }))
            .await
        {
            self.requests
                .push(data["requestId"].as_str().expect("request id").to_owned());
            self.batch = data["batchId"].as_str().map(str::to_owned);
        }
    }

    async fn cancel(&mut self) {
        let pick = self.random.random_range(0..self.requests.len());
        let request_id = self.requests.swap_remove(pick);
        let variables = json!({ "id": request_id });
        self.send(
            Kind::Cancel { request_id },
            CANCEL,
            "cancelRequest",
            variables,
        )
        .await;
    }

    async fn flush(&mut self) {
        let Some(batch_id) = self.batch.take() else {
            return;
        };
        let variables = json!({ "id": batch_id });
        self.send(Kind::Flush { batch_id }, FLUSH, "flushBatch", variables)
            .await;
    }

    /// One step of a conversation: start one, post the next message, or end it.
    async fn converse(&mut self) {
        match self.simulation.clone() {
            None => {
                let input = simulation_input(&format!("learner-{}", self.index));
                let answer = self
                    .send(
                        Kind::CreateSimulation,
                        CREATE_SIMULATION,
                        "createSimulation",
                        json!({ "input": input }),
                    )
                    .await;
                if let Some(Answer::Applied(data)) = answer {
                    let id = data["aggregateId"]
                        .as_str()
                        .expect("simulation id")
                        .to_owned();
                    self.simulation = Some((id, 0));
                }
            }
            Some((simulation_id, posted)) if posted >= MESSAGES_PER_SIMULATION => {
                let variables = json!({ "id": simulation_id });
                let kind = Kind::EndSimulation { simulation_id };
                let answer = self
                    .send(kind, END_SIMULATION, "endSimulation", variables)
                    .await;
                if !matches!(answer, Some(Answer::Refused(ref code)) if code == "CONFLICT") {
                    self.simulation = None;
                }
            }
            Some((simulation_id, posted)) => {
                let text = format!(
                    "client {} message {}: where does it hurt?",
                    self.index,
                    self.sent + 1
                );
                let variables = json!({ "id": simulation_id, "text": text });
                let kind = Kind::PostMessage {
                    simulation_id: simulation_id.clone(),
                    text,
                };
                match self
                    .send(kind, POST_MESSAGE, "postMessage", variables)
                    .await
                {
                    Some(Answer::Applied(_)) => self.simulation = Some((simulation_id, posted + 1)),
                    // The patient is still answering the last message.
                    Some(Answer::Refused(code)) if code == "CONFLICT" => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some(Answer::Refused(_)) | None => self.simulation = None,
                }
            }
        }
    }
}

/// A simulation set-up for learner `learner`.
pub fn simulation_input(learner: &str) -> Value {
    json!({
        "learnerId": learner,
        "scenario": { "diagnosis": "appendicitis", "chiefComplaint": "abdominal pain",
                      "difficulty": "MEDIUM" },
        "patient": { "name": "Alex Doe", "age": 34, "sex": "female", "history": "none" },
        "ai": { "model": "gpt-4o-mini", "temperature": 0.7 },
    })
}
