//! The binary: clear failure without a database, database creation, schema printing.

use std::process::Command;

use crate::support::TestDb;

fn chronicle(args: &[&str], database_url: &str) -> std::process::Output {
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
