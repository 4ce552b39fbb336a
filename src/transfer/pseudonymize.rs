//! Pseudonymization of one DICOM instance, after the DICOM basic application level
//! confidentiality profile (PS3.15 E.1) with its "retain longitudinal temporal information"
//! option (study and series dates stay: research needs them).
//!
//! PatientName and PatientID become the pseudonym wherever they appear (sequences included);
//! every other person name, the profile's identifying attributes (original and encrypted
//! attributes sequences too) and private attributes are removed, or emptied where the IODs
//! require them; the file meta loses its AE titles and private information; an instance
//! with burned-in annotation is refused. Every UID that is not a DICOM standard UID
//! (`1.2.840.10008.…`, e.g. transfer syntaxes) nor a SOP class is replaced by `2.25.<a UUID>`.
//!
//! Derived pseudonyms and new UIDs are keyed (HMAC-SHA256) under the patient's own secret,
//! which the vault derives from the patient's data key, with the job id in the input: the same
//! original maps to the same value within a job (a study stays coherent across retries and
//! restarts) and to unrelated values in other jobs. Without the secret nobody can compute
//! them from a job id and a guessed PatientID, and once the patient is forgotten (the data
//! key destroyed) nobody can, the service included. The trial protocol, when given, is
//! stamped.

use std::io::Cursor;

use bytes::Bytes;
use chronicle_aggregates::transfer::TrialProtocol;
use dicom_core::header::Header;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::privacy::PseudonymKey;

/// The root of DICOM's own UIDs, which identify no patient and are kept.
const STANDARD_ROOT: &str = "1.2.840.10008.";

/// Attributes the profile removes (X) — identifying, and optional in the IODs we move.
const REMOVED: &[Tag] = &[
    Tag(0x0010, 0x1000), // Other Patient IDs (retired, still seen)
    tags::OTHER_PATIENT_I_DS_SEQUENCE,
    tags::OTHER_PATIENT_NAMES,
    tags::PATIENT_BIRTH_NAME,
    tags::PATIENT_MOTHER_BIRTH_NAME,
    tags::PATIENT_ADDRESS,
    tags::PATIENT_TELEPHONE_NUMBERS,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    Tag(0x0010, 0x1090), // Medical Record Locator (retired, still seen)
    tags::ETHNIC_GROUP,
    tags::OCCUPATION,
    tags::ADDITIONAL_PATIENT_HISTORY,
    tags::PATIENT_COMMENTS,
    tags::PATIENT_BIRTH_TIME,
    tags::ISSUER_OF_PATIENT_ID,
    tags::MILITARY_RANK,
    tags::BRANCH_OF_SERVICE,
    tags::COUNTRY_OF_RESIDENCE,
    tags::REGION_OF_RESIDENCE,
    tags::PATIENT_RELIGIOUS_PREFERENCE,
    tags::INSTITUTION_NAME,
    tags::INSTITUTION_ADDRESS,
    tags::INSTITUTIONAL_DEPARTMENT_NAME,
    tags::STATION_NAME,
    tags::DEVICE_SERIAL_NUMBER,
    tags::PHYSICIANS_OF_RECORD,
    tags::PERFORMING_PHYSICIAN_NAME,
    tags::NAME_OF_PHYSICIANS_READING_STUDY,
    tags::OPERATORS_NAME,
    tags::REQUESTING_PHYSICIAN,
    tags::REFERRING_PHYSICIAN_ADDRESS,
    tags::REFERRING_PHYSICIAN_TELEPHONE_NUMBERS,
    tags::ADMITTING_DIAGNOSES_DESCRIPTION,
    tags::STUDY_DESCRIPTION,
    tags::SERIES_DESCRIPTION,
    tags::DERIVATION_DESCRIPTION,
    tags::IMAGE_COMMENTS,
    tags::REQUEST_ATTRIBUTES_SEQUENCE,
    tags::MEDICAL_ALERTS,
    tags::ALLERGIES,
    tags::PROTOCOL_NAME,
    tags::ADMISSION_ID,
    tags::REQUESTED_PROCEDURE_DESCRIPTION,
    tags::REQUESTED_PROCEDURE_ID,
    tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION,
    tags::PERFORMED_PROCEDURE_STEP_ID,
    tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION,
    tags::CONTENT_SEQUENCE,
    tags::ORIGINAL_ATTRIBUTES_SEQUENCE,
    tags::ENCRYPTED_ATTRIBUTES_SEQUENCE,
];

/// UIDs that name a kind of thing (SOP classes), not an instance: kept, so a vendor's
/// private SOP class still agrees with the file meta.
const CLASS_UIDS: &[Tag] = &[
    tags::SOP_CLASS_UID,
    tags::REFERENCED_SOP_CLASS_UID,
    tags::SOP_CLASSES_IN_STUDY,
    tags::RELATED_GENERAL_SOP_CLASS_UID,
    tags::REFERENCED_SOP_CLASS_UID_IN_FILE,
];

/// What replaces the patient's identity wherever it appears.
const PATIENT_TAGS: [Tag; 2] = [tags::PATIENT_NAME, tags::PATIENT_ID];

/// Attributes the profile empties (Z) — required in many IODs, so kept present.
const EMPTIED: &[Tag] = &[
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::ACCESSION_NUMBER,
    tags::STUDY_ID,
];

/// Edits the instances of one task: pseudonymizes them when the job asks (with the
/// patient's key), and stamps its trial protocol when it has one.
#[derive(Clone)]
pub struct Pseudonymizer {
    job: Uuid,
    key: Option<PseudonymKey>,
    protocol: Option<TrialProtocol>,
}

/// Why an instance could not be pseudonymized (it is not sent).
#[derive(Debug, thiserror::Error)]
#[error("cannot pseudonymize an instance: {0}")]
pub struct PseudonymizeError(String);

impl Pseudonymizer {
    /// For a task of job `job_id`: pseudonymized under the patient's `key` when given,
    /// stamped with `protocol` when given.
    pub fn new(job_id: Uuid, key: Option<PseudonymKey>, protocol: Option<TrialProtocol>) -> Self {
        Self {
            job: job_id,
            key,
            protocol,
        }
    }

    /// True when instances are changed at all (else they pass through as they are).
    pub fn edits(&self) -> bool {
        self.key.is_some() || self.protocol.is_some()
    }

    /// HMAC-SHA256 under the patient's key of (job, purpose, value); `None` when this task
    /// does not pseudonymize.
    fn keyed(&self, purpose: &str, value: &str) -> Option<[u8; 32]> {
        let key = self.key.as_ref()?;
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
            .chain_update(self.job.as_bytes())
            .chain_update(purpose.as_bytes())
            .chain_update(b"\0")
            .chain_update(value.as_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    /// The pseudonym a patient gets when neither the task nor the job names one: stable
    /// within the job; `None` when this task does not pseudonymize.
    pub fn derived_pseudonym(&self, patient_id: &str) -> Option<String> {
        let digest = self.keyed("pseudonym", patient_id)?;
        Some(format!("PSN-{}", hex::encode(&digest[..8])))
    }

    /// The replacement of `uid` within this job: a UUID (version 8, from the keyed digest)
    /// under the `2.25` root; standard and empty UIDs, and every UID when this task does
    /// not pseudonymize, stay.
    pub fn uid(&self, uid: &str) -> String {
        let uid = uid.trim_end_matches(['\0', ' ']);
        if uid.starts_with(STANDARD_ROOT) || uid.is_empty() {
            return uid.to_owned();
        }
        let Some(digest) = self.keyed("uid", uid) else {
            return uid.to_owned();
        };
        let mut bytes = [0_u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let new = uuid::Builder::from_custom_bytes(bytes).into_uuid();
        format!("2.25.{}", new.as_u128())
    }

    /// The DICOM file `file` (with preamble) edited: pseudonymized as `pseudonym` when the
    /// job asks, stamped with its protocol when it has one.
    ///
    /// # Errors
    /// The file cannot be read or written as DICOM, or it has burned-in annotation (pixel
    /// data that may show identity cannot be pseudonymized by editing attributes).
    pub fn apply(&self, file: &[u8], pseudonym: &str) -> Result<Bytes, PseudonymizeError> {
        let mut object = OpenFileOptions::new()
            .read_preamble(ReadPreamble::Auto)
            .from_reader(Cursor::new(file))
            .map_err(|e| PseudonymizeError(e.to_string()))?;
        if self.key.is_some() {
            let burned_in = object
                .element(tags::BURNED_IN_ANNOTATION)
                .ok()
                .and_then(|e| e.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("YES"));
            if burned_in {
                return Err(PseudonymizeError(
                    "the instance has burned-in annotation (0028,0301 YES)".into(),
                ));
            }
            self.scrub(&mut object, pseudonym);
            for (tag, vr, value) in [
                (tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES"),
                (
                    tags::DEIDENTIFICATION_METHOD,
                    VR::LO,
                    "Chronicle PS3.15 basic profile, dates kept, keyed pseudonyms",
                ),
            ] {
                object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
            }
            let instance = self.uid(object.meta().media_storage_sop_instance_uid());
            object.update_meta(|meta| {
                meta.media_storage_sop_instance_uid = instance;
                meta.source_application_entity_title = None;
                meta.sending_application_entity_title = None;
                meta.receiving_application_entity_title = None;
                meta.private_information_creator_uid = None;
                meta.private_information = None;
            });
        }
        if let Some(protocol) = &self.protocol {
            let name = protocol.name.as_deref().unwrap_or(&protocol.id);
            for (tag, value) in [
                (tags::CLINICAL_TRIAL_PROTOCOL_ID, protocol.id.as_str()),
                (tags::CLINICAL_TRIAL_PROTOCOL_NAME, name),
            ] {
                object.put(DataElement::new(tag, VR::LO, PrimitiveValue::from(value)));
            }
        }
        let mut out = Vec::with_capacity(file.len());
        object
            .write_all(&mut out)
            .map_err(|e| PseudonymizeError(e.to_string()))?;
        Ok(Bytes::from(out))
    }

    /// Removes, empties and replaces throughout `object`, sequences included: the
    /// patient's name and id become `pseudonym` at every depth, every other person name
    /// goes.
    fn scrub(&self, object: &mut InMemDicomObject, pseudonym: &str) {
        let present: Vec<(Tag, VR)> = object.iter().map(|e| (e.tag(), e.vr())).collect();
        for (tag, vr) in present {
            if PATIENT_TAGS.contains(&tag) {
                object.put(DataElement::new(tag, vr, PrimitiveValue::from(pseudonym)));
            } else if tag.group() % 2 == 1 || REMOVED.contains(&tag) || vr == VR::PN {
                object.remove_element(tag);
            } else if EMPTIED.contains(&tag) {
                object.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
            } else if vr == VR::UI && !CLASS_UIDS.contains(&tag) {
                let Some(value) = object
                    .element(tag)
                    .ok()
                    .and_then(|e| e.to_str().ok())
                    .map(|s| s.into_owned())
                else {
                    continue;
                };
                let replaced: Vec<String> = value.split('\\').map(|uid| self.uid(uid)).collect();
                let value = PrimitiveValue::from(replaced.join("\\"));
                object.put(DataElement::new(tag, VR::UI, value));
            } else if vr == VR::SQ {
                object.update_value(tag, |value| {
                    if let Value::Sequence(sequence) = value {
                        for item in sequence.items_mut() {
                            self.scrub(item, pseudonym);
                        }
                    }
                });
            }
        }
    }
}
