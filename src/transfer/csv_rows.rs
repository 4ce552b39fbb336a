//! The CSVs of batch transfers and batch queries: one task per row. A batch transfer's
//! columns are `PatientID`, `StudyInstanceUID`, `SeriesInstanceUID` (optional; several
//! separated by `;` or `|`) and `Pseudonym` (optional); a batch query's are in
//! [`parse_queries`]. Every row is checked before anything is created: all or nothing, each
//! problem named with its row number (the header is row 1).

use chronicle_aggregates::query::StudyQuery;
use chronicle_aggregates::transfer::{TaskSpec, MAX_TASKS};

/// The longest CSV accepted.
pub const MAX_CSV_BYTES: usize = 4 * 1024 * 1024;

/// The fields of one CSV row, by column name (case-insensitive); missing columns read empty.
struct Row<'a> {
    headers: &'a csv::StringRecord,
    record: &'a csv::StringRecord,
}

impl Row<'_> {
    fn get(&self, name: &str) -> &str {
        self.headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .and_then(|i| self.record.get(i))
            .unwrap_or("")
    }

    fn optional(&self, name: &str) -> Option<String> {
        Some(self.get(name))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// A multi-valued field: values separated by `;` or `|`.
    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .split([';', '|'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Every row of `text` read by `read` (which also names the row's problems), or every problem
/// found, each with its row number. `required` columns must be in the header; `any_of`, when
/// given, must name at least one present column.
fn rows<T>(
    text: &str,
    required: &[&str],
    any_of: &[&str],
    read: impl Fn(&Row<'_>) -> (T, Vec<String>),
) -> Result<Vec<T>, Vec<String>> {
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
    let has = |name: &&str| headers.iter().any(|h| h.eq_ignore_ascii_case(name));
    if !required.iter().all(has) || (!any_of.is_empty() && !any_of.iter().any(has)) {
        let mut names = required.join(" and ");
        if !any_of.is_empty() {
            names = format!("one of {}", any_of.join(", "));
        }
        return Err(vec![format!("row 1: the header must name {names}")]);
    }
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let row = index + 2;
        match record {
            Ok(record) => {
                let (item, broken) = read(&Row {
                    headers: &headers,
                    record: &record,
                });
                problems.extend(broken.into_iter().map(|p| format!("row {row}: {p}")));
                items.push(item);
            }
            Err(error) => problems.push(format!("row {row}: {error}")),
        }
    }
    if items.is_empty() && problems.is_empty() {
        problems.push("the CSV has no rows".to_owned());
    }
    if items.len() > MAX_TASKS {
        problems.push(format!("a job holds at most {MAX_TASKS} rows"));
    }
    if problems.is_empty() {
        Ok(items)
    } else {
        Err(problems)
    }
}

/// The tasks of a batch transfer's CSV, or every problem found in it.
///
/// # Errors
/// Each problem, with its row number.
pub fn parse(text: &str) -> Result<Vec<TaskSpec>, Vec<String>> {
    rows(text, &["PatientID", "StudyInstanceUID"], &[], |row| {
        let task = TaskSpec {
            patient_id: row.get("PatientID").to_owned(),
            study_instance_uid: row.get("StudyInstanceUID").to_owned(),
            series_instance_uids: row.list("SeriesInstanceUID"),
            pseudonym: row.optional("Pseudonym"),
        };
        let problems = task.problems();
        (task, problems)
    })
}

/// The criteria of a batch query's CSV, or every problem found in it. Columns (any of):
/// `PatientID`, `PatientName`, `PatientBirthDate`, `AccessionNumber`, `StudyDate` (a date or
/// a range `YYYYMMDD-YYYYMMDD`, either end open), `Modalities` (several joined by `;`) and
/// `StudyDescription`.
///
/// # Errors
/// Each problem, with its row number.
pub fn parse_queries(text: &str) -> Result<Vec<StudyQuery>, Vec<String>> {
    const COLUMNS: [&str; 7] = [
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "AccessionNumber",
        "StudyDate",
        "Modalities",
        "StudyDescription",
    ];
    rows(text, &[], &COLUMNS, |row| {
        let date = row.get("StudyDate");
        let (from, to) = date.split_once('-').unwrap_or((date, date));
        let query = StudyQuery {
            patient_id: row.optional("PatientID"),
            patient_name: row.optional("PatientName"),
            patient_birth_date: row.optional("PatientBirthDate"),
            accession_number: row.optional("AccessionNumber"),
            study_date_from: Some(from.trim().to_owned()).filter(|d| !d.is_empty()),
            study_date_to: Some(to.trim().to_owned()).filter(|d| !d.is_empty()),
            modalities: row.list("Modalities"),
            study_description: row.optional("StudyDescription"),
        };
        let problems = query.problems();
        (query, problems)
    })
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

    #[test]
    fn query_rows_read_date_ranges_and_lists_and_report_bad_rows() {
        let queries = super::parse_queries(
            "PatientName,StudyDate,Modalities\n\
             Doe^J*,20260101-20260131,CT;MR\n\
             Roe^R,20260105,\n",
        )
        .unwrap();
        assert_eq!(queries[0].study_date_from.as_deref(), Some("20260101"));
        assert_eq!(queries[0].study_date_to.as_deref(), Some("20260131"));
        assert_eq!(queries[0].modalities, ["CT", "MR"]);
        assert_eq!(queries[1].study_date_to.as_deref(), Some("20260105"));
        let problems = super::parse_queries("PatientID,StudyDate\nP1,\n,2026\n").unwrap_err();
        assert!(!problems.is_empty(), "{problems:?}");
        assert!(
            problems.iter().all(|p| p.starts_with("row 3:")),
            "{problems:?}"
        );
        assert!(super::parse_queries("Foo\nbar\n").is_err());
    }
}
