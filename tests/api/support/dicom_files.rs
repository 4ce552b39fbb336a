//! Small but real DICOM files (CT images of 2×2 pixels) written with dicom-rs, carrying the
//! identifying attributes a pseudonymization must remove.

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

/// The identifying values every test file carries.
pub const PATIENT_NAME: &str = "Doe^Jane";
/// The source's patient id.
pub const PATIENT_ID: &str = "MRN-4711";

/// One CT instance of `study`/`series`, as a DICOM file with preamble.
pub fn ct_instance(study: &str, series: &str, instance: &str, number: u32) -> Vec<u8> {
    let text = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
    let short = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    let object = InMemDicomObject::from_element_iter([
        text(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, instance),
        text(tags::STUDY_INSTANCE_UID, VR::UI, study),
        text(tags::SERIES_INSTANCE_UID, VR::UI, series),
        text(tags::FRAME_OF_REFERENCE_UID, VR::UI, &format!("{study}.99")),
        text(tags::PATIENT_NAME, VR::PN, PATIENT_NAME),
        text(tags::PATIENT_ID, VR::LO, PATIENT_ID),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, "19800101"),
        text(tags::PATIENT_SEX, VR::CS, "F"),
        text(tags::INSTITUTION_NAME, VR::LO, "General Hospital"),
        text(tags::ACCESSION_NUMBER, VR::SH, "ACC-1"),
        text(tags::STUDY_DATE, VR::DA, "20260101"),
        text(tags::STUDY_DESCRIPTION, VR::LO, "CT chest for Jane Doe"),
        text(tags::MODALITY, VR::CS, "CT"),
        text(tags::SERIES_NUMBER, VR::IS, "1"),
        text(tags::INSTANCE_NUMBER, VR::IS, &number.to_string()),
        text(tags::OPERATORS_NAME, VR::PN, "Smith^Operator"),
        text(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"),
        DataElement::new(
            tags::OTHER_PATIENT_I_DS_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![InMemDicomObject::from_element_iter([
                text(tags::PATIENT_ID, VR::LO, "MRN-OLD-0815"),
                text(tags::TYPE_OF_PATIENT_ID, VR::CS, "TEXT"),
            ])]),
        ),
        DataElement::new(
            tags::REFERENCED_PATIENT_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![InMemDicomObject::from_element_iter([
                text(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    "1.2.840.10008.3.1.2.1.1",
                ),
                text(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &format!("{study}.77"),
                ),
                text(tags::PATIENT_NAME, VR::PN, PATIENT_NAME),
            ])]),
        ),
        text(Tag(0x0009, 0x0010), VR::LO, "ACME"),
        text(Tag(0x0009, 0x1001), VR::LO, "private note on Jane"),
        short(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        short(tags::ROWS, 2),
        short(tags::COLUMNS, 2),
        short(tags::BITS_ALLOCATED, 16),
        short(tags::BITS_STORED, 12),
        short(tags::HIGH_BIT, 11),
        short(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16([1, 2, 3, 4].as_slice().into()),
        ),
    ]);
    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(instance),
        )
        .expect("file meta");
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).expect("write DICOM");
    bytes
}
