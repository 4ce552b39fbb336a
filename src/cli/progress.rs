//! Progress where people wait: a bar with rate and ETA on a terminal (`indicatif`), a
//! plain line every few seconds otherwise (logs, CI), both on stderr.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// One task's progress towards a total (or an open count without one).
pub(super) struct Progress {
    label: String,
    unit: &'static str,
    shown: Shown,
}

enum Shown {
    Bar(ProgressBar),
    Lines {
        started: Instant,
        last: Mutex<Instant>,
        total: Option<u64>,
    },
}

impl Progress {
    /// Progress of `label` in `unit`s towards `total`, when known.
    pub(super) fn new(label: &str, unit: &'static str, total: Option<u64>) -> Self {
        let shown = if std::io::stderr().is_terminal() {
            Shown::Bar(bar(label, unit, total))
        } else {
            let now = Instant::now();
            Shown::Lines {
                started: now,
                last: Mutex::new(now),
                total,
            }
        };
        Self {
            label: label.to_owned(),
            unit,
            shown,
        }
    }

    /// `done` units so far.
    pub(super) fn set(&self, done: u64) {
        match &self.shown {
            Shown::Bar(bar) => bar.set_position(done),
            Shown::Lines {
                started,
                last,
                total,
            } => {
                let Ok(mut last) = last.lock() else { return };
                if last.elapsed() < PLAIN_EVERY {
                    return;
                }
                *last = Instant::now();
                eprintln!("{}", self.line(done, *total, started.elapsed()));
            }
        }
    }

    /// The task ended (successfully or not): the bar is cleared, the lines stop.
    pub(super) fn finish(&self) {
        if let Shown::Bar(bar) = &self.shown {
            bar.finish_and_clear();
        }
    }

    fn line(&self, done: u64, total: Option<u64>, elapsed: Duration) -> String {
        let rate = done as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
        let (label, unit) = (&self.label, self.unit);
        match total.filter(|total| *total > 0) {
            Some(total) => {
                let percent = (done as f64 / total as f64 * 100.0).min(100.0);
                let left = total.saturating_sub(done) as f64 / rate.max(f64::EPSILON);
                format!(
                    "{label}: {done}/{total} {unit} ({percent:.0} %), {rate:.0} {unit}/s, \
                     about {left:.0} s left"
                )
            }
            None => format!("{label}: {done} {unit}, {rate:.0} {unit}/s"),
        }
    }
}

fn bar(label: &str, unit: &str, total: Option<u64>) -> ProgressBar {
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::new(total),
            format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})"),
        ),
        None => (
            ProgressBar::new_spinner(),
            format!("{{msg}} {{spinner}} {{pos}} {unit} ({{per_sec}})"),
        ),
    };
    let style =
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_message(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(total: Option<u64>) -> Progress {
        Progress {
            label: "rebuilding requests".into(),
            unit: "events",
            shown: Shown::Lines {
                started: Instant::now(),
                last: Mutex::new(Instant::now()),
                total,
            },
        }
    }

    #[test]
    fn a_plain_line_gives_share_rate_and_time_left() {
        let line = plain(Some(1_000)).line(250, Some(1_000), Duration::from_secs(5));
        assert_eq!(
            line,
            "rebuilding requests: 250/1000 events (25 %), 50 events/s, about 15 s left"
        );
    }

    #[test]
    fn without_a_total_a_plain_line_gives_the_count_and_rate() {
        let line = plain(None).line(300, None, Duration::from_secs(3));
        assert_eq!(line, "rebuilding requests: 300 events, 100 events/s");
    }
}
