//! Reading and writing a data directory (layout in [`crate::model`]).

use crate::model::{CaseRecord, Caseworker, Citizen, Dataset, Department, Municipality};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

pub const MUNICIPALITY_FILE: &str = "municipality.json";
pub const CITIZENS_FILE: &str = "citizens.json";
pub const CASEWORKERS_FILE: &str = "caseworkers.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid data file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} holds a case of another department: {case_id}")]
    WrongDepartment { path: PathBuf, case_id: String },
}

/// One department's slice of a data directory: what a source service serves.
#[derive(Debug, Clone)]
pub struct DepartmentData {
    pub department: Department,
    pub caseworkers: Vec<Caseworker>,
    pub cases: Vec<CaseRecord>,
}

impl DepartmentData {
    /// One department's slice of an in-memory data set.
    pub fn slice(data: &Dataset, department: Department) -> Self {
        DepartmentData {
            department,
            caseworkers: data
                .caseworkers
                .iter()
                .filter(|c| c.department == department)
                .cloned()
                .collect(),
            cases: data
                .cases
                .iter()
                .filter(|c| c.department() == department)
                .cloned()
                .collect(),
        }
    }
}

/// Whether `dir` holds a complete data set.
pub fn exists(dir: &Path) -> bool {
    [MUNICIPALITY_FILE, CITIZENS_FILE, CASEWORKERS_FILE]
        .into_iter()
        .map(str::to_owned)
        .chain(Department::ALL.into_iter().map(Department::cases_file))
        .all(|f| dir.join(f).is_file())
}

/// Writes `data` to `dir` (created if missing). Each file is written to a temporary name and
/// renamed, so a reader never sees half a file.
pub fn write(dir: &Path, data: &Dataset) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(|source| StoreError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_json(&dir.join(MUNICIPALITY_FILE), &data.municipality)?;
    write_json(&dir.join(CITIZENS_FILE), &data.citizens)?;
    write_json(&dir.join(CASEWORKERS_FILE), &data.caseworkers)?;
    for department in Department::ALL {
        let cases: Vec<&CaseRecord> = data
            .cases
            .iter()
            .filter(|c| c.department() == department)
            .collect();
        write_json(&dir.join(department.cases_file()), &cases)?;
    }
    Ok(())
}

/// Reads a whole data set.
pub fn read(dir: &Path) -> Result<Dataset, StoreError> {
    let municipality = read_municipality(dir)?;
    let citizens: Vec<Citizen> = read_json(&dir.join(CITIZENS_FILE))?;
    let caseworkers = read_caseworkers(dir)?;
    let mut cases = Vec::new();
    for department in Department::ALL {
        cases.extend(read_department_cases(dir, department)?);
    }
    Ok(Dataset {
        municipality,
        citizens,
        caseworkers,
        cases,
    })
}

/// Reads every caseworker of every department.
pub fn read_caseworkers(dir: &Path) -> Result<Vec<Caseworker>, StoreError> {
    read_json(&dir.join(CASEWORKERS_FILE))
}

/// Reads the municipality's description.
pub fn read_municipality(dir: &Path) -> Result<Municipality, StoreError> {
    read_json(&dir.join(MUNICIPALITY_FILE))
}

/// Reads what one department's source serves: its caseworkers and its cases.
pub fn read_department(dir: &Path, department: Department) -> Result<DepartmentData, StoreError> {
    let caseworkers = read_caseworkers(dir)?;
    Ok(DepartmentData {
        department,
        caseworkers: caseworkers
            .into_iter()
            .filter(|c| c.department == department)
            .collect(),
        cases: read_department_cases(dir, department)?,
    })
}

fn read_department_cases(
    dir: &Path,
    department: Department,
) -> Result<Vec<CaseRecord>, StoreError> {
    let path = dir.join(department.cases_file());
    let cases: Vec<CaseRecord> = read_json(&path)?;
    if let Some(stray) = cases.iter().find(|c| c.department() != department) {
        return Err(StoreError::WrongDepartment {
            path,
            case_id: stray.case_id.clone(),
        });
    }
    Ok(cases)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let file = fs::File::open(path).map_err(|source| StoreError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_reader(BufReader::new(file)).map_err(|source| StoreError::Parse {
        path: path.to_owned(),
        source,
    })
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), StoreError> {
    let tmp = path.with_extension("json.tmp");
    let io_err = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::create(&tmp).map_err(io_err)?;
    let mut out = BufWriter::new(file);
    serde_json::to_writer(&mut out, value).map_err(|e| io_err(e.into()))?;
    out.flush().map_err(io_err)?;
    out.get_ref().sync_all().map_err(io_err)?;
    drop(out);
    fs::rename(&tmp, path).map_err(io_err)
}
