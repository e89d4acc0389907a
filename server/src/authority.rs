//! grpc-go clients that send a URL as HTTP/2 `:authority`, made acceptable to the h2 crate.
//!
//! etcdctl 3.4 dials each endpoint of `endpoint status`/`endpoint hashkv` (and of
//! `--cluster`, with the members' client URLs) as the gRPC target `passthrough:///http://h:p`,
//! and grpc-go then sends `:authority: http://h:p`. grpc-go's server ignores the authority;
//! the h2 crate refuses it as malformed and resets the stream (`PROTOCOL_ERROR`), so those
//! commands printed nothing against Strata. [`AuthorityFix`] wraps a cleartext client
//! connection's read side: it decodes the first HTTP/2 header block, and
//! - if its `:authority` is fine (every other client), forwards the block as it came and
//!   steps aside: the rest of the connection is read straight through, at no cost;
//! - if it is a URL, rewrites it to `h:p`, and from then on re-encodes every header block of
//!   the connection (its own HPACK encoder, since the rewritten blocks no longer match the
//!   client's table), passing every other frame through as it came.
//!
//! Anything unexpected (no HTTP/2 preface: HTTP/1.1 for the JSON gateway; a frame larger than
//! the server's 16 KiB limit; an undecodable header block) switches to reading straight
//! through, leaving hyper to answer as it would have. Writes are never touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use fluke_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// hyper's default SETTINGS_MAX_FRAME_SIZE: larger frames are hyper's to refuse.
const MAX_FRAME_LEN: usize = 16_384;
/// A header block larger than this is left to hyper's own limit.
const MAX_BLOCK_LEN: usize = 64 * 1024;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

enum Mode {
    /// Matching the client preface so far.
    Preface,
    /// Reading frames; `rewriting` once a URL authority was seen.
    Frames { rewriting: bool },
    /// Reading straight through.
    Through,
}

/// A header block being gathered: its stream, its END_STREAM flag, its fragments and the raw
/// frames that carried them.
struct Block {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
    raw: Vec<u8>,
}

pub struct AuthorityFix<T> {
    inner: T,
    mode: Mode,
    /// Bytes read from `inner`, not yet looked at.
    input: Vec<u8>,
    /// Bytes ready for the reader, from `output_at` on.
    output: Vec<u8>,
    output_at: usize,
    block: Option<Block>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

impl<T> AuthorityFix<T> {
    pub fn new(inner: T) -> AuthorityFix<T> {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(4096);
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            input: Vec::new(),
            output: Vec::new(),
            output_at: 0,
            block: None,
            decoder,
            encoder: Encoder::new(),
        }
    }

    /// Gives up on looking: everything read so far and from now on goes through as it is.
    fn step_aside(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        self.output.append(&mut self.input);
        self.mode = Mode::Through;
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Through => {
                    self.output.append(&mut self.input);
                    return;
                }
                Mode::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        return self.step_aside();
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    self.output.extend(self.input.drain(..PREFACE.len()));
                    self.mode = Mode::Frames { rewriting: false };
                }
                Mode::Frames { rewriting } => {
                    if self.input.len() < FRAME_HEADER_LEN {
                        return;
                    }
                    let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]])
                        as usize;
                    if len > MAX_FRAME_LEN {
                        return self.step_aside();
                    }
                    if self.input.len() < FRAME_HEADER_LEN + len {
                        return;
                    }
                    let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
                    if !self.on_frame(frame, rewriting) {
                        return self.step_aside();
                    }
                }
            }
        }
    }

    /// Handles one whole frame; false to step aside.
    fn on_frame(&mut self, frame: Vec<u8>, rewriting: bool) -> bool {
        let kind = frame[3];
        let flags = frame[4];
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match (kind, &mut self.block) {
            (TYPE_HEADERS, None) => {
                let Some(fragment) = headers_fragment(flags, payload) else {
                    return false;
                };
                self.block = Some(Block {
                    stream,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    fragment: fragment.to_vec(),
                    raw: frame.clone(),
                });
            }
            (TYPE_CONTINUATION, Some(block)) if block.stream == stream => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
                if block.fragment.len() > MAX_BLOCK_LEN {
                    return false;
                }
            }
            // Frames between a HEADERS and its CONTINUATION are a protocol error: hyper's.
            (_, Some(_)) => return false,
            (_, None) => {
                self.output.extend_from_slice(&frame);
                return true;
            }
        }
        if flags & FLAG_END_HEADERS == 0 {
            return true;
        }
        let block = self.block.take().expect("a block is being gathered");
        let Ok(mut headers) = self.decoder.decode(&block.fragment) else {
            self.output.extend_from_slice(&block.raw);
            return false;
        };
        let mut fixed = false;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" {
                if let Some(at) = value.windows(3).position(|w| w == b"://") {
                    value.drain(..at + 3);
                    fixed = true;
                }
            }
        }
        if !rewriting && !fixed {
            // The usual case: forward the block as it came, and read straight through.
            self.output.extend_from_slice(&block.raw);
            self.mode = Mode::Through;
            return true;
        }
        self.mode = Mode::Frames { rewriting: true };
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        write_block(&mut self.output, block.stream, block.end_stream, &encoded);
        true
    }
}

/// The header block fragment of a HEADERS frame, without padding and priority.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & FLAG_PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start += 1;
        end = end.checked_sub(pad)?;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end)
}

/// Writes a header block as HEADERS and, past the frame limit, CONTINUATION frames.
fn write_block(out: &mut Vec<u8>, stream: u32, end_stream: bool, block: &[u8]) {
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![&[]]
    } else {
        block.chunks(MAX_FRAME_LEN).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 {
            TYPE_HEADERS
        } else {
            TYPE_CONTINUATION
        };
        let mut flags = if i + 1 == chunks.len() {
            FLAG_END_HEADERS
        } else {
            0
        };
        if i == 0 && end_stream {
            flags |= FLAG_END_STREAM;
        }
        let len = (chunk.len() as u32).to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.output_at < this.output.len() {
                let ready = &this.output[this.output_at..];
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.output_at += n;
                if this.output_at == this.output.len() {
                    this.output.clear();
                    this.output_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Through) && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // End of input: whatever is left goes as it is; then the end.
                    this.step_aside();
                    if this.output.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(read.filled());
                    this.process();
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn headers_frame(stream: u32, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_block(&mut out, stream, true, block);
        out
    }

    async fn read_all(input: Vec<u8>) -> Vec<u8> {
        let mut fix = AuthorityFix::new(input.as_slice());
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.expect("read");
        out
    }

    /// The header blocks of a stream of frames after the preface, decoded.
    fn decoded_blocks(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = Decoder::new();
        let mut at = PREFACE.len();
        let mut blocks = Vec::new();
        while at < bytes.len() {
            let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
            if bytes[at + 3] == TYPE_HEADERS {
                let payload = &bytes[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len];
                blocks.push(decoder.decode(payload).expect("decodes"));
            }
            at += FRAME_HEADER_LEN + len;
        }
        blocks
    }

    fn client_stream(authority: &[u8]) -> Vec<u8> {
        let mut client = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
        for stream in [1u32, 3] {
            let block = client.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":authority", authority),
                (b":path", b"/etcdserverpb.Maintenance/Status"),
            ]);
            input.extend(headers_frame(stream, &block));
        }
        input
    }

    #[tokio::test]
    async fn a_url_authority_becomes_host_and_port_in_every_block() {
        let out = read_all(client_stream(b"http://127.0.0.1:2379")).await;
        let blocks = decoded_blocks(&out);
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            assert!(block.contains(&(b":authority".to_vec(), b"127.0.0.1:2379".to_vec())));
            assert!(block.contains(&(b":method".to_vec(), b"POST".to_vec())));
        }
    }

    #[tokio::test]
    async fn everything_else_passes_byte_for_byte() {
        let input = client_stream(b"127.0.0.1:2379");
        assert_eq!(read_all(input.clone()).await, input);
        let http1 = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n{}".to_vec();
        assert_eq!(read_all(http1.clone()).await, http1);
        let mut garbage = PREFACE.to_vec();
        garbage.extend_from_slice(&[
            0,
            0,
            3,
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            0,
            0,
            0,
            1,
            0xff,
            0xff,
            0xff,
        ]);
        assert_eq!(read_all(garbage.clone()).await, garbage);
    }
}
