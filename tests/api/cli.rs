//! The binary: clear failure without a database, database creation, schema printing.

use std::process::Command;

use crate::support::TestDb;

pub(crate) fn chronicle(args: &[&str], database_url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run chronicle")
}

#[test]
fn an_unreachable_database_ends_in_one_clear_line() {
    let output = chronicle(&["migrate"], "postgres://postgres@127.0.0.1:1/chronicle");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn migrate_creates_a_missing_database_and_migrates_it() {
    let db = TestDb::new().await;
    // Named like every test database, so a failed run's leftover is swept.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let name = format!("chronicle_test_{now}_cli{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let url = std::env::var("DATABASE_URL")
        .ok()
        .and_then(|base| {
            base.rsplit_once('/')
                .map(|(server, _)| format!("{server}/{name}"))
        })
        .unwrap_or(url);
    let output = chronicle(&["migrate"], &url);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let migrated: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{name}')"
    ))
    .fetch_one(&db.pool)
    .await
    .expect("pg_database");
    assert!(migrated);
    let created = chronicle::db::connect(&chronicle::db::connect_options(&url).expect("url"), 1)
        .await
        .expect("connect to the created database");
    assert!(chronicle::db::is_ready(&created).await, "not migrated");
    created.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&db.pool)
        .await
        .expect("drop");
}

#[test]
fn schema_prints_the_served_sdl() {
    let output = chronicle(&["schema"], "postgres://unused@127.0.0.1:1/none");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        chronicle::api::sdl()
    );
}

/// A database name on the test server that no test creates.
fn missing_database_url() -> (String, String) {
    let name = format!("chronicle_test_missing_{}", uuid::Uuid::new_v4().simple());
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let server = base
        .rsplit_once('/')
        .map_or(base.as_str(), |(server, _)| server);
    (format!("{server}/{name}"), name)
}

#[tokio::test]
async fn commands_that_read_refuse_a_missing_database_and_create_none() {
    let db = TestDb::new().await;
    let (url, name) = missing_database_url();
    for args in [
        &["events", "export"][..],
        &["projections", "status"],
        &["audit", "verify"],
        &["analytics", "revoke", "nobody"],
    ] {
        let output = chronicle(args, &url);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("does not exist"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    let created: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&db.pool)
            .await
            .expect("pg_database");
    assert!(!created, "a reading command created the database");
}

#[tokio::test]
async fn export_runs_with_select_rights_alone() {
    let db = TestDb::new().await;
    let app = crate::support::TestApp::spawn(&db, "export").await;
    app.ledger("x", crate::support::LedgerCommand::Open)
        .await
        .expect("open");
    app.stop().await;
    let reader = format!("reader_{}", uuid::Uuid::new_v4().simple());
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db.pool)
        .await
        .expect("name");
    sqlx::raw_sql(&format!(
        "CREATE ROLE {reader} LOGIN; GRANT SELECT ON events TO {reader};"
    ))
    .execute(&db.pool)
    .await
    .expect("reader role");
    let url = db.url().replacen("postgres@", &format!("{reader}@"), 1);
    assert!(url.contains(&reader) && url.ends_with(&database), "{url}");

    let output = chronicle(&["events", "export"], &url);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    let cleanup = format!("REVOKE ALL ON events FROM {reader}; DROP ROLE {reader};");
    sqlx::raw_sql(&cleanup)
        .execute(&db.pool)
        .await
        .expect("drop role");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = String::from_utf8_lossy(&output.stdout).lines().count();
    assert_eq!(i64::try_from(lines).expect("lines"), events);
    assert!(events > 0);
}

#[tokio::test]
async fn projections_status_shows_versions_rebuilds_and_their_failures() {
    let db = TestDb::new().await;
    let app = crate::support::TestApp::spawn(&db, "status").await;
    app.stop().await;
    chronicle_projections::rebuilds::request(&db.pool, "requests", 1, "test")
        .await
        .expect("asked for");
    sqlx::query(
        "UPDATE projection_rebuilds SET phase = 'failed', error = 'refused'
          WHERE projection = 'requests'",
    )
    .execute(&db.pool)
    .await
    .expect("failed");
    chronicle_projections::rebuilds::request(&db.pool, "batches", 1, "test")
        .await
        .expect("asked for");

    let output = chronicle(&["projections", "status"], &db.url());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |name: &str| {
        table
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("requests").contains("   1 live (rebuild failed)"),
        "{table}"
    );
    assert!(line("batches").contains("rebuild 0% (building)"), "{table}");
    assert!(line("transitions").contains("   1 live "), "{table}");

    // The failure dismissed, twice: the second time there is nothing to call off.
    let dismissed = chronicle(&["projections", "cancel", "requests"], &db.url());
    assert!(
        dismissed.status.success(),
        "{}",
        String::from_utf8_lossy(&dismissed.stderr)
    );
    let again = chronicle(&["projections", "cancel", "requests"], &db.url());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no rebuild to call off"));
    let output = chronicle(&["projections", "status"], &db.url());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!table.contains("rebuild failed"), "{table}");
}
