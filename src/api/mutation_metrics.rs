//! Counts every mutation field that runs, by name and outcome (`ok`, or its error's code):
//! `chronicle_mutations_total`. A bulk mutation counts once; its items are counted by what
//! it submits (`chronicle_requests_submitted_total`).

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextResolve, ResolveInfo,
};
use async_graphql::{ServerResult, Value};
use chronicle_aggregates::ErrorCode;

/// The schema extension that counts mutations.
pub(crate) struct MutationMetrics;

impl ExtensionFactory for MutationMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(MutationMetricsExtension)
    }
}

struct MutationMetricsExtension;

#[async_trait::async_trait]
impl Extension for MutationMetricsExtension {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let mutation = (info.parent_type == "Mutation" && info.path_node.parent.is_none())
            .then(|| info.name.to_owned());
        let result = next.run(ctx, info).await;
        if let Some(name) = mutation {
            let outcome = match &result {
                Ok(_) => "ok",
                Err(error) => error
                    .extensions
                    .as_ref()
                    .and_then(|extensions| match extensions.get("code") {
                        Some(Value::String(code)) => ErrorCode::parse(code).map(ErrorCode::as_str),
                        _ => None,
                    })
                    // Without a code, async-graphql raised it itself: the input was invalid.
                    .unwrap_or(ErrorCode::Validation.as_str()),
            };
            crate::metrics::mutation(&name, outcome);
        }
        result
    }
}
