//! A batch transfer's CSV: one task per row, columns `PatientID`, `StudyInstanceUID`,
//! `SeriesInstanceUID` (optional; several separated by `;` or `|`) and `Pseudonym`
//! (optional). Every row is checked before anything is created: all or nothing, each problem
//! named with its row number (the header is row 1).

use chronicle_aggregates::transfer::{TaskSpec, MAX_TASKS};

/// The longest CSV accepted.
pub const MAX_CSV_BYTES: usize = 4 * 1024 * 1024;

/// The tasks of a CSV, or every problem found in it.
///
/// # Errors
/// Each problem, with its row number.
pub fn parse(text: &str) -> Result<Vec<TaskSpec>, Vec<String>> {
    if text.len() > MAX_CSV_BYTES {
        return Err(vec![format!(
            "the CSV is larger than {MAX_CSV_BYTES} bytes"
        )]);
    }
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(error) => return Err(vec![format!("row 1: {error}")]),
    };
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(patient), Some(study)) = (column("PatientID"), column("StudyInstanceUID")) else {
        return Err(vec![
            "row 1: the header must name PatientID and StudyInstanceUID".to_owned(),
        ]);
    };
    let (series, pseudonym) = (column("SeriesInstanceUID"), column("Pseudonym"));
    let mut tasks = Vec::new();
    let mut problems = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let row = index + 2;
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                problems.push(format!("row {row}: {error}"));
                continue;
            }
        };
        let field = |at: Option<usize>| at.and_then(|i| record.get(i)).unwrap_or("");
        let task = TaskSpec {
            patient_id: field(Some(patient)).to_owned(),
            study_instance_uid: field(Some(study)).to_owned(),
            series_instance_uids: field(series)
                .split([';', '|'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            pseudonym: Some(field(pseudonym))
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        };
        problems.extend(
            task.problems()
                .into_iter()
                .map(|p| format!("row {row}: {p}")),
        );
        tasks.push(task);
    }
    if tasks.is_empty() && problems.is_empty() {
        problems.push("the CSV has no rows".to_owned());
    }
    if tasks.len() > MAX_TASKS {
        problems.push(format!("a job holds at most {MAX_TASKS} tasks"));
    }
    if problems.is_empty() {
        Ok(tasks)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn rows_become_tasks_with_optional_series_and_pseudonyms() {
        let tasks = parse(
            "PatientID,StudyInstanceUID,SeriesInstanceUID,Pseudonym\n\
             P1,1.2.3,,\n\
             P2, 1.2.4 ,1.2.4.1;1.2.4.2,SUBJ-2\n",
        )
        .unwrap();
        assert_eq!(tasks.len(), 2);
        assert!(tasks[0].series_instance_uids.is_empty() && tasks[0].pseudonym.is_none());
        assert_eq!(tasks[1].study_instance_uid, "1.2.4");
        assert_eq!(tasks[1].series_instance_uids, ["1.2.4.1", "1.2.4.2"]);
        assert_eq!(tasks[1].pseudonym.as_deref(), Some("SUBJ-2"));
    }

    #[test]
    fn every_bad_row_is_reported_with_its_number() {
        let problems = parse(
            "PatientID,StudyInstanceUID\n\
             P1,1.2.3\n\
             ,1.2.3\n\
             P3,not-a-uid\n\
             P4,1.2,extra\n",
        )
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("row 3: PatientID"), "{problems:?}");
        assert!(
            problems[1].starts_with("row 4: StudyInstanceUID"),
            "{problems:?}"
        );
        assert!(problems[2].starts_with("row 5:"), "{problems:?}");
    }

    #[test]
    fn a_csv_without_the_required_columns_or_rows_is_refused() {
        assert!(parse("Patient,Study\nP1,1.2\n").is_err());
        assert!(parse("PatientID,StudyInstanceUID\n").is_err());
        assert!(parse("").is_err());
    }
}
