//! Makes the HTTP/2 `:authority` of every client acceptable to the server.
//!
//! grpc-go (the kubelet, the sidecars) sends `localhost` as the `:authority`
//! of a unix-socket call; grpc-core clients (Python grpcio, C++), grpc-java
//! and older grpc-go send the socket path, raw or percent-encoded, or nothing
//! at all. The HTTP/2 server under tonic (h2) refuses any authority that
//! `http::uri::Authority` cannot parse and resets the stream before a handler
//! runs, and it has no setting to relax that.
//!
//! [`AuthorityFix`] wraps an accepted connection. It reads the client's byte
//! stream frame by frame (connection preface, then 9-byte frame headers) and
//! rebuilds every header block (HEADERS plus its CONTINUATION frames): the
//! block is decoded with a per-connection HPACK decoder that follows the
//! client's dynamic table, an unparsable `:authority` becomes `localhost`,
//! and the header list is encoded again without a dynamic table on our side,
//! so what the server's decoder holds never depends on how the client
//! indexed. Every other frame passes through byte for byte, and nothing the
//! server writes is touched. A client that breaks the framing rules (or sends
//! an oversized header block) gets its connection closed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::Connected;

/// What every HTTP/2 connection starts with (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
const FRAME_HEADER_LEN: usize = 9;
/// The largest frame the server accepts (SETTINGS_MAX_FRAME_SIZE left at its
/// default), and the largest one this adapter writes.
pub(crate) const MAX_FRAME_LEN: usize = 16_384;
/// The largest encoded header block (all its frames' fragments) a client may
/// send.
pub(crate) const MAX_BLOCK_LEN: usize = 64 * 1024;
/// The largest decoded header list, counted as HPACK counts entries (name,
/// value and 32 octets each); bounds what indexed references can expand to.
pub(crate) const MAX_DECODED_LEN: usize = 256 * 1024;
/// The HPACK dynamic table size the server allows (it announces no other).
const HEADER_TABLE_SIZE: usize = 4_096;
/// What replaces an authority the server would refuse.
pub(crate) const REPLACEMENT: &[u8] = b"localhost";

const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why a client's connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A HEADERS or CONTINUATION frame larger than the server accepts.
    #[error("header frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte frame size")]
    FrameTooLarge(usize),
    /// The header block grew past [`MAX_BLOCK_LEN`].
    #[error("header block exceeds {MAX_BLOCK_LEN} bytes")]
    BlockTooLarge,
    /// The decoded header list grew past [`MAX_DECODED_LEN`].
    #[error("decoded header list exceeds {MAX_DECODED_LEN} bytes")]
    DecodedTooLarge,
    /// A frame other than the CONTINUATION of the open header block.
    #[error("frame type {ty:#x} on stream {stream} while a header block of stream {open} is open")]
    ExpectedContinuation {
        /// The frame's type.
        ty: u8,
        /// The frame's stream.
        stream: u32,
        /// The stream whose header block is open.
        open: u32,
    },
    /// CONTINUATION without an open header block.
    #[error("CONTINUATION on stream {0} without a header block")]
    StrayContinuation(u32),
    /// Clients must not send PUSH_PROMISE.
    #[error("PUSH_PROMISE from a client")]
    PushPromise,
    /// Padding or priority fields longer than the frame.
    #[error("HEADERS frame on stream {0}: padding or priority longer than the frame")]
    BadPadding(u32),
    /// The HPACK block does not decode.
    #[error("header block of stream {stream} does not decode")]
    Hpack {
        /// The stream.
        stream: u32,
        /// The decoder's complaint.
        #[source]
        source: loona_hpack::decoder::DecoderError,
    },
}

/// Where in the client's byte stream the rewriter is.
enum State {
    /// Inside the connection preface, this many bytes matched.
    Preface(usize),
    /// Not HTTP/2 with prior knowledge: everything passes, the server
    /// answers it as it would.
    Raw,
    /// Collecting a 9-byte frame header in `partial`.
    FrameHeader,
    /// Copying this many more payload bytes of a frame that is not rebuilt.
    Passthrough(usize),
    /// Collecting the payload of a HEADERS or CONTINUATION frame in
    /// `partial`.
    HeaderPayload {
        ty: u8,
        flags: u8,
        stream: u32,
        len: usize,
    },
}

/// A header block waiting for its CONTINUATION frames.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client-to-server half: consumes raw bytes, produces rewritten ones.
pub(crate) struct Rewriter {
    state: State,
    partial: Vec<u8>,
    block: Option<OpenBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// How many authorities were replaced (for the first-time log line).
    pub(crate) replaced: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        let mut encoder = Encoder::new();
        // With no room in our table the encoder never refers to an entry the
        // server's decoder would have to remember from an earlier block.
        encoder.set_max_table_size(0);
        Self {
            state: State::Preface(0),
            partial: Vec::new(),
            block: None,
            decoder,
            encoder,
            replaced: 0,
        }
    }
}

impl Rewriter {
    /// Consumes `input` (any split of the stream), appending what the
    /// server should read to `out`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        while !input.is_empty() {
            match self.state {
                State::Preface(matched) => {
                    let take = (PREFACE.len() - matched).min(input.len());
                    if input[..take] != PREFACE[matched..matched + take] {
                        // What matched so far has been passed on already.
                        self.state = State::Raw;
                        continue;
                    }
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if matched + take == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(matched + take)
                    };
                }
                State::Raw => {
                    out.extend_from_slice(input);
                    input = &[];
                }
                State::Passthrough(left) => {
                    let take = left.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == left {
                        State::FrameHeader
                    } else {
                        State::Passthrough(left - take)
                    };
                }
                State::FrameHeader => {
                    let take = (FRAME_HEADER_LEN - self.partial.len()).min(input.len());
                    self.partial.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.partial.len() == FRAME_HEADER_LEN {
                        let mut header = [0u8; FRAME_HEADER_LEN];
                        header.copy_from_slice(&self.partial);
                        self.partial.clear();
                        self.frame_header(header, out)?;
                    }
                }
                State::HeaderPayload { len, .. } => {
                    let take = (len - self.partial.len()).min(input.len());
                    self.partial.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.partial.len() == len {
                        self.header_payload(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Acts on a complete frame header.
    fn frame_header(
        &mut self,
        header: [u8; FRAME_HEADER_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let ty = header[3];
        let flags = header[4];
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if let Some(open) = &self.block
            && (ty != TYPE_CONTINUATION || stream != open.stream)
        {
            return Err(FrameError::ExpectedContinuation {
                ty,
                stream,
                open: open.stream,
            });
        }
        match ty {
            TYPE_HEADERS | TYPE_CONTINUATION => {
                if len > MAX_FRAME_LEN {
                    return Err(FrameError::FrameTooLarge(len));
                }
                if ty == TYPE_CONTINUATION && self.block.is_none() {
                    return Err(FrameError::StrayContinuation(stream));
                }
                self.state = State::HeaderPayload {
                    ty,
                    flags,
                    stream,
                    len,
                };
                if len == 0 {
                    self.header_payload(out)?;
                }
            }
            TYPE_PUSH_PROMISE => return Err(FrameError::PushPromise),
            _ => {
                out.extend_from_slice(&header);
                self.state = if len == 0 {
                    State::FrameHeader
                } else {
                    State::Passthrough(len)
                };
            }
        }
        Ok(())
    }

    /// Acts on the complete payload of a HEADERS or CONTINUATION frame (in
    /// `partial`).
    fn header_payload(&mut self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let State::HeaderPayload {
            ty, flags, stream, ..
        } = self.state
        else {
            return Ok(());
        };
        self.state = State::FrameHeader;
        let payload = std::mem::take(&mut self.partial);
        let mut block = if ty == TYPE_HEADERS {
            let mut body = &payload[..];
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                let (&len, rest) = body.split_first().ok_or(FrameError::BadPadding(stream))?;
                pad = usize::from(len);
                body = rest;
            }
            let mut priority = None;
            if flags & FLAG_PRIORITY != 0 {
                if body.len() < 5 {
                    return Err(FrameError::BadPadding(stream));
                }
                let mut fields = [0u8; 5];
                fields.copy_from_slice(&body[..5]);
                priority = Some(fields);
                body = &body[5..];
            }
            if pad > body.len() {
                return Err(FrameError::BadPadding(stream));
            }
            OpenBlock {
                stream,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                fragment: body[..body.len() - pad].to_vec(),
            }
        } else {
            let mut open = self
                .block
                .take()
                .ok_or(FrameError::StrayContinuation(stream))?;
            open.fragment.extend_from_slice(&payload);
            open
        };
        if block.fragment.len() > MAX_BLOCK_LEN {
            return Err(FrameError::BlockTooLarge);
        }
        // Reuse the payload's allocation for the next frame.
        self.partial = payload;
        self.partial.clear();
        if flags & FLAG_END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(());
        }
        let fragment = std::mem::take(&mut block.fragment);
        self.emit_block(&block, &fragment, out)
    }

    /// Decodes a complete header block, fixes its authority and writes it
    /// out as HEADERS plus CONTINUATION frames.
    fn emit_block(
        &mut self,
        block: &OpenBlock,
        fragment: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded = 0usize;
        let mut too_large = false;
        let mut replaced = false;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                decoded += name.len() + value.len() + 32;
                if decoded > MAX_DECODED_LEN {
                    too_large = true;
                    return;
                }
                let value = if name.as_ref() == b":authority"
                    && Authority::try_from(value.as_ref()).is_err()
                {
                    replaced = true;
                    REPLACEMENT.to_vec()
                } else {
                    value.into_owned()
                };
                headers.push((name.into_owned(), value));
            })
            .map_err(|source| FrameError::Hpack {
                stream: block.stream,
                source,
            })?;
        if too_large {
            return Err(FrameError::DecodedTooLarge);
        }
        if replaced {
            if self.replaced == 0 {
                tracing::debug!(
                    stream = block.stream,
                    "client sent an :authority the HTTP/2 server refuses; serving it as localhost"
                );
            }
            self.replaced += 1;
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));

        let prio_len = if block.priority.is_some() { 5 } else { 0 };
        let first_len = encoded.len().min(MAX_FRAME_LEN - prio_len);
        let (first, mut rest) = encoded.split_at(first_len);
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        write_frame_header(
            out,
            prio_len + first.len(),
            TYPE_HEADERS,
            flags,
            block.stream,
        );
        if let Some(priority) = &block.priority {
            out.extend_from_slice(priority);
        }
        out.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_LEN));
            rest = tail;
            let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            write_frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, block.stream);
            out.extend_from_slice(chunk);
        }
        Ok(())
    }
}

fn write_frame_header(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    // len <= MAX_FRAME_LEN, so three bytes hold it.
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

/// An accepted connection whose client-to-server bytes pass through a
/// [`Rewriter`]; writes go straight to the inner stream.
pub struct AuthorityFix<T> {
    inner: T,
    rewriter: Rewriter,
    /// Raw bytes read from the client.
    scratch: Box<[u8]>,
    /// Rewritten bytes not yet handed to the server.
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl<T> AuthorityFix<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            scratch: vec![0u8; MAX_FRAME_LEN + FRAME_HEADER_LEN].into_boxed_slice(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut raw = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            let filled = raw.filled();
            if filled.is_empty() {
                this.eof = true;
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = this.rewriter.feed(filled, &mut this.out) {
                tracing::debug!(error = %e, "closing a client connection that broke HTTP/2 framing");
                this.eof = true;
                this.out.clear();
                this.out_pos = 0;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for AuthorityFix<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
