//! Reading an instance's `/metrics`.

use std::collections::{BTreeMap, BTreeSet};

use super::TestApp;

/// The exposition's samples: `name{labels}` (labels sorted, `instance` apart) to value, and
/// the instance each series named.
pub struct Scrape {
    samples: BTreeMap<String, f64>,
    /// The instances the series named.
    pub instances: BTreeSet<String>,
}

impl Scrape {
    /// Scrapes `app`'s `/metrics`.
    pub async fn of(app: &TestApp) -> Self {
        let text = app.get("/metrics").await.text().await.expect("metrics");
        let mut samples = BTreeMap::new();
        let mut instances = BTreeSet::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample");
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let mut kept = Vec::new();
            for label in labels
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
            {
                match label.strip_prefix("instance=") {
                    Some(instance) => {
                        instances.insert(instance.trim_matches('"').to_owned());
                    }
                    None => kept.push(label.to_owned()),
                }
            }
            kept.sort();
            let key = format!("{name}{{{}}}", kept.join(","));
            samples.insert(key, value.parse().expect("value"));
        }
        Self { samples, instances }
    }

    /// Every sample of `name`, by its labels.
    pub fn of_metric(&self, name: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter_map(|(key, value)| {
                let labels = key.strip_prefix(name)?.strip_prefix('{')?;
                Some((labels.trim_end_matches('}').to_owned(), *value))
            })
            .collect()
    }

    /// The names of the metrics served.
    pub fn names(&self) -> BTreeSet<String> {
        self.samples
            .keys()
            .map(|key| key.split('{').next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The value of `name` with exactly `labels` (`key="value"`, comma-separated, sorted;
    /// empty for none), or 0 when not served yet.
    pub fn value(&self, name: &str, labels: &str) -> f64 {
        self.samples
            .get(&format!("{name}{{{labels}}}"))
            .copied()
            .unwrap_or_default()
    }
}
