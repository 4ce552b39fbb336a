//! Counts every root mutation field a request asked for, by name and outcome (`ok`, or its
//! error's code, a refusal of the whole request included): `chronicle_mutations_total`. It
//! looks once per request (the parsed document, then the response), not once per field. A
//! bulk mutation counts once; its items are counted by what it submits
//! (`chronicle_requests_submitted_total`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest, NextRequest,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{PathSegment, Request, Response, ServerError, ServerResult, Value, Variables};
use chronicle_aggregates::ErrorCode;

/// The schema extension that counts mutations.
pub(crate) struct MutationMetrics;

impl ExtensionFactory for MutationMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(MutationMetricsExtension::default())
    }
}

/// One request's operation name and root mutation fields (response key, field name).
#[derive(Default)]
struct MutationMetricsExtension {
    operation: Mutex<Option<String>>,
    roots: Mutex<Vec<(String, String)>>,
}

#[async_trait::async_trait]
impl Extension for MutationMetricsExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        *self
            .operation
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = request.operation_name.clone();
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let operation = self
            .operation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        *self.roots.lock().unwrap_or_else(PoisonError::into_inner) =
            root_mutations(&document, operation.as_deref());
        Ok(document)
    }

    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let response = next.run(ctx).await;
        let roots = std::mem::take(&mut *self.roots.lock().unwrap_or_else(PoisonError::into_inner));
        for (key, name) in roots {
            crate::metrics::mutation(&name, outcome(&response.errors, &key));
        }
        response
    }
}

/// The outcome of the root field answered under `key`: the code of its error, or of an
/// error of the whole request; `ok` without either.
fn outcome<'e>(errors: &'e [ServerError], key: &str) -> &'e str {
    // The field's own error; a nested field's (the mutation took effect) does not count.
    let own = errors
        .iter()
        .find(|error| matches!(error.path.as_slice(), [PathSegment::Field(field)] if field == key));
    let whole = || errors.iter().find(|error| error.path.is_empty());
    match own.or_else(whole) {
        None => "ok",
        Some(error) => error
            .extensions
            .as_ref()
            .and_then(|extensions| match extensions.get("code") {
                Some(Value::String(code)) => ErrorCode::parse(code).map(ErrorCode::as_str),
                _ => None,
            })
            // Without a code, async-graphql raised it itself: the input was invalid.
            .unwrap_or(ErrorCode::Validation.as_str()),
    }
}

/// The root fields (response key, name) of the mutation `document` runs (the operation
/// named `operation`, or its only one), through fragments at the root.
fn root_mutations(document: &ExecutableDocument, operation: Option<&str>) -> Vec<(String, String)> {
    let mut roots = Vec::new();
    if let Some(chosen) = super::operation::chosen(document, operation)
        .filter(|o| o.node.ty == OperationType::Mutation)
    {
        let mut spread = HashSet::new();
        collect(
            document,
            &chosen.node.selection_set.node,
            &mut spread,
            &mut roots,
        );
    }
    roots
}

fn collect<'d>(
    document: &'d ExecutableDocument,
    set: &'d SelectionSet,
    spread: &mut HashSet<&'d str>,
    roots: &mut Vec<(String, String)>,
) {
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => {
                let name = field.node.name.node.to_string();
                let key = field
                    .node
                    .alias
                    .as_ref()
                    .map_or_else(|| name.clone(), |alias| alias.node.to_string());
                roots.push((key, name));
            }
            Selection::InlineFragment(fragment) => {
                collect(document, &fragment.node.selection_set.node, spread, roots);
            }
            Selection::FragmentSpread(spread_of) => {
                let name = spread_of.node.fragment_name.node.as_str();
                // Each fragment once: a cycle (refused by validation later) ends here.
                if spread.insert(name) {
                    if let Some(fragment) = document.fragments.get(name) {
                        collect(document, &fragment.node.selection_set.node, spread, roots);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(query: &str, operation: Option<&str>) -> Vec<(String, String)> {
        let document = async_graphql::parser::parse_query(query).expect("query");
        root_mutations(&document, operation)
    }

    fn pair(key: &str, name: &str) -> (String, String) {
        (key.to_owned(), name.to_owned())
    }

    #[test]
    fn root_fields_are_found_by_alias_through_fragments_once_each() {
        let found = roots(
            "mutation { a: flushBatch(batchId: 1) { version } ...F ... { cancelBatch(batchId: 2) { version } } }
             fragment F on Mutation { submitRequest(input: {}) { requestId } ...F }",
            None,
        );
        assert_eq!(
            found,
            [
                pair("a", "flushBatch"),
                pair("submitRequest", "submitRequest"),
                pair("cancelBatch", "cancelBatch")
            ]
        );
    }

    #[test]
    fn only_the_mutation_that_runs_counts() {
        let document = "query Q { me { id } } mutation M { flushBatch(batchId: 1) { version } }";
        assert!(roots(document, Some("Q")).is_empty());
        assert_eq!(
            roots(document, Some("M")),
            [pair("flushBatch", "flushBatch")]
        );
        assert!(roots(document, None).is_empty(), "ambiguous: nothing runs");
    }
}
