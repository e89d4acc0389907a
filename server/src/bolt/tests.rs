//! The reader against a file real etcd 3.4.23 wrote (`etcdctl snapshot save`, trailer cut:
//! 64 records over etcd's ten buckets, a 100 KiB value, a lease, users and roles), the writer
//! against the reader, and bad input against both.

use std::io::Cursor;

use proptest::prelude::*;

use super::*;

const ETCD_34: &[u8] = include_bytes!("testdata/etcd-3.4.db");

fn entries(reader: &BoltReader<&[u8]>, bucket: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let found = reader
        .for_each(bucket, &mut |k, v| -> Result<(), BoltError> {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .expect("walk");
    assert!(found, "bucket {}", String::from_utf8_lossy(bucket));
    out
}

#[test]
fn reads_a_file_real_etcd_wrote() {
    let reader = BoltReader::open(ETCD_34, ETCD_34.len() as u64).expect("open");
    assert_eq!(reader.page_size(), 4096);
    assert_eq!(reader.high_water_mark() * 4096, ETCD_34.len() as u64);
    let names: Vec<String> = reader
        .buckets()
        .expect("buckets")
        .into_iter()
        .map(|b| String::from_utf8(b).expect("utf-8"))
        .collect();
    assert_eq!(
        names,
        [
            "alarm",
            "auth",
            "authRoles",
            "authUsers",
            "cluster",
            "key",
            "lease",
            "members",
            "members_removed",
            "meta"
        ]
    );
    let total: usize = names
        .iter()
        .map(|n| entries(&reader, n.as_bytes()).len())
        .sum();
    assert_eq!(total, 64, "etcdctl snapshot status: totalKey 64");
    let big = entries(&reader, b"key")
        .into_iter()
        .map(|(_, v)| v.len())
        .max()
        .expect("keys");
    assert!(big > 100_000, "the 100 KiB value spans overflow pages");
    assert!(reader.check().expect("consistent") > 2);
}

type Items = Vec<(Vec<u8>, Vec<u8>)>;

fn write(buckets: &[(&[u8], Items)]) -> Vec<u8> {
    let mut writer = BoltWriter::new(Cursor::new(Vec::new())).expect("new");
    for (name, items) in buckets {
        let mut bucket = writer.bucket(name).expect("bucket");
        for (k, v) in items {
            bucket.put(k, v).expect("put");
        }
        bucket.finish().expect("finish");
    }
    let (out, len) = writer.finish(7).expect("finish");
    let bytes = out.into_inner();
    assert_eq!(bytes.len() as u64, len);
    assert_eq!(len % 512, 0);
    bytes
}

#[test]
fn written_files_read_back_exactly() {
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000u32)
        .map(|i| (format!("{i:017}").into_bytes(), vec![(i % 251) as u8; 300]))
        .collect();
    let mixed = vec![
        (b"a".to_vec(), Vec::new()),
        (b"b".to_vec(), vec![9u8; 100 * 1024]),
        (b"c".to_vec(), b"small".to_vec()),
    ];
    let small = vec![(b"x".to_vec(), b"y".to_vec())];
    let buckets: Vec<(&[u8], Items)> = vec![
        (b"meta", small.clone()),
        (b"key", many.clone()),
        (b"alarm", Vec::new()),
        (b"lease", mixed.clone()),
    ];
    let bytes = write(&buckets);
    let reader = BoltReader::open(bytes.as_slice(), bytes.len() as u64).expect("open");
    assert_eq!(reader.tx_id(), 7);
    let pages = reader.check().expect("consistent");
    assert_eq!(
        pages + 2,
        reader.high_water_mark(),
        "every page but the metas is reachable (there is no freelist)"
    );
    assert_eq!(entries(&reader, b"key"), many);
    assert_eq!(entries(&reader, b"lease"), mixed);
    assert_eq!(entries(&reader, b"meta"), small);
    assert!(entries(&reader, b"alarm").is_empty());
    assert_eq!(
        reader.buckets().expect("buckets"),
        [
            b"alarm".to_vec(),
            b"key".to_vec(),
            b"lease".to_vec(),
            b"meta".to_vec()
        ]
    );
    assert!(!reader
        .for_each(b"nope", &mut |_, _| -> Result<(), BoltError> { Ok(()) })
        .expect("walk"));
}

#[test]
fn large_values_are_packed_like_bbolts_nodes() {
    let items: Items = (0..1000u32)
        .map(|i| (format!("{i:08}").into_bytes(), vec![7u8; 4096]))
        .collect();
    let bytes = write(&[(b"key", items.clone())]);
    let data = items.len() * (8 + 4096);
    assert!(
        bytes.len() < data * 11 / 10,
        "{} bytes of file for {data} bytes of data",
        bytes.len()
    );
    let reader = BoltReader::open(bytes.as_slice(), bytes.len() as u64).expect("open");
    reader.check().expect("consistent");
    assert_eq!(entries(&reader, b"key"), items);
}

#[test]
fn the_writer_refuses_misuse() {
    let mut writer = BoltWriter::new(Cursor::new(Vec::new())).expect("new");
    let mut bucket = writer.bucket(b"b").expect("bucket");
    bucket.put(b"2", b"").expect("put");
    assert!(bucket.put(b"1", b"").is_err(), "descending");
    assert!(bucket.put(b"2", b"").is_err(), "duplicate");
    assert!(bucket.put(b"", b"").is_err(), "empty key");
    bucket.finish().expect("finish");
    assert!(writer.bucket(b"b").is_err(), "bucket twice");
}

#[test]
fn damaged_files_are_errors() {
    assert!(matches!(
        BoltReader::open(&[0u8; 100][..], 100),
        Err(BoltError::NotBolt(_))
    ));
    let truncated = &ETCD_34[..ETCD_34.len() - 4096];
    assert!(BoltReader::open(truncated, truncated.len() as u64).is_err());
}

proptest! {
    #![proptest_config(crate::fuzzing::config())]
    /// Whatever bytes a file holds, reading it ends in entries or an error, never a panic, a
    /// hang or a huge allocation.
    #[test]
    fn damaged_files_never_panic(flips in proptest::collection::vec((0usize..131_072, any::<u8>()), 1..16)) {
        let mut bytes = ETCD_34.to_vec();
        for (at, b) in flips {
            bytes[at] = b;
        }
        if let Ok(reader) = BoltReader::open(bytes.as_slice(), bytes.len() as u64) {
            let _ = reader.check();
            if let Ok(names) = reader.buckets() {
                for name in names {
                    let _ = reader.for_each(&name, &mut |_, _| -> Result<(), BoltError> { Ok(()) });
                }
            }
        }
    }
}
