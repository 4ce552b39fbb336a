//! Leadership of a projector or worker: a session-level advisory lock on a dedicated
//! connection.
//!
//! The lock lives as long as the connection: if this instance dies or loses its database
//! connection, PostgreSQL releases it and a standby takes over. The checkpoint's optimistic
//! update (see `chronicle_projections::checkpoint::advance`) guards the short window in which
//! a leader has not yet noticed that it lost its connection.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// This instance's claim to run one projector.
pub struct Leadership {
    conn: PgConnection,
}

impl Leadership {
    /// Claims `role` if no other session holds it; `None` if another does.
    pub async fn try_claim(
        options: &PgConnectOptions,
        role: &str,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = options.connect().await?;
        let claimed: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(lock_key(role))
                .fetch_one(&mut conn)
                .await?;
        if claimed {
            Ok(Some(Self { conn }))
        } else {
            conn.close().await?;
            Ok(None)
        }
    }

    /// Fails when the connection holding the lock is gone, i.e. the claim may be lost.
    pub async fn confirm(&mut self) -> Result<(), sqlx::Error> {
        self.conn.ping().await
    }
}

/// The advisory lock of a role: `projection.<name>` for projectors, or a worker's name.
fn lock_key(role: &str) -> String {
    format!("chronicle.{role}")
}
