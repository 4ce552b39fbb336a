//! W0: the service with nothing to do, after the warm-up: how many transactions it still
//! commits per second (`pg_stat_database.xact_commit`, reads included: each statement outside
//! a transaction block is one) and how many connections it holds.

use std::time::Duration;

use sqlx::PgPool;

use crate::report::{Figure, Goal};
use crate::server::SERVICE_APPLICATION;
use crate::sizes::Sizes;

/// PostgreSQL's backends report their transaction counts within about ten seconds of going
/// idle: the warm-up's reach the statistics before the window opens.
const SETTLE: Duration = Duration::from_secs(11);

/// The transactions committed in the bench database so far, once what ran before has reached
/// the statistics.
pub(super) async fn settled_commits(pool: &PgPool) -> anyhow::Result<i64> {
    tokio::time::sleep(SETTLE).await;
    commits(pool).await
}

/// The transactions committed in the bench database so far.
pub(super) async fn commits(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// After activity, workers look once or twice more (each at most once per its poll setting,
/// five seconds for the batch closer) before they are quiet.
const QUIET_AFTER: Duration = Duration::from_secs(10);

/// W0: the service's connections at the end of the idle window, and its commits per second
/// over it.
pub(crate) async fn idle(pool: &PgPool, sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    tokio::time::sleep(QUIET_AFTER).await;
    let before = settled_commits(pool).await?;
    tokio::time::sleep(sizes.idle_duration).await;
    let after = commits(pool).await?;
    let connections: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = $1",
    )
    .bind(SERVICE_APPLICATION)
    .fetch_one(pool)
    .await?;
    // The bench's own first read is counted in the window; its later ones are not.
    let service_commits = (after - before - 1).max(0) as f64;
    Ok(vec![
        Figure::plain("connections held by the instance", connections as f64, "")
            .goal(Goal::Below(10.5)),
        Figure::plain(
            format!("commits while idle, over {:?}", sizes.idle_duration),
            service_commits / sizes.idle_duration.as_secs_f64(),
            "commits/s",
        )
        .goal(Goal::Below(0.5)),
    ])
}
