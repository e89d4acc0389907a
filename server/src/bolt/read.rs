//! Reading a bbolt file: the meta pages, the root bucket, the buckets' B+trees.
//!
//! Invariants the reader holds whatever the file contains: a page is read only after its id
//! and overflow are checked against the high-water mark and the file's length; every element
//! offset and length is checked against its page; a walk deeper than [`MAX_DEPTH`] is a
//! cycle or a forged tree and is refused. Nothing panics on bad input.

use std::collections::HashSet;

use super::*;

/// What [`BoltReader::for_each`] calls with each key and value.
pub type Visit<'a, E> = dyn FnMut(&[u8], &[u8]) -> Result<(), E> + 'a;

/// Deeper trees are cycles: a bbolt tree of 4 KiB pages holding 2^64 keys is 20 levels deep.
const MAX_DEPTH: usize = 64;

/// An open bbolt database.
#[derive(Debug)]
pub struct BoltReader<R: ReadAt> {
    source: R,
    page_size: usize,
    /// The root bucket's page.
    root: u64,
    high_water_mark: u64,
    tx_id: u64,
}

/// The meta struct of one meta page.
#[derive(Debug, Clone, Copy)]
struct Meta {
    page_size: usize,
    root: u64,
    high_water_mark: u64,
    tx_id: u64,
}

/// One leaf entry of a tree walk.
struct Entry<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
}

fn corrupt(what: impl Into<String>) -> BoltError {
    BoltError::Corrupt(what.into())
}

fn parse_meta(bytes: &[u8], len: u64) -> Result<Meta, String> {
    let m = PAGE_HEADER_SIZE;
    let field = |at: usize| u64_at(bytes, m + at).ok_or("short meta page");
    let magic = u32_at(bytes, m).ok_or("short meta page")?;
    if magic != MAGIC {
        return Err(format!("bad magic {magic:#x}"));
    }
    let version = u32_at(bytes, m + 4).ok_or("short meta page")?;
    if version != VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let checked = bytes
        .get(m..m + META_CHECKED_SIZE)
        .ok_or("short meta page")?;
    if fnv1a64(checked) != field(META_CHECKED_SIZE)? {
        return Err("meta checksum mismatch".into());
    }
    let page_size = u32_at(bytes, m + 8).ok_or("short meta page")? as usize;
    if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
        return Err(format!("page size {page_size}"));
    }
    let meta = Meta {
        page_size,
        root: field(16)?,
        high_water_mark: field(40)?,
        tx_id: field(48)?,
    };
    let pages_fit = meta
        .high_water_mark
        .checked_mul(page_size as u64)
        .is_some_and(|end| end <= len);
    if !pages_fit {
        return Err(format!(
            "{} pages of {page_size} bytes do not fit in {len} bytes (truncated?)",
            meta.high_water_mark
        ));
    }
    if meta.root < 2 || meta.root >= meta.high_water_mark {
        return Err(format!("root page {} out of range", meta.root));
    }
    Ok(meta)
}

impl<R: ReadAt> BoltReader<R> {
    /// Opens the database in the first `len` bytes of `source`.
    pub fn open(source: R, len: u64) -> Result<BoltReader<R>, BoltError> {
        let mut first = vec![0u8; PAGE_HEADER_SIZE + 64];
        source
            .read_exact_at(&mut first, 0)
            .map_err(|_| BoltError::NotBolt(format!("only {len} bytes")))?;
        let meta0 = parse_meta(&first, len);
        let second_at = meta0.as_ref().map_or(PAGE_SIZE, |m| m.page_size) as u64;
        let mut second = vec![0u8; PAGE_HEADER_SIZE + 64];
        let meta1 = match source.read_exact_at(&mut second, second_at) {
            Ok(()) => parse_meta(&second, len),
            Err(_) => Err("no second meta page".to_string()),
        };
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.tx_id > a.tx_id {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(e), Err(_)) => return Err(BoltError::NotBolt(e)),
        };
        Ok(BoltReader {
            source,
            page_size: meta.page_size,
            root: meta.root,
            high_water_mark: meta.high_water_mark,
            tx_id: meta.tx_id,
        })
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn tx_id(&self) -> u64 {
        self.tx_id
    }

    /// Pages in use (the meta's `pgid`): the database is this many pages long.
    pub fn high_water_mark(&self) -> u64 {
        self.high_water_mark
    }

    /// Reads page `id` with its overflow pages, checked to lie within the database.
    fn page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.high_water_mark {
            return Err(corrupt(format!("page {id} out of range")));
        }
        let at = id * self.page_size as u64;
        let mut header = [0u8; PAGE_HEADER_SIZE];
        self.source.read_exact_at(&mut header, at)?;
        let overflow = u64::from(u32_at(&header, 12).expect("16 bytes"));
        let end = id + 1 + overflow;
        if end > self.high_water_mark {
            return Err(corrupt(format!(
                "page {id} overflows past the last page ({overflow} more pages)"
            )));
        }
        let mut page = vec![0u8; ((1 + overflow) as usize) * self.page_size];
        self.source.read_exact_at(&mut page, at)?;
        Ok(page)
    }

    /// The root tree's entries (the buckets' names and headers), in order.
    fn walk_root(
        &self,
        visit: &mut dyn FnMut(Entry) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        let page = self.page(self.root)?;
        self.walk(&page, 0, &mut |_, _| Ok(()), visit)
    }

    /// Pages a page read by [`Self::page`] spans (1 + its overflow).
    fn span(&self, page: &[u8]) -> u64 {
        (page.len() / self.page_size) as u64
    }

    /// Walks the tree under `node` (a page, or an inline bucket's page), calling `on_page` with
    /// each page it reads (id, pages spanned) and `visit` with each leaf entry, in key order.
    fn walk(
        &self,
        node: &[u8],
        depth: usize,
        on_page: &mut dyn FnMut(u64, u64) -> Result<(), BoltError>,
        visit: &mut dyn FnMut(Entry) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(corrupt("tree deeper than 64 levels (a page cycle?)"));
        }
        let flags = u16_at(node, 8).ok_or_else(|| corrupt("short page"))?;
        let count = usize::from(u16_at(node, 10).ok_or_else(|| corrupt("short page"))?);
        match flags {
            LEAF_PAGE_FLAG => {
                for i in 0..count {
                    visit(leaf_element(node, i)?)?;
                }
                Ok(())
            }
            BRANCH_PAGE_FLAG => {
                for i in 0..count {
                    let (_, child) = branch_element(node, i)?;
                    let page = self.page(child)?;
                    on_page(child, self.span(&page))?;
                    self.walk(&page, depth + 1, on_page, visit)?;
                }
                Ok(())
            }
            other => Err(corrupt(format!("page of type {other:#x} inside a tree"))),
        }
    }

    /// Top-level bucket names, in order.
    pub fn buckets(&self) -> Result<Vec<Vec<u8>>, BoltError> {
        let mut names = Vec::new();
        self.walk_root(&mut |e| {
            if e.flags & BUCKET_LEAF_FLAG == 0 {
                return Err(corrupt("a plain key in the root bucket"));
            }
            names.push(e.key.to_vec());
            Ok(())
        })?;
        Ok(names)
    }

    /// The bucket header (and inline page) of bucket `name`.
    fn bucket_value(&self, name: &[u8]) -> Result<Option<Vec<u8>>, BoltError> {
        let mut found = None;
        self.walk_root(&mut |e| {
            if e.key == name && e.flags & BUCKET_LEAF_FLAG != 0 {
                found = Some(e.value.to_vec());
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Walks bucket `name` (given its header), reporting pages and entries.
    fn walk_bucket(
        &self,
        name: &[u8],
        header: &[u8],
        on_page: &mut dyn FnMut(u64, u64) -> Result<(), BoltError>,
        visit: &mut dyn FnMut(Entry) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        let bad = |what: &str| corrupt(format!("bucket {}: {what}", String::from_utf8_lossy(name)));
        let root = u64_at(header, 0).ok_or_else(|| bad("short bucket header"))?;
        if root == 0 {
            let inline = header
                .get(BUCKET_HEADER_SIZE..)
                .ok_or_else(|| bad("short inline bucket"))?;
            return self.walk(inline, 0, on_page, visit);
        }
        let page = self.page(root)?;
        on_page(root, self.span(&page))?;
        self.walk(&page, 0, on_page, visit)
    }

    /// Visits every key and value of top-level bucket `name` in key order; `Ok(false)` if
    /// there is no such bucket. The visitor's error ends the walk and is returned.
    pub fn for_each<E: From<BoltError>>(
        &self,
        name: &[u8],
        visit: &mut Visit<'_, E>,
    ) -> Result<bool, E> {
        let Some(header) = self.bucket_value(name)? else {
            return Ok(false);
        };
        let mut failed: Option<E> = None;
        let walked = self.walk_bucket(name, &header, &mut |_, _| Ok(()), &mut |e| {
            if e.flags & BUCKET_LEAF_FLAG != 0 {
                return Err(corrupt(format!(
                    "nested bucket in {} (not an etcd backend)",
                    String::from_utf8_lossy(name)
                )));
            }
            match visit(e.key, e.value) {
                Ok(()) => Ok(()),
                Err(err) => {
                    failed = Some(err);
                    Err(BoltError::Misuse("stopped by the visitor".into()))
                }
            }
        });
        match (walked, failed) {
            (_, Some(err)) => Err(err),
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => Ok(true),
        }
    }

    /// bbolt's consistency check: every reachable page within the database and used once
    /// (overflow pages included), only branch and leaf pages inside trees, keys strictly
    /// ascending in every bucket and in the root. Returns the number of pages reached.
    pub fn check(&self) -> Result<u64, BoltError> {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut on_page = |id: u64, span: u64| {
            for page in id..id + span {
                if !seen.insert(page) {
                    return Err(corrupt(format!("page {page} used twice")));
                }
            }
            Ok(())
        };
        let root = self.page(self.root)?;
        on_page(self.root, self.span(&root))?;
        let mut buckets = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        self.walk(&root, 0, &mut on_page, &mut |e| {
            ascending(&mut last, e.key, b"(root)")?;
            if e.flags & BUCKET_LEAF_FLAG == 0 {
                return Err(corrupt("a plain key in the root bucket"));
            }
            buckets.push((e.key.to_vec(), e.value.to_vec()));
            Ok(())
        })?;
        for (name, header) in &buckets {
            let mut last: Option<Vec<u8>> = None;
            self.walk_bucket(name, header, &mut on_page, &mut |e| {
                if e.flags & BUCKET_LEAF_FLAG != 0 {
                    return Err(corrupt("nested bucket (not an etcd backend)"));
                }
                ascending(&mut last, e.key, name)
            })?;
        }
        Ok(seen.len() as u64)
    }
}

fn ascending(last: &mut Option<Vec<u8>>, key: &[u8], bucket: &[u8]) -> Result<(), BoltError> {
    if last.as_deref().is_some_and(|l| l >= key) {
        return Err(corrupt(format!(
            "keys out of order in bucket {}",
            String::from_utf8_lossy(bucket)
        )));
    }
    *last = Some(key.to_vec());
    Ok(())
}

/// The bytes `len` long at `at`, inside `node`.
fn slice(node: &[u8], at: usize, len: usize) -> Result<&[u8], BoltError> {
    at.checked_add(len)
        .and_then(|end| node.get(at..end))
        .ok_or_else(|| corrupt("element points outside its page"))
}

fn leaf_element(node: &[u8], i: usize) -> Result<Entry<'_>, BoltError> {
    let at = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE;
    let short = || corrupt("leaf elements past the page's end");
    let flags = u32_at(node, at).ok_or_else(short)?;
    let pos = u32_at(node, at + 4).ok_or_else(short)? as usize;
    let ksize = u32_at(node, at + 8).ok_or_else(short)? as usize;
    let vsize = u32_at(node, at + 12).ok_or_else(short)? as usize;
    let key_at = at.checked_add(pos).ok_or_else(short)?;
    let key = slice(node, key_at, ksize)?;
    let value = slice(node, key_at + ksize, vsize)?;
    Ok(Entry { flags, key, value })
}

fn branch_element(node: &[u8], i: usize) -> Result<(&[u8], u64), BoltError> {
    let at = PAGE_HEADER_SIZE + i * BRANCH_ELEMENT_SIZE;
    let short = || corrupt("branch elements past the page's end");
    let pos = u32_at(node, at).ok_or_else(short)? as usize;
    let ksize = u32_at(node, at + 4).ok_or_else(short)? as usize;
    let child = u64_at(node, at + 8).ok_or_else(short)?;
    let key = slice(node, at.checked_add(pos).ok_or_else(short)?, ksize)?;
    Ok((key, child))
}
