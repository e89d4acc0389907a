//! Writes the store has made but the caller has not yet taken ([`super::MvccStore::take_batch`])
//! and written to the backend.
//!
//! Every read of the store goes through here, so it sees its own staged writes whether or not
//! the caller has flushed them: a staged record (or staged deletion) shadows the backend's.
//! Once a batch is taken, the caller must write it before the next read; a record the index
//! points at but neither layer holds stops the node (see `MvccStore::read_kv`).

use std::collections::BTreeMap;

use crate::backend::{BackendError, Bucket, KvBackend, Scan, WriteBatch};

#[derive(Clone, Debug, Default)]
pub(crate) struct Staged {
    /// `Bucket::Key` records: `None` deletes.
    records: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    meta: BTreeMap<&'static [u8], Vec<u8>>,
}

impl Staged {
    pub fn put_record(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.records.insert(key, Some(value));
    }

    pub fn delete_record(&mut self, key: Vec<u8>) {
        self.records.insert(key, None);
    }

    pub fn put_meta(&mut self, name: &'static [u8], value: Vec<u8>) {
        self.meta.insert(name, value);
    }

    /// All staged changes, records first, each bucket in key order.
    pub fn take(&mut self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for (key, value) in std::mem::take(&mut self.records) {
            match value {
                Some(value) => batch.put(Bucket::Key, key, value),
                None => batch.delete(Bucket::Key, key),
            }
        }
        for (name, value) in std::mem::take(&mut self.meta) {
            batch.put(Bucket::Meta, name.to_vec(), value);
        }
        batch
    }

    pub fn get_record(
        &self,
        backend: &dyn KvBackend,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, BackendError> {
        match self.records.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => backend.get(Bucket::Key, key),
        }
    }

    /// [`Staged::get_record`] of many keys, the ones not staged looked up together.
    pub fn get_records(
        &self,
        backend: &dyn KvBackend,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let unstaged: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| !self.records.contains_key(k.as_slice()))
            .cloned()
            .collect();
        let mut stored = backend.get_many(Bucket::Key, &unstaged)?.into_iter();
        Ok(keys
            .iter()
            .map(|k| match self.records.get(k.as_slice()) {
                Some(staged) => staged.clone(),
                None => stored.next().expect("one answer per key asked"),
            })
            .collect())
    }

    /// Visits the records `start <= key < end` of the backend with the staged changes applied,
    /// in key order, until `visit` says stop.
    pub fn scan_records(
        &self,
        backend: &dyn KvBackend,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Scan,
    ) -> Result<(), BackendError> {
        let Some(bounds) = super::key_index::key_bounds(start, end) else {
            return Ok(());
        };
        let mut staged = self.records.range::<[u8], _>(bounds).peekable();
        let mut stopped = false;
        backend.scan(Bucket::Key, start, end, &mut |key, value| {
            // Staged records that sort before this backend record come first.
            while let Some((skey, svalue)) = staged.next_if(|(skey, _)| skey.as_slice() < key) {
                if let Some(svalue) = svalue {
                    if visit(skey, svalue) == Scan::Stop {
                        stopped = true;
                        return Scan::Stop;
                    }
                }
            }
            let verdict = match staged.next_if(|(skey, _)| skey.as_slice() == key) {
                Some((_, Some(svalue))) => visit(key, svalue),
                Some((_, None)) => Scan::Continue,
                None => visit(key, value),
            };
            stopped = verdict == Scan::Stop;
            verdict
        })?;
        if stopped {
            return Ok(());
        }
        for (skey, svalue) in staged {
            if let Some(svalue) = svalue {
                if visit(skey, svalue) == Scan::Stop {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    #[test]
    fn staged_changes_shadow_the_backend() {
        let mut backend = MemBackend::new();
        let mut batch = WriteBatch::default();
        for key in [b"b", b"d", b"f"] {
            batch.put(Bucket::Key, key.to_vec(), b"disk".to_vec());
        }
        backend.write(batch).unwrap();

        let mut staged = Staged::default();
        staged.put_record(b"a".to_vec(), b"mem".to_vec());
        staged.put_record(b"d".to_vec(), b"mem".to_vec());
        staged.delete_record(b"f".to_vec());
        staged.put_record(b"g".to_vec(), b"mem".to_vec());

        let mut seen = Vec::new();
        staged
            .scan_records(&backend, b"", None, &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                Scan::Continue
            })
            .unwrap();
        let expect: Vec<(Vec<u8>, Vec<u8>)> =
            [("a", "mem"), ("b", "disk"), ("d", "mem"), ("g", "mem")]
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
        assert_eq!(seen, expect);
        assert_eq!(staged.get_record(&backend, b"f").unwrap(), None);
        assert_eq!(
            staged.get_record(&backend, b"b").unwrap(),
            Some(b"disk".to_vec())
        );

        let mut first_two = Vec::new();
        staged
            .scan_records(&backend, b"", Some(b"z"), &mut |k, _| {
                first_two.push(k.to_vec());
                if first_two.len() == 2 {
                    Scan::Stop
                } else {
                    Scan::Continue
                }
            })
            .unwrap();
        assert_eq!(first_two, vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
