//! A DICOMweb client for one registered server: QIDO-RS to find a study's series and
//! instances, WADO-RS to retrieve one instance, STOW-RS to store one. Instances move one at a
//! time, so a study of any size is never held whole in memory.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use chronicle_aggregates::dicom_server::{ServerAuth, ServerSpec};
use chronicle_aggregates::query::{StudyMatch, StudyQuery};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::retry_rules::retryable_status;

/// The largest instance moved: one instance is held in memory while it is edited and
/// stored (a whole study never is).
const MAX_INSTANCE_BYTES: usize = 2 << 30;

/// Tries of one HTTP call before its failure is reported (as transient or not).
const CALL_TRIES: usize = 3;

/// A DICOMweb failure: transient ones are worth retrying later.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DicomWebError {
    /// Unreachable, timed out, 408/429/5xx.
    pub transient: bool,
    /// The HTTP status, when the server answered.
    pub status: Option<StatusCode>,
    /// What went wrong, for the task's message.
    pub message: String,
}

impl DicomWebError {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            transient: false,
            status: None,
            message: message.into(),
        }
    }
}

/// One server's DICOMweb endpoints.
#[derive(Clone)]
pub struct DicomWeb {
    http: Client,
    name: String,
    base_url: String,
    authorization: Option<HeaderValue>,
}

/// The value of `tag` in a DICOM JSON dataset, as text.
fn text(dataset: &Value, tag: &str) -> Option<String> {
    dataset.get(tag)?.get("Value")?.get(0).and_then(|v| {
        v.as_str()
            .map(str::to_owned)
            .or_else(|| Some(v.to_string()))
    })
}

/// Every value of `tag` in a DICOM JSON dataset, as text.
fn values(dataset: &Value, tag: &str) -> Vec<String> {
    dataset
        .get(tag)
        .and_then(|e| e.get("Value"))
        .and_then(Value::as_array)
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `Authorization` header for `auth`, read from its environment variable.
fn authorization(auth: Option<&ServerAuth>) -> Result<Option<HeaderValue>, DicomWebError> {
    use base64::Engine;
    let Some(auth) = auth else {
        return Ok(None);
    };
    let (ServerAuth::Basic { secret_env } | ServerAuth::Bearer { secret_env }) = auth;
    let secret = std::env::var(secret_env).map_err(|_| {
        DicomWebError::permanent(format!(
            "the variable {secret_env} holding the server's credentials is not set"
        ))
    })?;
    let value = match auth {
        ServerAuth::Basic { .. } => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(secret)
        ),
        ServerAuth::Bearer { .. } => format!("Bearer {secret}"),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        DicomWebError::permanent(format!(
            "the variable {secret_env} holds an invalid credential"
        ))
    })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

impl DicomWeb {
    /// The client for server `name` set up as `spec`.
    ///
    /// # Errors
    /// Its credentials' variable is missing or invalid.
    pub fn new(http: Client, name: &str, spec: &ServerSpec) -> Result<Self, DicomWebError> {
        Ok(Self {
            http,
            name: name.to_owned(),
            base_url: spec.base_url.trim_end_matches('/').to_owned(),
            authorization: authorization(spec.auth.as_ref())?,
        })
    }

    fn request(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    /// Sends what `build` makes, retrying transient failures a few times.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, DicomWebError> {
        let once = || async {
            let started = std::time::Instant::now();
            let result = self.send_once(what, &build).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(error) if error.transient => "transient",
                Err(_) => "failed",
            };
            crate::metrics::call("dicomweb", outcome, started.elapsed());
            result
        };
        once.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_times(CALL_TRIES - 1)
                .with_jitter(),
        )
        .when(|error: &DicomWebError| error.transient)
        .await
    }

    /// One try of what `build` makes.
    async fn send_once(
        &self,
        what: &str,
        build: &impl Fn() -> RequestBuilder,
    ) -> Result<Response, DicomWebError> {
        let response = self
            .request(build())
            .send()
            .await
            .map_err(|error| DicomWebError {
                transient: true,
                status: None,
                message: format!("{what} at {}: {error}", self.name),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(DicomWebError {
            transient: retryable_status(status),
            status: Some(status),
            message: format!(
                "{what} at {}: HTTP {status}: {}",
                self.name,
                body.chars().take(300).collect::<String>()
            ),
        })
    }

    /// A QIDO-RS search at `path`; a 404 reads as no match.
    async fn search(&self, what: &str, path: &str) -> Result<Vec<Value>, DicomWebError> {
        let url = format!("{}/{path}", self.base_url);
        let response = match self
            .send(what, || {
                self.http.get(&url).header(ACCEPT, "application/dicom+json")
            })
            .await
        {
            Err(error) if error.status == Some(StatusCode::NOT_FOUND) => return Ok(Vec::new()),
            other => other?,
        };
        self.datasets(response, what).await
    }

    /// The DICOM JSON datasets of a QIDO-RS answer (none for 204).
    async fn datasets(&self, response: Response, what: &str) -> Result<Vec<Value>, DicomWebError> {
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Vec::new());
        }
        let found: Value = response.json().await.map_err(|error| DicomWebError {
            transient: true,
            status: None,
            message: format!("{what} at {}: unreadable answer: {error}", self.name),
        })?;
        Ok(found.as_array().cloned().unwrap_or_default())
    }

    /// The patient id and series UIDs of a study (`None` when the server does not have it).
    ///
    /// # Errors
    /// The server failed.
    pub async fn study(&self, study: &str) -> Result<Option<(String, Vec<String>)>, DicomWebError> {
        let studies = self
            .search(
                "finding the study",
                &format!("studies?StudyInstanceUID={study}"),
            )
            .await?;
        let Some(found) = studies.first() else {
            return Ok(None);
        };
        let patient = text(found, "00100020").unwrap_or_default();
        let series = self
            .search("listing the series", &format!("studies/{study}/series"))
            .await?;
        let series = series.iter().filter_map(|s| text(s, "0020000E")).collect();
        Ok(Some((patient, series)))
    }

    /// The studies matching `query` (at most `limit`; one search per modality when several
    /// are given, merged).
    ///
    /// # Errors
    /// The server failed.
    pub async fn find_studies(
        &self,
        query: &StudyQuery,
        limit: usize,
    ) -> Result<Vec<StudyMatch>, DicomWebError> {
        let mut params: Vec<(&str, String)> = [
            ("PatientID", &query.patient_id),
            ("PatientName", &query.patient_name),
            ("PatientBirthDate", &query.patient_birth_date),
            ("AccessionNumber", &query.accession_number),
            ("StudyDescription", &query.study_description),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect();
        match (&query.study_date_from, &query.study_date_to) {
            (None, None) => {}
            (from, to) => params.push((
                "StudyDate",
                format!(
                    "{}-{}",
                    from.as_deref().unwrap_or(""),
                    to.as_deref().unwrap_or("")
                ),
            )),
        }
        params.push(("limit", limit.to_string()));
        for field in ["00081030", "00080061", "00201206", "00201208"] {
            params.push(("includefield", field.to_owned()));
        }
        let modalities: Vec<Option<&String>> = if query.modalities.is_empty() {
            vec![None]
        } else {
            query.modalities.iter().map(Some).collect()
        };
        let url = format!("{}/studies", self.base_url);
        let mut found: Vec<StudyMatch> = Vec::new();
        for modality in modalities {
            let mut params = params.clone();
            if let Some(modality) = modality {
                params.push(("ModalitiesInStudy", modality.clone()));
            }
            let response = self
                .send("searching studies", || {
                    self.http
                        .get(&url)
                        .query(&params)
                        .header(ACCEPT, "application/dicom+json")
                })
                .await?;
            for study in self.datasets(response, "searching studies").await? {
                let Some(uid) = text(&study, "0020000D") else {
                    continue;
                };
                if found.iter().any(|f| f.study_instance_uid == uid) {
                    continue;
                }
                let count = |tag| text(&study, tag).and_then(|n| n.trim().parse().ok());
                found.push(StudyMatch {
                    patient_id: text(&study, "00100020").unwrap_or_default(),
                    study_instance_uid: uid,
                    study_date: text(&study, "00080020"),
                    modalities: values(&study, "00080061"),
                    description: text(&study, "00081030"),
                    series: count("00201206"),
                    instances: count("00201208"),
                });
            }
        }
        Ok(found)
    }

    /// The SOP instance UIDs of a series.
    ///
    /// # Errors
    /// The server failed.
    pub async fn instances(&self, study: &str, series: &str) -> Result<Vec<String>, DicomWebError> {
        let found = self
            .search(
                "listing the instances",
                &format!("studies/{study}/series/{series}/instances"),
            )
            .await?;
        Ok(found.iter().filter_map(|i| text(i, "00080018")).collect())
    }

    /// One instance as a DICOM file (WADO-RS, the single part of a multipart/related answer).
    ///
    /// # Errors
    /// The server failed or sent something that is not one DICOM part.
    pub async fn retrieve(
        &self,
        study: &str,
        series: &str,
        instance: &str,
    ) -> Result<Bytes, DicomWebError> {
        let url = format!(
            "{}/studies/{study}/series/{series}/instances/{instance}",
            self.base_url
        );
        let response = self
            .send("retrieving an instance", || {
                self.http
                    .get(&url)
                    .header(ACCEPT, "multipart/related; type=\"application/dicom\"")
            })
            .await?;
        let boundary = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(boundary_of)
            .ok_or_else(|| {
                DicomWebError::permanent(format!(
                    "{} sent an instance without a multipart boundary",
                    self.name
                ))
            })?;
        let mut response = response;
        let mut body = Vec::new();
        loop {
            let chunk = response.chunk().await.map_err(|error| DicomWebError {
                transient: true,
                status: None,
                message: format!("retrieving an instance at {}: {error}", self.name),
            })?;
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > MAX_INSTANCE_BYTES {
                return Err(DicomWebError::permanent(format!(
                    "{} sent an instance larger than {} MiB",
                    self.name,
                    MAX_INSTANCE_BYTES >> 20
                )));
            }
            body.extend_from_slice(&chunk);
        }
        single_part(&body, &boundary).ok_or_else(|| {
            DicomWebError::permanent(format!(
                "{} sent an instance that is not one multipart part",
                self.name
            ))
        })
    }

    /// Stores one DICOM file (STOW-RS).
    ///
    /// # Errors
    /// The server refused it (not transient) or failed.
    pub async fn store(&self, file: Bytes) -> Result<(), DicomWebError> {
        let boundary = format!("chronicle-{}", uuid::Uuid::new_v4().simple());
        let mut body = Vec::with_capacity(file.len() + 200);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(&file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = Bytes::from(body);
        let url = format!("{}/studies", self.base_url);
        let content_type =
            format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
        let response = self
            .send("storing an instance", || {
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, &content_type)
                    .header(ACCEPT, "application/dicom+json")
                    .body(body.clone())
            })
            .await?;
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if let Some(failed) = answer.get("00081198").and_then(|f| f.get("Value")) {
            let reason = failed
                .get(0)
                .and_then(|f| text(f, "00081197"))
                .unwrap_or_else(|| "unknown".into());
            return Err(DicomWebError::permanent(format!(
                "{} rejected an instance (failure reason {reason})",
                self.name
            )));
        }
        Ok(())
    }
}

/// The `boundary` parameter of a multipart content type.
fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        (name.trim().eq_ignore_ascii_case("boundary"))
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The body of the one part of a multipart message.
fn single_part(body: &[u8], boundary: &str) -> Option<Bytes> {
    let opening = format!("--{boundary}");
    let closing = format!("\r\n--{boundary}");
    let start = find(body, opening.as_bytes())? + opening.len();
    let headers_end = find(&body[start..], b"\r\n\r\n")? + start + 4;
    let end = find(&body[headers_end..], closing.as_bytes())? + headers_end;
    Some(Bytes::copy_from_slice(&body[headers_end..end]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::{boundary_of, single_part};

    #[test]
    fn the_one_part_of_a_multipart_answer_is_found_by_its_boundary() {
        let body = b"--xyz\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--x\r\n--xyz--\r\n";
        let boundary =
            boundary_of("multipart/related; type=\"application/dicom\"; boundary=\"xyz\"");
        assert_eq!(boundary.as_deref(), Some("xyz"));
        assert_eq!(
            single_part(body, "xyz").as_deref(),
            Some(&b"DICM\r\n--x"[..])
        );
        assert_eq!(single_part(b"--xyz\r\nno end", "xyz"), None);
    }
}
