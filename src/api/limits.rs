//! The per-client rate limit on mutations, enforced when a request's document is parsed:
//! each root mutation field costs one (fragments counted through), so a document of many
//! mutations cannot pass as one.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{ErrorExtensionValues, ServerError, ServerResult, Variables};
use chronicle_aggregates::ErrorCode;

use super::Caller;
use crate::security::RateLimiter;

/// Fragments nested deeper than this are not followed (the validator refuses cycles later).
const MAX_FRAGMENT_DEPTH: usize = 8;

/// The schema extension that rate-limits mutations per client.
pub(crate) struct MutationRateLimit;

impl ExtensionFactory for MutationRateLimit {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(MutationRateLimitExtension)
    }
}

struct MutationRateLimitExtension;

#[async_trait::async_trait]
impl Extension for MutationRateLimitExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let cost = mutation_fields(&document);
        let (Some(caller), Some(limiter)) =
            (ctx.data_opt::<Caller>(), ctx.data_opt::<RateLimiter>())
        else {
            return Ok(document);
        };
        match limiter.check(&caller.actor, cost) {
            Ok(()) => Ok(document),
            Err(wait) => {
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                let mut error = ServerError::new(
                    format!("too many mutations from this client; retry in {wait_ms} ms"),
                    None,
                );
                let mut extensions = ErrorExtensionValues::default();
                extensions.set("code", ErrorCode::RateLimited.as_str());
                extensions.set("retryAfterMs", wait_ms);
                error.extensions = Some(extensions);
                Err(error)
            }
        }
    }
}

/// Root fields of the document's mutation operations.
fn mutation_fields(document: &ExecutableDocument) -> u32 {
    let operations: Vec<_> = match &document.operations {
        DocumentOperations::Single(operation) => vec![operation],
        DocumentOperations::Multiple(operations) => operations.values().collect(),
    };
    operations
        .into_iter()
        .filter(|operation| operation.node.ty == OperationType::Mutation)
        .map(|operation| fields(document, &operation.node.selection_set.node, 0))
        .sum()
}

fn fields(document: &ExecutableDocument, set: &SelectionSet, depth: usize) -> u32 {
    if depth > MAX_FRAGMENT_DEPTH {
        return 0;
    }
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(fragment) => {
                fields(document, &fragment.node.selection_set.node, depth + 1)
            }
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |fragment| {
                    fields(document, &fragment.node.selection_set.node, depth + 1)
                }),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(query: &str) -> u32 {
        let document = async_graphql::parser::parse_query(query).unwrap_or_else(|e| panic!("{e}"));
        mutation_fields(&document)
    }

    #[test]
    fn each_root_mutation_field_costs_one_through_fragments() {
        assert_eq!(cost("{ me { clientId } }"), 0);
        assert_eq!(cost("mutation { a b }"), 2);
        assert_eq!(
            cost("mutation { a ...F ... on Mutation { d } } fragment F on Mutation { b c }"),
            4
        );
        assert_eq!(cost("query Q { a } mutation M { b } mutation N { c d }"), 3);
    }

    #[test]
    fn cyclic_fragments_end() {
        assert!(cost("mutation { ...F } fragment F on Mutation { a ...F }") > 0);
    }
}
