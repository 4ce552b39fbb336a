//! Analysts' logins (`chronicle analytics grant|revoke`): CONNECT on their own database
//! alone, no temporary tables, their timeouts, and nothing left after a revoke.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::cli::chronicle;
use crate::support::TestDb;

/// A database name the test databases' sweeper knows (dropped after six hours if left).
fn database_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    format!("chronicle_test_{now}_{}", uuid::Uuid::new_v4().simple())
}

/// What the analyst could and could not do.
#[derive(Debug)]
struct Seen {
    timeouts: (String, String),
    temp_table: Result<(), String>,
    analytics_rows: Result<i64, String>,
    events: Result<i64, String>,
    other_database: Result<(), String>,
}

async fn as_analyst(granted: PgConnectOptions, other: PgConnectOptions) -> Seen {
    let mut conn = PgConnection::connect_with(&granted)
        .await
        .expect("the analyst connects");
    let show = |setting: &'static str| sqlx::query_scalar::<_, String>(setting);
    let timeouts = (
        show("SHOW statement_timeout")
            .fetch_one(&mut conn)
            .await
            .expect("show"),
        show("SHOW idle_in_transaction_session_timeout")
            .fetch_one(&mut conn)
            .await
            .expect("show"),
    );
    let temp_table = sqlx::query("CREATE TEMP TABLE scratch (x int)")
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let analytics_rows = sqlx::query_scalar("SELECT count(*) FROM analytics.usage_daily")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string());
    let events = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string());
    let other_database = PgConnection::connect_with(&other)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    Seen {
        timeouts,
        temp_table,
        analytics_rows,
        events,
        other_database,
    }
}

#[tokio::test]
async fn an_analyst_reads_its_own_databases_analytics_alone_within_its_limits() {
    let db = TestDb::new().await;
    let (granted, other) = (database_name(), database_name());
    let login = format!(
        "analyst_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let url = |name: &str| {
        let (server, _) = db
            .url()
            .rsplit_once('/')
            .map(|(s, d)| (s.to_owned(), d.to_owned()))
            .expect("url");
        format!("{server}/{name}")
    };
    for name in [&granted, &other] {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&db.pool)
            .await
            .expect("create");
        let migrated = chronicle(&["migrate"], &url(name));
        assert!(
            migrated.status.success(),
            "{}",
            String::from_utf8_lossy(&migrated.stderr)
        );
    }
    let grant = [
        "analytics",
        "grant",
        &login,
        "--statement-timeout-secs",
        "5",
    ];
    let granted_out = chronicle(&grant, &url(&granted));

    // As an analyst's client connects: none of the service's session settings.
    let analyst = PgConnectOptions::new()
        .host(db.options.get_host())
        .port(db.options.get_port())
        .username(&login);
    let seen = as_analyst(
        analyst.clone().database(&granted),
        analyst.clone().database(&other),
    )
    .await;
    let revoked = chronicle(&["analytics", "revoke", &login], &url(&granted));
    let after_revoke = PgConnection::connect_with(&analyst.clone().database(&granted)).await;
    for name in [&granted, &other] {
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&db.pool)
            .await
            .expect("drop database");
    }
    sqlx::query(&format!("DROP ROLE {login}"))
        .execute(&db.pool)
        .await
        .expect("drop the login");

    assert!(
        granted_out.status.success(),
        "{}",
        String::from_utf8_lossy(&granted_out.stderr)
    );
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert_eq!(
        seen.timeouts,
        ("5s".to_owned(), "1min".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.temp_table
            .as_ref()
            .is_err_and(|e| e.contains("permission denied")),
        "{seen:?}"
    );
    assert_eq!(seen.analytics_rows, Ok(0), "{seen:?}");
    assert!(
        seen.events
            .as_ref()
            .is_err_and(|e| e.contains("permission denied")),
        "{seen:?}"
    );
    assert!(
        seen.other_database
            .as_ref()
            .is_err_and(|e| e.contains("permission denied for database")),
        "{seen:?}"
    );
    assert!(after_revoke.is_err(), "a revoked analyst still connects");
}
