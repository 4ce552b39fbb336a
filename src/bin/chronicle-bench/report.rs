//! Results: each figure with its limit, ratio and goal, as a table and as JSON.

use serde::Serialize;
use serde_json::{json, Value};

use crate::server::BenchDatabase;
use crate::sizes::Sizes;

/// What a figure is held against.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub(crate) enum Goal {
    /// The value divided by its limit is at least this.
    RatioAtLeast(f64),
    /// The value is at least this.
    AtLeast(f64),
    /// The value is below this.
    Below(f64),
}

impl Goal {
    fn met(self, value: f64, limit: Option<f64>) -> Option<bool> {
        match self {
            Self::RatioAtLeast(goal) => limit
                .filter(|l| *l > 0.0)
                .map(|limit| value / limit >= goal),
            Self::AtLeast(goal) => Some(value >= goal),
            Self::Below(goal) => Some(value < goal),
        }
    }

    fn describe(self) -> String {
        match self {
            Self::RatioAtLeast(goal) => format!("ratio >= {goal}"),
            Self::AtLeast(goal) => format!(">= {goal}"),
            Self::Below(goal) => format!("< {goal}"),
        }
    }
}

/// One measured number.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    /// What was measured.
    pub(crate) measure: String,
    /// The value.
    pub(crate) value: f64,
    /// Its unit.
    pub(crate) unit: &'static str,
    /// The database's limit for the same work, measured right before.
    pub(crate) limit: Option<f64>,
    /// What it is held against.
    pub(crate) goal: Option<Goal>,
}

impl Figure {
    /// A figure without limit or goal.
    pub(crate) fn plain(measure: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            measure: measure.into(),
            value,
            unit,
            limit: None,
            goal: None,
        }
    }

    /// The same figure held against `goal`.
    pub(crate) fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    /// The same figure with the database's `limit`.
    pub(crate) fn limit(mut self, limit: f64) -> Self {
        self.limit = Some(limit);
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.limit.filter(|l| *l > 0.0).map(|l| self.value / l)
    }

    fn met(&self) -> Option<bool> {
        self.goal.and_then(|goal| goal.met(self.value, self.limit))
    }
}

/// The peak resident memory the service may reach in any workload.
const RSS_GOAL_MB: f64 = 200.0;

/// One workload's figures.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// `W1` to `W7`.
    pub(crate) id: &'static str,
    /// What it does.
    pub(crate) title: String,
    /// Its figures.
    pub(crate) figures: Vec<Figure>,
    /// The peak resident memory of the process that did the work, in bytes.
    pub(crate) peak_rss_bytes: u64,
    /// Wall time of the workload and its limit, in seconds.
    pub(crate) seconds: f64,
}

impl Outcome {
    fn all_figures(&self) -> Vec<Figure> {
        let rss = self.peak_rss_bytes as f64 / 1_048_576.0;
        let mut figures = self.figures.clone();
        figures.push(Figure::plain("peak RSS", rss, "MB").goal(Goal::Below(RSS_GOAL_MB)));
        figures
    }
}

/// A whole run.
pub(crate) struct Report {
    machine: Value,
    sizes: Sizes,
    outcomes: Vec<Outcome>,
}

impl Report {
    /// The run's report, with what the machine and its database are.
    pub(crate) async fn new(
        database: &BenchDatabase,
        sizes: &Sizes,
        outcomes: Vec<Outcome>,
    ) -> anyhow::Result<Self> {
        let setting = |name: &'static str| {
            sqlx::query_scalar::<_, String>("SELECT current_setting($1)")
                .bind(name)
                .fetch_one(&database.pool)
        };
        let machine = json!({
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
            "postgres": setting("server_version").await?,
            "synchronous_commit": setting("synchronous_commit").await?,
            "fsync": setting("fsync").await?,
            "shared_buffers": setting("shared_buffers").await?,
        });
        Ok(Self {
            machine,
            sizes: sizes.clone(),
            outcomes,
        })
    }

    /// The results as a plain-text table.
    pub(crate) fn table(&self) -> String {
        let mut out = format!(
            "{:<4} {:<46} {:>12} {:<11} {:>12} {:>7} {:<13} {}\n",
            "", "measure", "value", "unit", "limit", "ratio", "goal", "met"
        );
        for outcome in &self.outcomes {
            out.push_str(&format!(
                "{} {} ({:.1} s)\n",
                outcome.id, outcome.title, outcome.seconds
            ));
            for figure in outcome.all_figures() {
                let limit = figure.limit.map_or(String::new(), |l| format!("{l:.1}"));
                let ratio = figure.ratio().map_or(String::new(), |r| format!("{r:.2}"));
                let goal = figure.goal.map_or(String::new(), Goal::describe);
                let met = match figure.met() {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "",
                };
                out.push_str(&format!(
                    "{:<4} {:<46} {:>12.2} {:<11} {:>12} {:>7} {:<13} {}\n",
                    "", figure.measure, figure.value, figure.unit, limit, ratio, goal, met
                ));
            }
        }
        out
    }

    /// The results as JSON: the machine, the sizes, and every figure.
    pub(crate) fn json(&self) -> Value {
        let workloads: Vec<Value> = self
            .outcomes
            .iter()
            .map(|outcome| {
                let figures: Vec<Value> = outcome
                    .all_figures()
                    .iter()
                    .map(|figure| {
                        json!({
                            "measure": figure.measure,
                            "value": figure.value,
                            "unit": figure.unit,
                            "limit": figure.limit,
                            "ratio": figure.ratio(),
                            "goal": figure.goal,
                            "met": figure.met(),
                        })
                    })
                    .collect();
                json!({
                    "id": outcome.id,
                    "title": outcome.title,
                    "seconds": outcome.seconds,
                    "peak_rss_bytes": outcome.peak_rss_bytes,
                    "figures": figures,
                })
            })
            .collect();
        json!({ "machine": self.machine, "sizes": self.sizes, "workloads": workloads })
    }
}
