//! Writing a bbolt file from sorted input, bottom-up and in one pass: leaf pages are written
//! as entries arrive, each branch level once the level below is complete, the root bucket
//! last, then the two meta pages at the front.
//!
//! Layout, as bbolt's own files: pages of [`PAGE_SIZE`], leaves filled up to a page (a leaf
//! holding an entry larger than a page spans overflow pages, up to 16 pages), branch keys equal to their
//! child's first key, buckets of at most a quarter page stored inline, no freelist (as etcd
//! writes its files), every page from 2 to the high-water mark reachable. Memory holds one
//! leaf page and one (first key, page id) pair per page of the level being built.

use std::io::{Seek, SeekFrom, Write};

use super::*;

/// The most a leaf of large values spans (16 pages).
const MAX_OVERFLOW_LEAF: usize = 16 * PAGE_SIZE;

/// A bucket whose inline page is at most this large is stored inline (bbolt's rule).
const MAX_INLINE_BUCKET_SIZE: usize = PAGE_SIZE / 4;

/// Writes a bbolt database to `out`.
#[derive(Debug)]
pub struct BoltWriter<W: Write + Seek> {
    out: W,
    next_page: u64,
    /// Finished buckets: name → bucket value (header, and inline page if inline).
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Writes the entries of one bucket, in ascending key order.
#[derive(Debug)]
pub struct BucketWriter<'a, W: Write + Seek> {
    writer: &'a mut BoltWriter<W>,
    name: Vec<u8>,
    tree: Tree,
    last_key: Option<Vec<u8>>,
}

/// A B+tree being built: the leaf page being filled and the pages written so far.
#[derive(Debug, Default)]
struct Tree {
    leaf: Vec<(u32, Vec<u8>, Vec<u8>)>,
    leaf_bytes: usize,
    /// (first key, page id) of every leaf page written.
    pages: Vec<(Vec<u8>, u64)>,
}

enum Built {
    Inline(Vec<u8>),
    Root(u64),
}

impl<W: Write + Seek> BoltWriter<W> {
    /// Starts a database, reserving pages 0 and 1 for the metas.
    pub fn new(mut out: W) -> Result<BoltWriter<W>, BoltError> {
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&[0u8; 2 * PAGE_SIZE])?;
        Ok(BoltWriter {
            out,
            next_page: 2,
            buckets: Vec::new(),
        })
    }

    /// Starts top-level bucket `name` (any order; each name once).
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_, W>, BoltError> {
        if name.is_empty() || name.len() > MAX_KEY_SIZE {
            return Err(BoltError::Misuse(format!(
                "bucket name of {} bytes",
                name.len()
            )));
        }
        if self.buckets.iter().any(|(n, _)| n == name) {
            return Err(BoltError::Misuse(format!(
                "bucket {} written twice",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(BucketWriter {
            writer: self,
            name: name.to_vec(),
            tree: Tree::default(),
            last_key: None,
        })
    }

    /// Writes the root bucket and both metas; returns the output and the database's length.
    pub fn finish(mut self, tx_id: u64) -> Result<(W, u64), BoltError> {
        let tx_id = tx_id.max(1);
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut root = Tree::default();
        for (name, value) in buckets {
            root.add(&mut self, BUCKET_LEAF_FLAG, name, value)?;
        }
        let root = root.finish_pages(&mut self)?;
        let high_water_mark = self.next_page;
        for (page, tx) in [(0u64, tx_id), (1, tx_id - 1)] {
            let meta = meta_page(page, root, high_water_mark, tx);
            self.out.seek(SeekFrom::Start(page * PAGE_SIZE as u64))?;
            self.out.write_all(&meta)?;
        }
        let len = high_water_mark * PAGE_SIZE as u64;
        self.out.seek(SeekFrom::Start(len))?;
        self.out.flush()?;
        Ok((self.out, len))
    }

    /// Appends a page (with overflow pages if `body` needs them); returns its id.
    fn write_page(&mut self, flags: u16, count: usize, body: &[u8]) -> Result<u64, BoltError> {
        let pages = (PAGE_HEADER_SIZE + body.len()).div_ceil(PAGE_SIZE);
        let id = self.next_page;
        let count = u16::try_from(count).expect("a page holds fewer than 65536 elements");
        let overflow = u32::try_from(pages - 1)
            .map_err(|_| BoltError::Misuse("a page of more than 2^32 pages".into()))?;
        self.out
            .write_all(&page_header(id, flags, count, overflow))?;
        self.out.write_all(body)?;
        let padding = pages * PAGE_SIZE - PAGE_HEADER_SIZE - body.len();
        self.out.write_all(&vec![0u8; padding])?;
        self.next_page += pages as u64;
        Ok(id)
    }
}

impl<W: Write + Seek> BucketWriter<'_, W> {
    /// Adds an entry; keys strictly ascending, non-empty, at most 32 KiB.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BoltError> {
        if key.is_empty() || key.len() > MAX_KEY_SIZE {
            return Err(BoltError::Misuse(format!("key of {} bytes", key.len())));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(BoltError::Misuse(format!("value of {} bytes", value.len())));
        }
        if self.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(BoltError::Misuse(format!(
                "keys not ascending in bucket {}",
                String::from_utf8_lossy(&self.name)
            )));
        }
        self.last_key = Some(key.to_vec());
        self.tree.add(self.writer, 0, key.to_vec(), value.to_vec())
    }

    /// Ends the bucket: inline if small enough, else its pages and branch levels.
    pub fn finish(self) -> Result<(), BoltError> {
        let mut value = Vec::with_capacity(BUCKET_HEADER_SIZE);
        match self.tree.finish(self.writer)? {
            Built::Inline(page) => {
                value.extend_from_slice(&[0u8; BUCKET_HEADER_SIZE]);
                value.extend_from_slice(&page);
            }
            Built::Root(root) => {
                value.extend_from_slice(&root.to_le_bytes());
                value.extend_from_slice(&0u64.to_le_bytes());
            }
        }
        self.writer.buckets.push((self.name, value));
        Ok(())
    }
}

impl Tree {
    fn add<W: Write + Seek>(
        &mut self,
        writer: &mut BoltWriter<W>,
        flags: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), BoltError> {
        let size = LEAF_ELEMENT_SIZE + key.len() + value.len();
        // A leaf fills one page; once it overflows anyway (an element larger than a page), it
        // takes elements up to MAX_OVERFLOW_LEAF, so large values do not each waste most of
        // an overflow page (4 KiB values would take 8 KiB each).
        let overflowing = PAGE_HEADER_SIZE + self.leaf_bytes.max(size) > PAGE_SIZE;
        let limit = if overflowing {
            MAX_OVERFLOW_LEAF
        } else {
            PAGE_SIZE
        };
        if !self.leaf.is_empty() && PAGE_HEADER_SIZE + self.leaf_bytes + size > limit {
            self.flush_leaf(writer)?;
        }
        self.leaf_bytes += size;
        self.leaf.push((flags, key, value));
        Ok(())
    }

    fn flush_leaf<W: Write + Seek>(&mut self, writer: &mut BoltWriter<W>) -> Result<(), BoltError> {
        let leaf = std::mem::take(&mut self.leaf);
        self.leaf_bytes = 0;
        let first = leaf.first().map(|(_, k, _)| k.clone()).unwrap_or_default();
        let id = writer.write_page(LEAF_PAGE_FLAG, leaf.len(), &leaf_body(&leaf))?;
        self.pages.push((first, id));
        Ok(())
    }

    /// Inline when nothing was written yet and the entries fit a quarter page.
    fn finish<W: Write + Seek>(self, writer: &mut BoltWriter<W>) -> Result<Built, BoltError> {
        if self.pages.is_empty() && PAGE_HEADER_SIZE + self.leaf_bytes <= MAX_INLINE_BUCKET_SIZE {
            let count = u16::try_from(self.leaf.len()).expect("a quarter page of entries");
            let mut page = page_header(0, LEAF_PAGE_FLAG, count, 0).to_vec();
            page.extend_from_slice(&leaf_body(&self.leaf));
            return Ok(Built::Inline(page));
        }
        Ok(Built::Root(self.finish_pages(writer)?))
    }

    /// Writes what is left and the branch levels; returns the root page.
    fn finish_pages<W: Write + Seek>(
        mut self,
        writer: &mut BoltWriter<W>,
    ) -> Result<u64, BoltError> {
        if !self.leaf.is_empty() || self.pages.is_empty() {
            self.flush_leaf(writer)?;
        }
        let mut level = self.pages;
        while level.len() > 1 {
            let mut above = Vec::new();
            let mut branch: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut bytes = 0;
            for (key, id) in level {
                let size = BRANCH_ELEMENT_SIZE + key.len();
                if !branch.is_empty() && PAGE_HEADER_SIZE + bytes + size > PAGE_SIZE {
                    above.push(write_branch(writer, std::mem::take(&mut branch))?);
                    bytes = 0;
                }
                bytes += size;
                branch.push((key, id));
            }
            above.push(write_branch(writer, branch)?);
            level = above;
        }
        Ok(level[0].1)
    }
}

fn write_branch<W: Write + Seek>(
    writer: &mut BoltWriter<W>,
    branch: Vec<(Vec<u8>, u64)>,
) -> Result<(Vec<u8>, u64), BoltError> {
    let n = branch.len();
    let mut elements = Vec::with_capacity(n * BRANCH_ELEMENT_SIZE);
    let mut data = Vec::new();
    for (i, (key, child)) in branch.iter().enumerate() {
        let pos = n * BRANCH_ELEMENT_SIZE + data.len() - i * BRANCH_ELEMENT_SIZE;
        elements.extend_from_slice(&(pos as u32).to_le_bytes());
        elements.extend_from_slice(&(key.len() as u32).to_le_bytes());
        elements.extend_from_slice(&child.to_le_bytes());
        data.extend_from_slice(key);
    }
    elements.extend_from_slice(&data);
    let id = writer.write_page(BRANCH_PAGE_FLAG, n, &elements)?;
    let first = branch
        .into_iter()
        .next()
        .map(|(k, _)| k)
        .unwrap_or_default();
    Ok((first, id))
}

/// A leaf page's elements followed by their keys and values.
fn leaf_body(leaf: &[(u32, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let n = leaf.len();
    let mut elements = Vec::with_capacity(n * LEAF_ELEMENT_SIZE);
    let mut data = Vec::new();
    for (i, (flags, key, value)) in leaf.iter().enumerate() {
        let pos = n * LEAF_ELEMENT_SIZE + data.len() - i * LEAF_ELEMENT_SIZE;
        elements.extend_from_slice(&flags.to_le_bytes());
        elements.extend_from_slice(&(pos as u32).to_le_bytes());
        elements.extend_from_slice(&(key.len() as u32).to_le_bytes());
        elements.extend_from_slice(&(value.len() as u32).to_le_bytes());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
    }
    elements.extend_from_slice(&data);
    elements
}

fn page_header(id: u64, flags: u16, count: u16, overflow: u32) -> [u8; PAGE_HEADER_SIZE] {
    let mut h = [0u8; PAGE_HEADER_SIZE];
    h[0..8].copy_from_slice(&id.to_le_bytes());
    h[8..10].copy_from_slice(&flags.to_le_bytes());
    h[10..12].copy_from_slice(&count.to_le_bytes());
    h[12..16].copy_from_slice(&overflow.to_le_bytes());
    h
}

fn meta_page(id: u64, root: u64, high_water_mark: u64, tx_id: u64) -> Vec<u8> {
    let mut meta = Vec::with_capacity(META_CHECKED_SIZE + 8);
    meta.extend_from_slice(&MAGIC.to_le_bytes());
    meta.extend_from_slice(&VERSION.to_le_bytes());
    meta.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    meta.extend_from_slice(&0u32.to_le_bytes());
    meta.extend_from_slice(&root.to_le_bytes());
    meta.extend_from_slice(&0u64.to_le_bytes());
    meta.extend_from_slice(&NO_FREELIST.to_le_bytes());
    meta.extend_from_slice(&high_water_mark.to_le_bytes());
    meta.extend_from_slice(&tx_id.to_le_bytes());
    let checksum = fnv1a64(&meta);
    meta.extend_from_slice(&checksum.to_le_bytes());
    let mut page = page_header(id, META_PAGE_FLAG, 0, 0).to_vec();
    page.extend_from_slice(&meta);
    page.resize(PAGE_SIZE, 0);
    page
}
