//! `strata snapshot status FILE [-w simple|json|table]`, as `etcdutl snapshot status`: the
//! database's hash, revision, number of keys and size, with etcd's definitions so the numbers
//! match what etcd's tool prints for the same file.
//!
//! - hash: CRC-32C over every bucket's name followed by each of its keys and values, buckets
//!   and keys in bbolt order;
//! - revision: the main revision of the last record of bucket `key`;
//! - total keys: records in all buckets;
//! - total size: the database's pages (the file without its SHA-256 trailer).
//!
//! Like etcd's, it walks every page (bbolt's consistency check) but does not verify the
//! trailer.

use crc::{Crc, CRC_32_ISCSI};
use serde::Serialize;

use super::SnapshotFile;
use crate::bolt::{BoltError, BoltReader};

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// etcd's `snapshot.Status`, field names as its JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Reads the status of the database in `file`.
pub fn status(file: &SnapshotFile) -> Result<Status, BoltError> {
    let reader = BoltReader::open(&file.file, file.db_len)?;
    reader.check()?;
    let mut digest = CRC32C.digest();
    let mut revision = 0;
    let mut total_key = 0;
    for name in reader.buckets()? {
        digest.update(&name);
        let is_key = name == b"key";
        reader.for_each(&name, &mut |key, value| -> Result<(), BoltError> {
            digest.update(key);
            digest.update(value);
            if is_key && key.len() >= 8 {
                revision = u64::from_be_bytes(key[..8].try_into().expect("8 bytes")) as i64;
            }
            total_key += 1;
            Ok(())
        })?;
    }
    Ok(Status {
        hash: digest.finalize(),
        revision,
        total_key,
        total_size: reader.high_water_mark() * reader.page_size() as u64,
    })
}

/// The status as etcd prints it for `-w` (`simple`, `json` or `table`).
pub fn render(status: &Status, format: &str) -> Result<String, String> {
    let size = human_bytes(status.total_size);
    match format {
        "simple" => Ok(format!(
            "{:x}, {}, {}, {size}",
            status.hash, status.revision, status.total_key
        )),
        "json" => serde_json::to_string(status).map_err(|e| e.to_string()),
        "table" => {
            let header = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let row = [
                format!("{:x}", status.hash),
                status.revision.to_string(),
                status.total_key.to_string(),
                size,
            ];
            Ok(table(&header, &row))
        }
        other => Err(format!("unsupported output format {other:?}")),
    }
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let exp = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let exp = exp.min(UNITS.len() - 1);
    let value = ((n as f64) / 1000f64.powi(exp as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exp])
    } else {
        format!("{value:.0} {}", UNITS[exp])
    }
}

/// A one-row table as etcd's tablewriter draws it: headers centred, cells right-aligned.
fn table(header: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = header
        .iter()
        .zip(row)
        .map(|(h, r)| h.len().max(r.len()))
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+";
    let heads: String = header
        .iter()
        .zip(&widths)
        .map(|(h, w)| format!("| {h:^w$} "))
        .collect::<String>()
        + "|";
    let cells: String = row
        .iter()
        .zip(&widths)
        .map(|(c, w)| format!("| {c:>w$} "))
        .collect::<String>()
        + "|";
    [rule.clone(), heads, rule.clone(), cells, rule].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_go_humanize_does() {
        assert_eq!(human_bytes(7), "7 B");
        assert_eq!(human_bytes(131_072), "131 kB");
        assert_eq!(human_bytes(8_192), "8.2 kB");
        assert_eq!(human_bytes(1_073_741_824), "1.1 GB");
    }

    #[test]
    fn renders_etcds_three_formats() {
        let s = Status {
            hash: 0xf4a5_b6c7,
            revision: 54,
            total_key: 64,
            total_size: 131_072,
        };
        assert_eq!(
            render(&s, "simple").expect("ok"),
            "f4a5b6c7, 54, 64, 131 kB"
        );
        assert_eq!(
            render(&s, "json").expect("ok"),
            r#"{"hash":4104500935,"revision":54,"totalKey":64,"totalSize":131072}"#
        );
        assert_eq!(
            render(&s, "table").expect("ok"),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | f4a5b6c7 |       54 |         64 |     131 kB |\n\
             +----------+----------+------------+------------+"
        );
        assert!(render(&s, "yaml").is_err());
    }
}
