//! The budget of one GraphQL document, checked as soon as it is parsed: before async-graphql's
//! own recursion check, validation and execution, which all walk fragments expanded.
//!
//! A document's cost is counted with every fragment expanded where it is spread, but each
//! fragment is counted once and its cost reused, so counting stays linear in the document's
//! size even when its expansion is exponential (a sub-kilobyte "fragment bomb" expands to
//! hundreds of millions of fields). Two budgets follow from the count:
//! - **Selections:** fields, fragment spreads and inline fragments of the expanded document;
//!   more than [`MAX_SELECTIONS`] is refused with `LIMIT_EXCEEDED`.
//! - **Mutations:** every root mutation field, at any fragment depth, costs one mutation,
//!   and the items of its list arguments (a bulk submission's requests) one item each; both
//!   are taken from the caller's rate limit, or the document is refused with `RATE_LIMITED`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Field, OperationType, Selection, SelectionSet,
};
use async_graphql::{ErrorExtensionValues, Request, ServerError, ServerResult, Variables};
use async_graphql_value::{ConstValue, Value};
use chronicle_aggregates::ErrorCode;

use super::Caller;
use crate::security::{MutationCost, RateLimiter};

/// The most selections a document may expand to: GraphiQL's introspection query expands to
/// a few hundred, our largest queries to under a hundred.
const MAX_SELECTIONS: u64 = 5_000;

/// The schema extension that enforces a document's budget.
pub(crate) struct DocumentBudget;

impl ExtensionFactory for DocumentBudget {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentBudgetExtension)
    }
}

struct DocumentBudgetExtension;

#[async_trait::async_trait]
impl Extension for DocumentBudgetExtension {
    /// Parses the document first (async-graphql reuses it) and refuses one over the
    /// selections budget.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let selections = {
            let variables = request.variables.clone();
            let document = request.parsed_query()?;
            Counter::new(document, &variables).document().selections
        };
        if selections > MAX_SELECTIONS {
            return Err(refusal(
                ErrorCode::LimitExceeded,
                format!(
                    "the document expands to {selections} selections (fragments spread where used); at most {MAX_SELECTIONS} are served"
                ),
                None,
            ));
        }
        next.run(ctx, request).await
    }

    /// Charges the document's mutations to the caller's rate limit.
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let cost = Counter::new(&document, variables).document();
        let (Some(caller), Some(limiter)) =
            (ctx.data_opt::<Caller>(), ctx.data_opt::<RateLimiter>())
        else {
            return Ok(document);
        };
        match limiter.check(&caller.actor, cost.mutations) {
            Ok(()) => Ok(document),
            Err(wait) => {
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                Err(refusal(
                    ErrorCode::RateLimited,
                    format!("too many mutations from this client; retry in {wait_ms} ms"),
                    Some(wait_ms),
                ))
            }
        }
    }
}

fn refusal(code: ErrorCode, message: String, retry_after_ms: Option<u64>) -> ServerError {
    let mut error = ServerError::new(message, None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", code.as_str());
    if let Some(wait) = retry_after_ms {
        extensions.set("retryAfterMs", wait);
    }
    error.extensions = Some(extensions);
    error
}

/// What a selection set costs, expanded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cost {
    /// Fields, spreads and inline fragments.
    selections: u64,
    /// Charged to the rate limit when the set is a mutation's root.
    mutations: MutationCost,
}

impl Cost {
    fn plus(self, other: Self) -> Self {
        Self {
            selections: self.selections.saturating_add(other.selections),
            mutations: self.mutations.plus(other.mutations),
        }
    }
}

/// Counts a document, each fragment once.
struct Counter<'d> {
    document: &'d ExecutableDocument,
    variables: &'d Variables,
    fragments: HashMap<&'d str, Cost>,
    /// Fragments being counted: a spread of one of them is a cycle (the validator refuses
    /// it later) and counts nothing here.
    open: HashSet<&'d str>,
}

impl<'d> Counter<'d> {
    fn new(document: &'d ExecutableDocument, variables: &'d Variables) -> Self {
        Self {
            document,
            variables,
            fragments: HashMap::new(),
            open: HashSet::new(),
        }
    }

    /// Every operation's cost; mutations only from mutation operations.
    fn document(mut self) -> Cost {
        let operations: Vec<_> = match &self.document.operations {
            DocumentOperations::Single(operation) => vec![operation],
            DocumentOperations::Multiple(operations) => operations.values().collect(),
        };
        operations
            .into_iter()
            .fold(Cost::default(), |total, operation| {
                let mut cost = self.set(&operation.node.selection_set.node);
                if operation.node.ty != OperationType::Mutation {
                    cost.mutations = MutationCost::default();
                }
                total.plus(cost)
            })
    }

    /// The cost of `set`, with its mutations counted as if it were a mutation's root.
    fn set(&mut self, set: &'d SelectionSet) -> Cost {
        set.items.iter().fold(Cost::default(), |total, item| {
            total.plus(self.selection(&item.node))
        })
    }

    fn selection(&mut self, selection: &'d Selection) -> Cost {
        let own = Cost {
            selections: 1,
            mutations: MutationCost::default(),
        };
        match selection {
            Selection::Field(field) => {
                let below = self.set(&field.node.selection_set.node);
                Cost {
                    selections: below.selections.saturating_add(1),
                    mutations: self.as_mutation(&field.node),
                }
            }
            Selection::InlineFragment(fragment) => {
                own.plus(self.set(&fragment.node.selection_set.node))
            }
            Selection::FragmentSpread(spread) => {
                own.plus(self.fragment(spread.node.fragment_name.node.as_str()))
            }
        }
    }

    fn fragment(&mut self, name: &'d str) -> Cost {
        if let Some(cost) = self.fragments.get(name) {
            return *cost;
        }
        let Some(fragment) = self.document.fragments.get(name) else {
            return Cost::default();
        };
        if !self.open.insert(name) {
            return Cost::default();
        }
        let cost = self.set(&fragment.node.selection_set.node);
        self.open.remove(name);
        self.fragments.insert(name, cost);
        cost
    }

    /// A root field as a mutation: one, and one item per element of its list arguments.
    fn as_mutation(&self, field: &Field) -> MutationCost {
        let items = field
            .arguments
            .iter()
            .map(|(_, value)| self.list_len(&value.node))
            .fold(0_u64, u64::saturating_add);
        MutationCost {
            mutations: 1,
            items,
        }
    }

    fn list_len(&self, value: &Value) -> u64 {
        let len = if let Value::List(items) = value {
            items.len()
        } else if let Value::Variable(name) = value {
            match self.variables.get(name) {
                Some(ConstValue::List(items)) => items.len(),
                Some(_) | None => 0,
            }
        } else {
            0
        };
        u64::try_from(len).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost_with(query: &str, variables: &str) -> Cost {
        let document = async_graphql::parser::parse_query(query).unwrap_or_else(|e| panic!("{e}"));
        let variables: Variables =
            serde_json::from_str(variables).unwrap_or_else(|e| panic!("{e}"));
        Counter::new(&document, &variables).document()
    }

    fn cost(query: &str) -> Cost {
        cost_with(query, "{}")
    }

    fn mutations(count: u64, items: u64) -> MutationCost {
        MutationCost {
            mutations: count,
            items,
        }
    }

    #[test]
    fn each_root_mutation_field_costs_one_through_fragments_at_any_depth() {
        assert_eq!(cost("{ me { clientId } }").mutations, mutations(0, 0));
        assert_eq!(cost("mutation { a b }").mutations, mutations(2, 0));
        assert_eq!(
            cost("mutation { a ...F ... on Mutation { d } } fragment F on Mutation { b c }")
                .mutations,
            mutations(4, 0)
        );
        assert_eq!(
            cost("query Q { a } mutation M { b } mutation N { c d }").mutations,
            mutations(3, 0)
        );
        // Eleven fragment levels and ten nested inline fragments are counted through.
        let mut deep = String::from("mutation { ...F0 }");
        for level in 0..11 {
            deep.push_str(&format!(
                " fragment F{level} on Mutation {{ ...F{} }}",
                level + 1
            ));
        }
        deep.push_str(" fragment F11 on Mutation { a b c }");
        assert_eq!(cost(&deep).mutations, mutations(3, 0));
        let inline = format!(
            "mutation {{ {} a {} }}",
            "... on Mutation {".repeat(10),
            "}".repeat(10)
        );
        assert_eq!(cost(&inline).mutations, mutations(1, 0));
    }

    #[test]
    fn bulk_items_are_counted_from_literals_and_variables() {
        assert_eq!(
            cost("mutation { submitRequests(requests: [{}, {}, {}]) { id } }").mutations,
            mutations(1, 3)
        );
        assert_eq!(
            cost_with(
                "mutation($r: [In!]!) { submitRequests(requests: $r) { id } }",
                r#"{"r": [1, 2, 3, 4, 5]}"#
            )
            .mutations,
            mutations(1, 5)
        );
    }

    #[test]
    fn a_fragment_bomb_is_counted_without_expanding_it() {
        // Ten spreads per fragment, eight levels: 10^8 fields once expanded.
        let mut bomb = String::from("query { ...F0 }");
        for level in 0..8 {
            let spreads = format!("...F{} ", level + 1).repeat(10);
            bomb.push_str(&format!(" fragment F{level} on Query {{ {spreads} }}"));
        }
        bomb.push_str(" fragment F8 on Query { me { clientId } }");
        assert!(bomb.len() < 1024, "{}", bomb.len());
        // Each fragment is counted once, so this returns at once rather than walking 10^8.
        let counted = cost(&bomb);
        assert!(counted.selections > 100_000_000, "{counted:?}");
        assert!(counted.selections > MAX_SELECTIONS);
    }

    #[test]
    fn selections_count_fields_spreads_and_inline_fragments_expanded() {
        assert_eq!(cost("{ me { clientId role } }").selections, 3);
        assert_eq!(
            cost("{ ...F ...F } fragment F on Query { me { clientId } }").selections,
            2 * (1 + 2)
        );
        assert_eq!(cost("{ ... on Query { me } }").selections, 2);
    }

    #[test]
    fn cyclic_fragments_end() {
        let counted = cost("mutation { ...F } fragment F on Mutation { a ...F }");
        assert!(counted.mutations.mutations > 0);
    }
}
