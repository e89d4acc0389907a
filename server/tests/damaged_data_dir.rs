//! A damaged data dir is refused at start with one line naming the path, never taken for a
//! fresh member's and bootstrapped over, never started with less data (issue 15's bad input).
//! Damage inside the log's records (bit rot, entries out of order or missing, terms going
//! back, a commit past the end) is the storage logic's and is tested over RocksDB and the
//! fault disk alike (`server/src/storage/store/tests.rs`); here are the files RocksDB keeps.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, lone_member, Cluster};

/// A stopped one-member data dir holding a few keys, flushed into table files.
fn healthy_data_dir() -> (Cluster, PathBuf) {
    let mut c = Cluster::start(1);
    for i in 0..20 {
        c.ok(&["put", &format!("k{i:02}"), "v"]);
    }
    // Defragment flushes the backend's memtable into a table file.
    c.ok(&["defrag"]);
    let status = c.terminate(0);
    assert!(status.success(), "clean stop: {status}");
    let dir = c.members[0].data_dir.clone();
    (c, dir)
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

/// Starts a member on `data_dir` (with the name the data dir was created under); returns the
/// one-line error it printed (`strata: ...`; stderr also carries the JSON log) once it exits,
/// or fails the test if it is still running after 20 s.
fn start_refused(name: &str, data_dir: &Path) -> String {
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut child = lone_member(name, data_dir, &client, &client, &peer)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            assert!(
                !status.success(),
                "a damaged data dir must not start cleanly"
            );
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let errors: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with("strata: "))
                .collect();
            assert_eq!(errors.len(), 1, "one error line: {stderr}");
            println!("{}: {}", data_dir.display(), errors[0]);
            return errors[0].to_string();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "strata started on a damaged data dir {}",
                data_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn db_files(data_dir: &Path, suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("member").join("db"))
        .expect("member/db")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect()
}

#[test]
fn damaged_databases_are_refused_naming_the_path() {
    let (c, healthy) = healthy_data_dir();
    let name = c.members[0].name.clone();
    let scratch = tempfile::tempdir().expect("tempdir");

    // CURRENT gone: RocksDB cannot find its manifest. Before, the member took the data dir for
    // a new one and bootstrapped a fresh cluster over the old files.
    let no_current = scratch.path().join("no-current");
    copy_dir(&healthy, &no_current);
    std::fs::remove_file(no_current.join("member/db/CURRENT")).expect("remove CURRENT");
    let err = start_refused(&name, &no_current);
    assert!(err.contains("member/db"), "{err}");
    assert!(err.contains("missing CURRENT file"), "{err}");
    assert!(
        !no_current.join("member/db/CURRENT").exists(),
        "nothing was bootstrapped over the damaged database"
    );

    // A table file gone: the manifest names a file that is not there.
    let no_table = scratch.path().join("no-table");
    copy_dir(&healthy, &no_table);
    let tables = db_files(&no_table, ".sst");
    assert!(!tables.is_empty(), "defragment wrote a table file");
    for t in &tables {
        std::fs::remove_file(t).expect("remove table file");
    }
    let err = start_refused(&name, &no_table);
    assert!(err.contains("member/db"), "{err}");

    // A manifest cut short.
    let torn_manifest = scratch.path().join("torn-manifest");
    copy_dir(&healthy, &torn_manifest);
    for m in db_files(&torn_manifest, "") {
        if m.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("MANIFEST-"))
        {
            let len = std::fs::metadata(&m).expect("manifest").len();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&m)
                .expect("open manifest");
            f.set_len(len / 3).expect("truncate manifest");
        }
    }
    let err = start_refused(&name, &torn_manifest);
    assert!(err.contains("member/db"), "{err}");
}
