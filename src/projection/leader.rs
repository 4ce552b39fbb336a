//! Leadership of a projector: a session-level advisory lock held on a dedicated connection.
//!
//! The lock lives as long as the connection: if this instance dies or loses its database
//! connection, PostgreSQL releases it and a standby takes over. The checkpoint's optimistic
//! update (see `chronicle_projections::checkpoint::advance`) guards the short window in which
//! a leader has not yet noticed that it lost its connection.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// This instance's claim to run one projector.
pub(crate) struct Leadership {
    conn: PgConnection,
}

impl Leadership {
    /// Claims `projector` if no other session holds it; `None` if another does.
    pub(crate) async fn try_claim(
        options: &PgConnectOptions,
        projector: &str,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = options.connect().await?;
        let claimed: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(lock_key(projector))
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
    pub(crate) async fn confirm(&mut self) -> Result<(), sqlx::Error> {
        self.conn.ping().await
    }
}

fn lock_key(projector: &str) -> String {
    format!("chronicle.projection.{projector}")
}
