//! A real Orthanc PACS with the DICOMweb plugin (Debian's `orthanc` and `orthanc-dicomweb`),
//! started for one test on a free port with its own storage, stopped and removed on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use super::eventually;

const BINARY: &str = "/usr/sbin/Orthanc";
const DICOMWEB_PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

/// Installs Orthanc when missing, with the project's script (it takes a lock: test
/// processes run in parallel).
fn install() {
    if std::path::Path::new(BINARY).exists() && std::path::Path::new(DICOMWEB_PLUGIN).exists() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/install-orthanc");
    let status = std::process::Command::new(script)
        .status()
        .expect("run .ci/install-orthanc");
    assert!(
        status.success(),
        "Orthanc is missing and could not be installed: apt-get install orthanc orthanc-dicomweb"
    );
}

/// A running Orthanc.
pub struct Orthanc {
    /// Its REST root, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    dir: PathBuf,
    child: Child,
    http: reqwest::Client,
    user: Option<(String, String)>,
}

impl Orthanc {
    /// Starts one and waits until it answers.
    pub async fn start(name: &str) -> Self {
        Self::start_as(name, None).await
    }

    /// Starts one that accepts only HTTP basic `user` (user name, password).
    pub async fn start_as(name: &str, user: Option<(&str, &str)>) -> Self {
        install();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("chronicle-orthanc-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("orthanc dir");
        let config = json!({
            "Name": name,
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("index"),
            "HttpPort": port,
            "DicomServerEnabled": false,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": user.is_some(),
            "RegisteredUsers": user.map(|(name, password)| json!({ name: password })).unwrap_or(json!({})),
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": { "Enable": true, "Root": "/dicom-web/" },
        });
        let config_path = dir.join("orthanc.json");
        std::fs::write(&config_path, config.to_string()).expect("orthanc config");
        let child = Command::new(BINARY)
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start Orthanc");
        let orthanc = Self {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child,
            http: reqwest::Client::new(),
            user: user.map(|(name, password)| (name.to_owned(), password.to_owned())),
        };
        eventually(Duration::from_secs(30), "Orthanc to answer", || async {
            let response = orthanc.get("system").send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        orthanc
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}/{path}", self.url));
        match &self.user {
            Some((name, password)) => request.basic_auth(name, Some(password)),
            None => request,
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    /// Its DICOMweb root.
    pub fn dicomweb(&self) -> String {
        format!("{}/dicom-web", self.url)
    }

    /// Stores a DICOM file through Orthanc's own REST API.
    pub async fn upload(&self, file: Vec<u8>) {
        let response = self
            .request(reqwest::Method::POST, "instances")
            .body(file)
            .send()
            .await
            .expect("upload");
        assert!(
            response.status().is_success(),
            "upload: {}",
            response.status()
        );
    }

    /// Every stored instance's tags, simplified (`PatientName`, `SOPInstanceUID`, …).
    pub async fn instances(&self) -> Vec<Value> {
        let ids: Vec<String> = self
            .get("instances")
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("ids");
        let mut all = Vec::new();
        for id in ids {
            let tags: Value = self
                .get(&format!("instances/{id}/simplified-tags"))
                .send()
                .await
                .expect("tags")
                .json()
                .await
                .expect("tags json");
            all.push(tags);
        }
        all
    }

    /// Stops it (as if the server went down).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
