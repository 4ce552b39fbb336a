//! Gives every GraphQL error a `code`: errors async-graphql raises itself (a malformed query,
//! a `UUID` that is not one, a depth limit) carry none, and clients must never have to parse
//! messages. Resolver errors already have theirs (see `error.rs`).

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextRequest, NextSubscribe,
};
use async_graphql::{Response, ServerError};
use chronicle_aggregates::ErrorCode;
use futures::stream::BoxStream;
use futures::StreamExt;

/// The schema extension that fills in missing codes.
pub(crate) struct DefaultErrorCodes;

impl ExtensionFactory for DefaultErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DefaultErrorCodesExtension)
    }
}

struct DefaultErrorCodesExtension;

/// Errors without a code were raised before any resolver ran: the request was invalid.
fn fill(mut response: Response) -> Response {
    for error in &mut response.errors {
        fill_one(error);
    }
    response
}

fn fill_one(error: &mut ServerError) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", ErrorCode::Validation.as_str());
    }
}

#[async_trait::async_trait]
impl Extension for DefaultErrorCodesExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        fill(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(fill).boxed()
    }
}
