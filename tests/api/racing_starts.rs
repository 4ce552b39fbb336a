//! Instances started at the same instant on a database that does not exist yet: both come up,
//! the database is created once, and exactly one bootstrap admin key is issued.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::support::TestDb;

/// Racing pairs started; each pair gets a database of its own.
const TRIALS: usize = 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

fn serve(url: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .arg("serve")
        .env("DATABASE_URL", url)
        .env("CHRONICLE_LISTEN", format!("127.0.0.1:{port}"))
        .env("CHRONICLE_KEY_PEPPER", "racing pepper")
        .env("RUST_LOG", "error")
        .env_remove("CHRONICLE_BOOTSTRAP_ADMIN_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chronicle serve")
}

async fn ready(child: &mut Child, port: u16) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            panic!("an instance exited while starting: {status}: {stderr}");
        }
        let answer = http
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await;
        if answer.is_ok_and(|a| a.status().is_success()) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_racing_on_a_missing_database_both_start_and_issue_one_bootstrap_key() {
    let server = TestDb::new().await;
    for trial in 0..TRIALS {
        let (name, url) = missing_database(&server);
        let ports = [free_port(), free_port()];
        let mut instances = [serve(&url, ports[0]), serve(&url, ports[1])];
        let [first, second] = &mut instances;
        tokio::join!(ready(first, ports[0]), ready(second, ports[1]));
        assert_eq!(
            count_keys(&url).await,
            1,
            "trial {trial}: bootstrap keys issued"
        );
        for instance in &mut instances {
            instance.kill().await.expect("stop");
        }
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&server.pool)
            .await
            .expect("drop the trial's database");
    }
}

/// A database name on the test server that does not exist yet (named like the test
/// databases, so a failed run's leftover is swept), and its URL.
fn missing_database(server: &TestDb) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let name = format!("chronicle_test_{now}_race{}", uuid::Uuid::new_v4().simple());
    let url = server.url();
    let (at, _) = url.rsplit_once('/').expect("a database URL");
    (name.clone(), format!("{at}/{name}"))
}

async fn count_keys(url: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let keys = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&pool)
        .await
        .expect("count keys");
    pool.close().await;
    keys
}
