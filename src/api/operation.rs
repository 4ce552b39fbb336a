//! Which operation of a document a request runs.

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType,
};
use async_graphql::{Positioned, Request};

/// The operation `document` runs: the one named `name`, or its only one.
pub(crate) fn chosen<'d>(
    document: &'d ExecutableDocument,
    name: Option<&str>,
) -> Option<&'d Positioned<OperationDefinition>> {
    match (&document.operations, name) {
        (DocumentOperations::Single(only), _) => Some(only),
        (DocumentOperations::Multiple(all), Some(name)) => all.get(name),
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// Whether `request` runs a query (no mutation, no subscription). Its document is parsed
/// here once and kept for execution; one that does not parse, or names no operation it has,
/// is not a query (execution then answers the error).
pub fn is_query(request: &mut Request) -> bool {
    let name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else {
        return false;
    };
    chosen(document, name.as_deref()).is_some_and(|chosen| chosen.node.ty == OperationType::Query)
}
