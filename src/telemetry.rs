//! Logging and tracing: `RUST_LOG`-style filtering, text or JSON lines on stderr, and —
//! when an OTLP endpoint is configured — every span exported with OpenTelemetry (OTLP over
//! HTTP, protobuf) to a collector.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The installed tracing; [`Telemetry::shutdown`] flushes spans not yet exported.
#[must_use = "shut it down to flush the spans not yet exported"]
pub struct Telemetry {
    exporter: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is left (waiting at most the exporter's timeout).
    pub async fn shutdown(self) {
        if let Some(provider) = self.exporter {
            // The exporter's HTTP client blocks: flush off the async workers.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = flushed {
                eprintln!("chronicle: exporting the last spans failed: {error}");
            }
        }
    }
}

/// The OpenTelemetry pipeline to `endpoint` (e.g. `http://collector:4318/v1/traces`).
fn exporter(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .context("building the OTLP span exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("chronicle").build())
        .with_batch_exporter(exporter)
        .build())
}

/// Installs the global subscriber; a second call (as in tests) keeps the first.
///
/// # Errors
/// The OTLP exporter cannot be built from `otlp_endpoint`.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let provider = otlp_endpoint.map(exporter).transpose()?;
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("chronicle")));
    let (text, json) = match format {
        LogFormat::Text => (Some(tracing_subscriber::fmt::layer()), None),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json())),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text.map(|l| l.with_writer(std::io::stderr)))
        .with(json.map(|l| l.with_writer(std::io::stderr)))
        .with(otel)
        .try_init();
    // Already installed (tests start several apps in one process): keep the first.
    drop(installed);
    Ok(Telemetry { exporter: provider })
}
