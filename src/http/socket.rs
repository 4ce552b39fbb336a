//! One GraphQL websocket session (graphql-transport-ws, or legacy graphql-ws): the protocol is
//! async-graphql's; around it, this module keeps the session answerable to its key.
//!
//! - Every operation a client starts is re-authorized against the key's current state first,
//!   so nothing runs on a socket after its key was revoked.
//! - A revocation committed anywhere (see [`Revocations`]) closes the socket with
//!   [`CLOSE_FORBIDDEN`] within the log's wake-up latency, ending its subscriptions.
//! - A socket runs at most `max_operations` operations at once; one more is refused with an
//!   `error` message (code `LIMIT_EXCEEDED`) and the socket goes on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::http::{
    ClientMessage, WebSocket as ProtocolSession, WebSocketProtocols, WsMessage,
};
use async_graphql::Data;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chronicle_aggregates::ErrorCode;
use futures::stream::BoxStream;
use futures::{SinkExt, Stream, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot};

use crate::api::{Caller, ChronicleSchema};
use crate::security::{Authenticator, KeyNews, RevocationWatch};

/// Close code for a key that was revoked while the socket was open (graphql-ws's Forbidden).
pub(super) const CLOSE_FORBIDDEN: u16 = 4403;
/// Close code for a subscribe that reuses a running operation's id (graphql-transport-ws).
const CLOSE_DUPLICATE_ID: u16 = 4409;

/// The key a socket was opened with, once it is known.
#[derive(Clone)]
pub(super) struct Grant {
    /// The key's public id, as revocations name it.
    pub key_id: String,
    /// The key itself, to re-authorize operations.
    pub token: SecretString,
}

/// What a session needs besides the socket.
pub(super) struct Session {
    pub schema: ChronicleSchema,
    pub protocol: WebSocketProtocols,
    pub authenticator: Option<Authenticator>,
    pub revocations: Option<RevocationWatch>,
    pub max_operations: usize,
}

/// Decides who the caller is from `connection_init`'s payload, and which key proves it.
pub(super) type Authorize = Box<
    dyn FnOnce(
            serde_json::Value,
        ) -> futures::future::BoxFuture<
            'static,
            async_graphql::Result<(Caller, Option<Grant>)>,
        > + Send,
>;

/// A key re-checked before an operation starts.
enum KeyState {
    Valid,
    Revoked,
    /// The database could not be asked: the operation is refused, the socket stays.
    Unchecked,
}

/// The operations running on one socket, by id.
type Running = Arc<Mutex<HashSet<String>>>;

/// Serves `socket` until either side closes it or its key is revoked.
pub(super) async fn serve(socket: WebSocket, session: Session, authorize: Authorize) {
    let (mut sink, incoming) = socket.split();
    let (grant_sender, grant) = oneshot::channel::<Grant>();
    let (notices, notices_out) = mpsc::unbounded_channel::<WsMessage>();
    let running = Running::default();
    let guard = Guard {
        protocol: session.protocol,
        authenticator: session.authenticator.clone(),
        grant: Arc::default(),
        running: running.clone(),
        notices,
        max_operations: session.max_operations,
    };
    let inbox = guarded_inbox(incoming, guard.clone());
    let granted = guard.grant.clone();
    let protocol = ProtocolSession::from_message_stream(session.schema, inbox, session.protocol)
        .on_connection_init(move |payload| async move {
            let (caller, key) = authorize(payload).await?;
            if let Some(key) = key {
                *lock(&granted) = Some(key.clone());
                let _ = grant_sender.send(key);
            }
            let mut data = Data::default();
            data.insert(caller);
            Ok(data)
        });
    let revoked = revocation_close(session.revocations, session.authenticator, grant);
    let mut notices_out = notices_out;
    let notices_out = futures::stream::poll_fn(move |cx| notices_out.poll_recv(cx));
    let mut outgoing =
        futures::stream::select_all([protocol.boxed(), notices_out.boxed(), revoked.boxed()]);
    while let Some(message) = outgoing.next().await {
        let frame = match message {
            WsMessage::Text(text) => {
                forget_finished(&running, &text);
                Message::Text(text.into())
            }
            WsMessage::Close(code, reason) => {
                let _ = sink.send(close_frame(code, &reason)).await;
                break;
            }
        };
        if sink.send(frame).await.is_err() {
            break;
        }
    }
}

/// A close frame; the reason is cut to fit a control frame (125 bytes with the code).
fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// Checks each client message before the protocol sees it.
#[derive(Clone)]
struct Guard {
    protocol: WebSocketProtocols,
    authenticator: Option<Authenticator>,
    /// The socket's key, set when the connection was authorized.
    grant: Arc<Mutex<Option<Grant>>>,
    running: Running,
    notices: mpsc::UnboundedSender<WsMessage>,
    max_operations: usize,
}

/// The client's messages, parsed, with operations that may not start held back.
fn guarded_inbox(
    incoming: impl Stream<Item = Result<Message, axum::Error>> + Send + 'static,
    guard: Guard,
) -> BoxStream<'static, serde_json::Result<ClientMessage>> {
    incoming
        .take_while(|frame| std::future::ready(frame.is_ok()))
        .filter_map(move |frame| {
            let guard = guard.clone();
            async move {
                let bytes = match frame.ok()? {
                    Message::Text(text) => text.as_bytes().to_vec(),
                    Message::Binary(bytes) => bytes.to_vec(),
                    Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return None,
                };
                match ClientMessage::from_bytes(bytes) {
                    Ok(message) => guard.admit(message).await.map(Ok),
                    Err(error) => Some(Err(error)),
                }
            }
        })
        .boxed()
}

impl Guard {
    /// The message if it may pass; otherwise the refusal is sent and `None` returned.
    async fn admit(&self, message: ClientMessage) -> Option<ClientMessage> {
        match &message {
            ClientMessage::Start { id, .. } => self.admit_start(id).await.then_some(message),
            ClientMessage::Stop { id } => {
                lock(&self.running).remove(id);
                Some(message)
            }
            ClientMessage::ConnectionInit { .. }
            | ClientMessage::ConnectionTerminate
            | ClientMessage::Ping { .. }
            | ClientMessage::Pong { .. } => Some(message),
        }
    }

    async fn admit_start(&self, id: &str) -> bool {
        match self.key_state().await {
            KeyState::Valid => {}
            KeyState::Revoked => {
                self.notify(WsMessage::Close(
                    CLOSE_FORBIDDEN,
                    "the API key was revoked".into(),
                ));
                return false;
            }
            KeyState::Unchecked => {
                self.refuse(
                    id,
                    ErrorCode::Unavailable,
                    "the API key could not be checked: the database is unavailable; retry later",
                );
                return false;
            }
        }
        let mut running = lock(&self.running);
        if running.contains(id) {
            self.notify(WsMessage::Close(
                CLOSE_DUPLICATE_ID,
                format!("Subscriber for {id} already exists"),
            ));
            return false;
        }
        if running.len() >= self.max_operations {
            drop(running);
            self.refuse(
                id,
                ErrorCode::LimitExceeded,
                &format!(
                    "this socket already runs {} operations; complete one first",
                    self.max_operations
                ),
            );
            return false;
        }
        running.insert(id.to_owned());
        true
    }

    /// The socket's key as the database has it now (valid before the connection is
    /// authorized, which the protocol enforces itself, and without authentication).
    async fn key_state(&self) -> KeyState {
        let grant = lock(&self.grant).clone();
        let (Some(authenticator), Some(grant)) = (&self.authenticator, grant) else {
            return KeyState::Valid;
        };
        match authenticator
            .authenticate(grant.token.expose_secret())
            .await
        {
            Ok(Some(_)) => KeyState::Valid,
            Ok(None) => KeyState::Revoked,
            Err(error) => {
                tracing::warn!(%error, "could not re-check a websocket's API key");
                KeyState::Unchecked
            }
        }
    }

    fn notify(&self, message: WsMessage) {
        // The session is gone when the receiver is: nothing left to tell.
        let _ = self.notices.send(message);
    }

    /// Ends operation `id` with an error, in the socket's protocol.
    fn refuse(&self, id: &str, code: ErrorCode, message: &str) {
        let error =
            serde_json::json!({ "message": message, "extensions": { "code": code.as_str() } });
        let payload = match self.protocol {
            WebSocketProtocols::GraphQLWS => serde_json::json!([error]),
            WebSocketProtocols::SubscriptionsTransportWS => error,
        };
        let text = serde_json::json!({ "type": "error", "id": id, "payload": payload });
        self.notify(WsMessage::Text(text.to_string()));
    }
}

/// Stops tracking an operation the server finished (`complete` comes first in the JSON, as
/// async-graphql writes it; `next` messages are not parsed).
fn forget_finished(running: &Running, text: &str) {
    if !text.starts_with(r#"{"type":"complete""#) {
        return;
    }
    if let Ok(done) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(id) = done["id"].as_str() {
            lock(running).remove(id);
        }
    }
}

/// One close message once the socket's key is revoked; nothing while it is valid.
fn revocation_close(
    watch: Option<RevocationWatch>,
    authenticator: Option<Authenticator>,
    grant: oneshot::Receiver<Grant>,
) -> BoxStream<'static, WsMessage> {
    futures::stream::once(async move {
        // The watch was made before the key was checked, so no revocation is missed.
        let (Some(mut watch), Some(authenticator), Ok(grant)) = (watch, authenticator, grant.await)
        else {
            return std::future::pending().await;
        };
        loop {
            match watch.next_about(&grant.key_id).await {
                KeyNews::Revoked => break,
                KeyNews::Unknown => {
                    let current = authenticator
                        .authenticate(grant.token.expose_secret())
                        .await;
                    if matches!(current, Ok(None)) {
                        break;
                    }
                }
            }
        }
        WsMessage::Close(CLOSE_FORBIDDEN, "the API key was revoked".into())
    })
    .boxed()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
