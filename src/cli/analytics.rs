//! `analytics grant|revoke <login>`: who may connect to this database to read the analytics
//! schema, and with which limits.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;

use super::write_stdout;

/// The limits a granted login runs under in this database.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Longest statement.
    pub statement_timeout: Duration,
    /// Longest idle time inside a transaction.
    pub idle_timeout: Duration,
}

/// Lets `login` (made if missing, without a password) connect to this database and read the
/// analytics schema as a member of `chronicle_analytics`, under `limits` in this database.
pub(super) async fn grant(pool: &PgPool, login: &str, limits: Limits) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(login)
            .fetch_one(&mut *tx)
            .await?;
    let mut statements = Vec::new();
    if !exists {
        statements.push("CREATE ROLE %1$I LOGIN");
    }
    statements.extend([
        "GRANT chronicle_analytics TO %1$I",
        "GRANT CONNECT ON DATABASE %2$I TO %1$I",
        "ALTER ROLE %1$I IN DATABASE %2$I SET statement_timeout = %3$L",
        "ALTER ROLE %1$I IN DATABASE %2$I SET idle_in_transaction_session_timeout = %4$L",
    ]);
    let limits = [
        format!("{}ms", limits.statement_timeout.as_millis()),
        format!("{}ms", limits.idle_timeout.as_millis()),
    ];
    for statement in statements {
        run(&mut tx, statement, login, &limits).await?;
    }
    tx.commit().await?;
    let database = database(pool).await?;
    write_stdout(&format!(
        "{login} may connect to {database} and read the schema analytics (statements at most \
         {}, idle in a transaction at most {}){}\n",
        limits[0],
        limits[1],
        if exists {
            ""
        } else {
            "; the login was made without a password: set one with ALTER ROLE … PASSWORD"
        }
    ))
}

/// Takes back what [`grant`] gave `login` in this database (the login itself stays).
pub(super) async fn revoke(pool: &PgPool, login: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for statement in [
        "ALTER ROLE %1$I IN DATABASE %2$I RESET ALL",
        "REVOKE CONNECT ON DATABASE %2$I FROM %1$I",
        "REVOKE chronicle_analytics FROM %1$I",
    ] {
        run(&mut tx, statement, login, &[String::new(), String::new()]).await?;
    }
    tx.commit().await?;
    write_stdout(&format!(
        "{login} may no longer connect to {}\n",
        database(pool).await?
    ))
}

/// Runs `template` with the login (`%1$I`), this database (`%2$I`) and `limits` (`%3$L`,
/// `%4$L`) quoted by PostgreSQL's own `format`.
async fn run(
    tx: &mut sqlx::PgConnection,
    template: &str,
    login: &str,
    limits: &[String; 2],
) -> anyhow::Result<()> {
    let statement: String =
        sqlx::query_scalar("SELECT format($1, $2::text, current_database(), $3::text, $4::text)")
            .bind(template)
            .bind(login)
            .bind(&limits[0])
            .bind(&limits[1])
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(&statement)
        .persistent(false)
        .execute(&mut *tx)
        .await
        .with_context(|| statement.clone())?;
    Ok(())
}

async fn database(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
}
