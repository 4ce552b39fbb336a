//! The price table: what a model's tokens cost at a provider, in US dollars per million
//! tokens, dated. Each result is priced when it is recorded, by the entry in force that day,
//! and its event keeps the cost (`RequestEvent::ResultRecorded::cost`): history keeps the
//! price that applied, and the analytics sum what the events say. The shipped defaults are
//! `ops/prices.toml`; `CHRONICLE_PRICES_FILE` replaces them.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use chronicle_aggregates::request::{Cost, TokenUsage};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;

/// The table shipped with the binary.
const STANDARD: &str = include_str!("../../ops/prices.toml");
/// The providers an entry may name.
const PROVIDERS: [&str; 3] = ["openai", "azure", "anthropic"];

/// One dated price, in US dollars per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    provider: String,
    model: String,
    from: NaiveDate,
    input: f64,
    cached_input: Option<f64>,
    output: f64,
    #[serde(default = "half")]
    batch_discount: f64,
}

fn half() -> f64 {
    0.5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(default)]
    prices: Vec<Entry>,
}

/// The price table; cheap to clone.
#[derive(Debug, Clone)]
pub struct Prices {
    entries: Arc<Vec<Entry>>,
}

impl Prices {
    /// The table in `path`, or the shipped one without a path.
    ///
    /// # Errors
    /// The file cannot be read, or is not a valid table (the message says where).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Self::parse(STANDARD).context("the shipped price table (ops/prices.toml)");
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the price table {}", path.display()))?;
        Self::parse(&text)
            .with_context(|| format!("the price table {} (CHRONICLE_PRICES_FILE)", path.display()))
    }

    /// Parses and checks a table: known providers, prices finite and not negative, a discount
    /// from 0 to 1, and one entry per provider, model and date.
    ///
    /// # Errors
    /// What is wrong, naming the entry.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let table: Table = toml::from_str(text)?;
        let mut entries = table.prices;
        for entry in &entries {
            check(entry).with_context(|| entry.label())?;
        }
        entries
            .sort_by(|a, b| (&a.provider, &a.model, a.from).cmp(&(&b.provider, &b.model, b.from)));
        if let Some(twice) = entries
            .windows(2)
            .find(|pair| pair[0].label() == pair[1].label())
        {
            anyhow::bail!("{} is listed twice", twice[0].label());
        }
        Ok(Self {
            entries: Arc::new(entries),
        })
    }

    /// What `usage` cost at `provider` for `model`, recorded `at`; `None` when no entry
    /// applies. The entry is the one of the longest matching model name (the name itself,
    /// or one it extends with `-`) in force on `at`'s date (UTC).
    pub fn cost(
        &self,
        provider: &str,
        model: &str,
        at: DateTime<Utc>,
        usage: TokenUsage,
    ) -> Option<Cost> {
        let matching = |entry: &&Entry| entry.provider == provider && entry.prices(model);
        let longest = self
            .entries
            .iter()
            .filter(matching)
            .map(|e| e.model.len())
            .max()?;
        let day = at.date_naive();
        let entry = self
            .entries
            .iter()
            .filter(matching)
            .filter(|entry| entry.model.len() == longest && entry.from <= day)
            .max_by_key(|entry| entry.from)?;
        Some(Cost {
            nano_usd: entry.nano_usd(usage),
            price: entry.label(),
        })
    }
}

impl Entry {
    /// `provider/model@from`.
    fn label(&self) -> String {
        format!("{}/{}@{}", self.provider, self.model, self.from)
    }

    /// Whether this entry's model prices `model`: the same name, or one it extends.
    fn prices(&self, model: &str) -> bool {
        model == self.model
            || model
                .strip_prefix(self.model.as_str())
                .is_some_and(|rest| rest.starts_with('-'))
    }

    /// What `usage` costs, in billionths of a dollar (a dollar per million tokens is a
    /// thousand per token).
    fn nano_usd(&self, usage: TokenUsage) -> i64 {
        let cached = usage.cached_input.min(usage.input);
        let uncached = usage.input - cached;
        let cached_price = self.cached_input.unwrap_or(self.input);
        let dollars_per_million = uncached as f64 * self.input
            + cached as f64 * cached_price
            + usage.output as f64 * self.output;
        // Saturates at i64's bounds; prices are checked finite and not negative.
        (dollars_per_million * 1000.0 * (1.0 - self.batch_discount)).round() as i64
    }
}

fn check(entry: &Entry) -> anyhow::Result<()> {
    anyhow::ensure!(
        PROVIDERS.contains(&entry.provider.as_str()),
        "provider must be one of {}",
        PROVIDERS.join(", ")
    );
    anyhow::ensure!(!entry.model.is_empty(), "model is empty");
    let prices = [Some(entry.input), entry.cached_input, Some(entry.output)];
    anyhow::ensure!(
        prices
            .into_iter()
            .flatten()
            .all(|p| p.is_finite() && p >= 0.0),
        "prices must be finite and not negative"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&entry.batch_discount),
        "batch_discount must be from 0 to 1"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    const TABLE: &str = r#"
        [[prices]]
        provider = "openai"
        model = "gpt-x"
        from = "2025-01-01"
        input = 2.0
        cached_input = 1.0
        output = 8.0

        [[prices]]
        provider = "openai"
        model = "gpt-x"
        from = "2025-06-01"
        input = 1.0
        output = 4.0
        batch_discount = 0.0

        [[prices]]
        provider = "openai"
        model = "gpt-x-mini"
        from = "2025-03-01"
        input = 0.5
        output = 1.0
    "#;

    fn on(year: i32, month: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(year, month, day, 12, 0, 0)
            .single()
            .expect("a date")
    }

    const USAGE: TokenUsage = TokenUsage {
        input: 1_000,
        cached_input: 400,
        output: 100,
    };

    #[test]
    fn the_entry_in_force_that_day_prices_the_result_with_cache_and_discount() {
        let prices = Prices::parse(TABLE).expect("table");
        // 600 × $2 + 400 × $1 + 100 × $8 per million, halved: $0.0012.
        let early = prices.cost("openai", "gpt-x", on(2025, 2, 1), USAGE);
        assert_eq!(
            early,
            Some(Cost {
                nano_usd: 1_200_000,
                price: "openai/gpt-x@2025-01-01".into()
            })
        );
        // The later entry: no cached price (the input price), no discount.
        let later = prices.cost("openai", "gpt-x-2025-06-01", on(2025, 7, 1), USAGE);
        assert_eq!(
            later.map(|c| (c.nano_usd, c.price)),
            Some((1_400_000, "openai/gpt-x@2025-06-01".into()))
        );
        assert_eq!(
            prices.cost("openai", "gpt-x", on(2024, 12, 31), USAGE),
            None
        );
    }

    #[test]
    fn the_longest_model_name_decides_and_other_names_and_providers_are_unpriced() {
        let prices = Prices::parse(TABLE).expect("table");
        let mini = prices.cost("openai", "gpt-x-mini-2025", on(2025, 4, 1), USAGE);
        assert_eq!(
            mini.map(|c| c.price),
            Some("openai/gpt-x-mini@2025-03-01".into())
        );
        // Before the mini's first price, gpt-x's does not stand in for it.
        assert_eq!(
            prices.cost("openai", "gpt-x-mini", on(2025, 2, 1), USAGE),
            None
        );
        assert_eq!(prices.cost("openai", "gpt-xl", on(2025, 4, 1), USAGE), None);
        assert_eq!(prices.cost("azure", "gpt-x", on(2025, 4, 1), USAGE), None);
    }

    #[test]
    fn bad_tables_are_refused_naming_the_entry() {
        let entry = |fields: &str| {
            format!(
                "[[prices]]\nprovider = \"openai\"\nmodel = \"m\"\nfrom = \"2025-01-01\"\n{fields}"
            )
        };
        for (fields, why) in [
            ("input = -1.0\noutput = 1.0", "not negative"),
            (
                "input = 1.0\noutput = 1.0\nbatch_discount = 2.0",
                "from 0 to 1",
            ),
            (
                "input = 1.0\noutput = 1.0\nsurcharge = 1.0",
                "unknown field",
            ),
            ("input = 1.0", "missing field"),
        ] {
            let error = format!("{:#}", Prices::parse(&entry(fields)).expect_err(fields));
            assert!(error.contains(why), "{fields}: {error}");
        }
        let twice = format!(
            "{}\n{}",
            entry("input = 1.0\noutput = 1.0"),
            entry("input = 2.0\noutput = 1.0")
        );
        let error = format!("{:#}", Prices::parse(&twice).expect_err("twice"));
        assert!(
            error.contains("openai/m@2025-01-01 is listed twice"),
            "{error}"
        );
        let unknown = entry("input = 1.0\noutput = 1.0").replace("openai", "acme");
        assert!(Prices::parse(&unknown).is_err());
    }

    #[test]
    fn the_shipped_table_is_valid() {
        let prices = Prices::load(None).expect("ops/prices.toml");
        let cost = prices.cost("openai", "gpt-4o-mini-2024-07-18", on(2025, 1, 1), USAGE);
        assert_eq!(
            cost.map(|c| c.price),
            Some("openai/gpt-4o-mini@2024-07-18".into())
        );
    }
}
