//! The flashing protocol: how `glint-flash` hands a signed manifest and an image to the
//! device over any byte stream (TCP to the emulator, a serial port, a device node).
//!
//! Request and reply, one at a time. Every message is a frame:
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..2 | sync `A7 1F` |
//! | 2 | kind |
//! | 3..5 | sequence number (u16 LE; a reply carries its request's) |
//! | 5..9 | payload length (u32 LE) |
//! | 9.. | payload |
//! | last 4 | CRC-32 (IEEE) of kind, sequence, length and payload |
//!
//! Requests: `Hello` (empty) → `Welcome` (protocol version, largest payload the device
//! takes); `Begin` (the manifest) → `Progress`; `Chunk` (index u32, bytes) →
//! `Progress`; `Finish` → `Finished` (the slot now on trial). `Progress` says where to go
//! on: after a reconnect or a power cut, `Begin` with the same manifest answers with the
//! device's last verified chunk, and the host resumes there. `Finish` is idempotent: a
//! host whose `Finished` was lost sends `Finish` again, or reconnects and sends `Begin`
//! with the same manifest (answered as complete) and `Finish`, and is answered
//! `Finished` with the trial slot again. A damaged frame is answered
//! with [`Nak::BadCrc`] (resend it); a chunk out of order with [`Nak::OutOfOrder`] (go
//! on from the chunk it names); the device drops a half-received frame when its link
//! times out ([`FlashLink::timeout`]), the host resends when a reply does not come.
//!
//! The device side, [`FlashLink`], drives an [`Updater`] and works in a buffer the
//! firmware lends it: no allocation, no panic on any input.

use crate::layout::SlotId;
use crate::storage::MappedFlash;
use crate::update::{TransferProgress, Updater};
use crate::{ManifestError, UpdateError};
use embedded_storage::nor_flash::{NorFlash, NorFlashErrorKind};

/// The first two bytes of every frame.
pub const SYNC: [u8; 2] = [0xa7, 0x1f];
/// The protocol this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of a frame before its payload: sync, kind, sequence, length.
pub const FRAME_HEADER_LEN: usize = 9;
/// Bytes a frame adds to its payload: header and CRC.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 4;
/// Bytes of a chunk request's payload before the chunk: its index.
pub const CHUNK_PREFIX_LEN: usize = 4;
/// The largest reply payload.
pub const MAX_REPLY_PAYLOAD: usize = 16;

/// The kind byte of each message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Kind {
    /// Host: who are you?
    Hello = 0x01,
    /// Host: the signed manifest of the image to come.
    Begin = 0x02,
    /// Host: one chunk of the image.
    Chunk = 0x03,
    /// Host: every chunk is sent; verify and put the image on trial.
    Finish = 0x04,
    /// Device: protocol version and largest payload.
    Welcome = 0x81,
    /// Device: where the transfer stands.
    Progress = 0x82,
    /// Device: the image verified and is on trial in a slot.
    Finished = 0x83,
    /// Device: the request was refused; why.
    Nak = 0xff,
}

impl Kind {
    /// The kind of a kind byte.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            0x01 => Kind::Hello,
            0x02 => Kind::Begin,
            0x03 => Kind::Chunk,
            0x04 => Kind::Finish,
            0x81 => Kind::Welcome,
            0x82 => Kind::Progress,
            0x83 => Kind::Finished,
            0xff => Kind::Nak,
            _ => return None,
        })
    }
}

/// A frame whose CRC checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The kind byte (not necessarily a known [`Kind`]).
    pub kind: u8,
    /// Sequence number.
    pub seq: u16,
    /// Payload.
    pub payload: &'a [u8],
}

/// What [`FrameReader::frame`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A whole frame, CRC checked.
    Frame(Frame<'a>),
    /// A whole frame whose CRC does not match: damaged in transit. The sequence number
    /// is as received (it may be damaged too).
    Damaged {
        /// Sequence number as received.
        seq: u16,
    },
    /// A frame header announcing more payload than the buffer holds; the reader has
    /// skipped it and looks for the next sync.
    Oversized {
        /// Sequence number as received.
        seq: u16,
        /// The length announced.
        len: u32,
    },
}

/// Puts a frame together from its payload's parts into `out`; returns its length, or
/// `None` when `out` is too small or the payload is 4 GiB or more.
pub fn encode_frame(kind: u8, seq: u16, parts: &[&[u8]], out: &mut [u8]) -> Option<usize> {
    let payload_len = parts
        .iter()
        .try_fold(0usize, |n, p| n.checked_add(p.len()))?;
    let total = payload_len.checked_add(FRAME_OVERHEAD)?;
    let len = u32::try_from(payload_len).ok()?;
    let frame = out.get_mut(..total)?;
    let (header, rest) = frame.split_at_mut(FRAME_HEADER_LEN);
    let (sync, fields) = header.split_at_mut(2);
    sync.copy_from_slice(&SYNC);
    let (kind_byte, fields) = fields.split_at_mut(1);
    kind_byte.copy_from_slice(&[kind]);
    let (seq_bytes, len_bytes) = fields.split_at_mut(2);
    seq_bytes.copy_from_slice(&seq.to_le_bytes());
    len_bytes.copy_from_slice(&len.to_le_bytes());
    let (payload, crc_bytes) = rest.split_at_mut(payload_len);
    let mut at = 0;
    for part in parts {
        let end = at + part.len();
        payload.get_mut(at..end)?.copy_from_slice(part);
        at = end;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(header.get(2..)?);
    crc.update(payload);
    crc_bytes.copy_from_slice(&crc.finalize().to_le_bytes());
    Some(total)
}

/// Finds frames in a byte stream, in a buffer it is lent: bytes go in with
/// [`push`](Self::push), whole frames come out of [`frame`](Self::frame). Bytes before
/// a sync are skipped, so it finds its feet again after noise or a dropped frame.
pub struct FrameReader<'b> {
    buf: &'b mut [u8],
    filled: usize,
    complete: bool,
}

impl<'b> FrameReader<'b> {
    /// A reader whose frames can be as long as `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        FrameReader {
            buf,
            filled: 0,
            complete: false,
        }
    }

    /// The largest payload a frame may carry.
    pub fn max_payload(&self) -> usize {
        self.buf.len().saturating_sub(FRAME_OVERHEAD)
    }

    /// Whether part of a frame has arrived and the rest has not.
    pub fn is_partial(&self) -> bool {
        self.filled > 0 && !self.complete
    }

    /// Drops a partial frame (the link went quiet or was reset).
    pub fn reset(&mut self) {
        self.filled = 0;
        self.complete = false;
    }

    fn announced_len(&self) -> Option<u32> {
        let bytes = self.buf.get(5..FRAME_HEADER_LEN)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    fn seq(&self) -> u16 {
        self.buf
            .get(3..5)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u16::from_le_bytes)
    }

    /// Takes bytes until a frame is whole; returns how many it took (the rest belong to
    /// later frames: push them after [`frame`](Self::frame)). An oversized header is
    /// reported by `frame` once; the reader then looks for the next sync.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        if self.complete {
            self.reset();
        }
        for (taken, &byte) in bytes.iter().enumerate() {
            if self.filled < SYNC.len() {
                self.filled = match SYNC.get(self.filled) {
                    Some(&want) if want == byte => self.filled + 1,
                    _ if byte == SYNC[0] => 1,
                    _ => 0,
                };
                if let Some(slot) = self.buf.get_mut(self.filled.saturating_sub(1)) {
                    *slot = byte;
                }
                continue;
            }
            let Some(slot) = self.buf.get_mut(self.filled) else {
                self.reset();
                continue;
            };
            *slot = byte;
            self.filled += 1;
            if self.filled < FRAME_HEADER_LEN {
                continue;
            }
            let len = self.announced_len().unwrap_or(u32::MAX);
            let total = (len as usize).saturating_add(FRAME_OVERHEAD);
            if len as usize > self.max_payload() || self.filled == total {
                self.complete = true;
                return taken + 1;
            }
        }
        bytes.len()
    }

    /// The frame [`push`](Self::push) completed, if it did.
    pub fn frame(&self) -> Option<Received<'_>> {
        if !self.complete {
            return None;
        }
        let seq = self.seq();
        let len = self.announced_len()?;
        if len as usize > self.max_payload() {
            return Some(Received::Oversized { seq, len });
        }
        let body_end = FRAME_HEADER_LEN.checked_add(len as usize)?;
        let checked = self.buf.get(2..body_end)?;
        let crc = self.buf.get(body_end..body_end.checked_add(4)?)?;
        if crc32fast::hash(checked).to_le_bytes() != crc {
            return Some(Received::Damaged { seq });
        }
        Some(Received::Frame(Frame {
            kind: *self.buf.get(2)?,
            seq,
            payload: self.buf.get(FRAME_HEADER_LEN..body_end)?,
        }))
    }
}

/// A request from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Who are you?
    Hello,
    /// The signed manifest of the image to come.
    Begin {
        /// The manifest's bytes.
        manifest: &'a [u8],
    },
    /// One chunk of the image.
    Chunk {
        /// Chunk index.
        index: u32,
        /// Its bytes.
        bytes: &'a [u8],
    },
    /// Every chunk is sent.
    Finish,
}

impl<'a> Request<'a> {
    /// The request a frame carries, `None` if it is not a well-formed request.
    pub fn parse(frame: &Frame<'a>) -> Option<Self> {
        let empty = frame.payload.is_empty();
        Some(match Kind::from_byte(frame.kind)? {
            Kind::Hello if empty => Request::Hello,
            Kind::Begin => Request::Begin {
                manifest: frame.payload,
            },
            Kind::Chunk => {
                let (index, bytes) = frame.payload.split_at_checked(CHUNK_PREFIX_LEN)?;
                Request::Chunk {
                    index: u32::from_le_bytes(index.try_into().ok()?),
                    bytes,
                }
            }
            Kind::Finish if empty => Request::Finish,
            _ => return None,
        })
    }

    /// Its kind, and its payload as up to two parts (a chunk's index, then its bytes).
    pub fn parts(&self) -> (Kind, [u8; CHUNK_PREFIX_LEN], &'a [u8]) {
        match *self {
            Request::Hello => (Kind::Hello, [0; 4], &[]),
            Request::Begin { manifest } => (Kind::Begin, [0; 4], manifest),
            Request::Chunk { index, bytes } => (Kind::Chunk, index.to_le_bytes(), bytes),
            Request::Finish => (Kind::Finish, [0; 4], &[]),
        }
    }

    /// Encodes the request as a frame into `out`; returns the frame's length.
    pub fn encode(&self, seq: u16, out: &mut [u8]) -> Option<usize> {
        let (kind, prefix, bytes) = self.parts();
        let prefix: &[u8] = if kind == Kind::Chunk { &prefix } else { &[] };
        encode_frame(kind as u8, seq, &[prefix, bytes], out)
    }
}

/// A refusal, as the device sends it and the host reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Nak {
    /// The frame's CRC did not match: resend it.
    #[error("frame damaged in transit")]
    BadCrc,
    /// The frame was longer than the device's buffer.
    #[error("frame too large: the device takes payloads of at most {max_payload} bytes")]
    TooLarge {
        /// The largest payload the device takes.
        max_payload: u32,
    },
    /// Not a request this device knows, or a malformed one.
    #[error("malformed or unknown request")]
    BadRequest,
    /// A chunk other than the next: go on from `expected`.
    #[error("chunk {got} out of order, the device expects {expected}")]
    OutOfOrder {
        /// The next chunk the device expects.
        expected: u32,
        /// The chunk sent.
        got: u32,
    },
    /// The update refused the request (see [`UpdateRefusal`]); `detail` holds the
    /// error's numbers (chunk index, lengths), 0 where it has none.
    #[error("device refused: {refusal} ({}, {})", detail[0], detail[1])]
    Refused {
        /// Why.
        refusal: UpdateRefusal,
        /// Its numbers.
        detail: [u32; 2],
    },
}

/// Which [`UpdateError`] refused a request, as a code on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum UpdateRefusal {
    /// A code this host does not know.
    #[error("unknown reason")]
    Unknown = 0,
    /// [`UpdateError::Flash`].
    #[error("flash failure")]
    Flash = 1,
    /// [`UpdateError::Layout`].
    #[error("bad partition table")]
    Layout = 2,
    /// [`UpdateError::Manifest`] other than a bad signature.
    #[error("malformed manifest")]
    Manifest = 3,
    /// [`ManifestError::BadSignature`]: signed with another key.
    #[error("manifest signature does not verify")]
    BadSignature = 4,
    /// [`UpdateError::ManifestTooLarge`] (length, room).
    #[error("manifest too large")]
    ManifestTooLarge = 5,
    /// [`UpdateError::ImageTooLarge`] (length, room).
    #[error("image too large for a slot")]
    ImageTooLarge = 6,
    /// [`UpdateError::ChunkSize`] (chunk size, erase size).
    #[error("chunk size not whole erase sectors")]
    ChunkSize = 7,
    /// [`UpdateError::TrialPending`].
    #[error("a trial slot is pending: boot the device so it confirms or rejects it")]
    TrialPending = 8,
    /// [`UpdateError::NoFreeSlot`].
    #[error("no free slot")]
    NoFreeSlot = 9,
    /// [`UpdateError::NoTransfer`].
    #[error("no transfer in progress")]
    NoTransfer = 10,
    /// [`UpdateError::ChunkLength`] (index, expected length).
    #[error("chunk of the wrong length")]
    ChunkLength = 11,
    /// [`UpdateError::ChunkHashMismatch`] (index).
    #[error("chunk does not match its hash")]
    ChunkHashMismatch = 12,
    /// [`UpdateError::ReadBack`].
    #[error("flash read-back differs")]
    ReadBack = 13,
    /// [`UpdateError::Incomplete`] (next chunk, chunk count).
    #[error("transfer incomplete")]
    Incomplete = 14,
    /// [`UpdateError::ImageHashMismatch`].
    #[error("image does not match the manifest's SHA-256")]
    ImageHashMismatch = 15,
    /// [`UpdateError::Model`].
    #[error("image is not a valid .glint model")]
    Model = 16,
    /// [`UpdateError::FormatVersion`] (manifest's, image's).
    #[error(".glint version differs from the manifest's")]
    FormatVersion = 17,
    /// [`UpdateError::NoTrial`], [`UpdateError::TrialNotBooted`] or
    /// [`UpdateError::NoBootableSlot`]: not states a transfer reaches.
    #[error("boot state")]
    BootState = 18,
}

impl UpdateRefusal {
    const ALL: [UpdateRefusal; 19] = [
        UpdateRefusal::Unknown,
        UpdateRefusal::Flash,
        UpdateRefusal::Layout,
        UpdateRefusal::Manifest,
        UpdateRefusal::BadSignature,
        UpdateRefusal::ManifestTooLarge,
        UpdateRefusal::ImageTooLarge,
        UpdateRefusal::ChunkSize,
        UpdateRefusal::TrialPending,
        UpdateRefusal::NoFreeSlot,
        UpdateRefusal::NoTransfer,
        UpdateRefusal::ChunkLength,
        UpdateRefusal::ChunkHashMismatch,
        UpdateRefusal::ReadBack,
        UpdateRefusal::Incomplete,
        UpdateRefusal::ImageHashMismatch,
        UpdateRefusal::Model,
        UpdateRefusal::FormatVersion,
        UpdateRefusal::BootState,
    ];

    fn from_code(code: u8) -> UpdateRefusal {
        Self::ALL
            .into_iter()
            .find(|r| *r as u8 == code)
            .unwrap_or(UpdateRefusal::Unknown)
    }
}

impl From<&UpdateError> for Nak {
    fn from(e: &UpdateError) -> Nak {
        let sat = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let (refusal, detail) = match *e {
            UpdateError::UnexpectedChunk { expected, got } => {
                return Nak::OutOfOrder { expected, got };
            }
            UpdateError::Flash(_) => (UpdateRefusal::Flash, [0, 0]),
            UpdateError::Layout(_) => (UpdateRefusal::Layout, [0, 0]),
            UpdateError::Manifest(ManifestError::BadSignature) => {
                (UpdateRefusal::BadSignature, [0, 0])
            }
            UpdateError::Manifest(_) => (UpdateRefusal::Manifest, [0, 0]),
            UpdateError::ManifestTooLarge { len, room } => {
                (UpdateRefusal::ManifestTooLarge, [sat(len), room])
            }
            UpdateError::ImageTooLarge { len, room } => (UpdateRefusal::ImageTooLarge, [len, room]),
            UpdateError::ChunkSize {
                chunk_size,
                erase_size,
            } => (UpdateRefusal::ChunkSize, [chunk_size, erase_size]),
            UpdateError::TrialPending => (UpdateRefusal::TrialPending, [0, 0]),
            UpdateError::NoFreeSlot => (UpdateRefusal::NoFreeSlot, [0, 0]),
            UpdateError::NoTransfer => (UpdateRefusal::NoTransfer, [0, 0]),
            UpdateError::ChunkLength {
                index, expected, ..
            } => (UpdateRefusal::ChunkLength, [index, expected]),
            UpdateError::ChunkHashMismatch { index } => {
                (UpdateRefusal::ChunkHashMismatch, [index, 0])
            }
            UpdateError::ReadBack => (UpdateRefusal::ReadBack, [0, 0]),
            UpdateError::Incomplete {
                next_chunk,
                chunk_count,
            } => (UpdateRefusal::Incomplete, [next_chunk, chunk_count]),
            UpdateError::ImageHashMismatch => (UpdateRefusal::ImageHashMismatch, [0, 0]),
            UpdateError::Model(_) => (UpdateRefusal::Model, [0, 0]),
            UpdateError::FormatVersion { manifest, image } => (
                UpdateRefusal::FormatVersion,
                [u32::from(manifest), u32::from(image)],
            ),
            UpdateError::NoTrial | UpdateError::TrialNotBooted | UpdateError::NoBootableSlot => {
                (UpdateRefusal::BootState, [0, 0])
            }
        };
        Nak::Refused { refusal, detail }
    }
}

/// A reply from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The answer to `Hello`.
    Welcome {
        /// The device's protocol version.
        version: u16,
        /// The largest payload the device takes.
        max_payload: u32,
    },
    /// Where the transfer stands.
    Progress(TransferProgress),
    /// The image verified and is on trial in `slot`.
    Finished {
        /// The slot.
        slot: SlotId,
    },
    /// Refused.
    Nak(Nak),
}

fn slot_code(slot: SlotId) -> u8 {
    match slot {
        SlotId::A => 0,
        SlotId::B => 1,
    }
}

fn slot_from_code(code: u8) -> Option<SlotId> {
    match code {
        0 => Some(SlotId::A),
        1 => Some(SlotId::B),
        _ => None,
    }
}

/// Reads little-endian fields off the front of a payload.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
}

/// Writes little-endian fields into a payload.
struct Writer<'a> {
    out: &'a mut [u8; MAX_REPLY_PAYLOAD],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if let Some(dst) = self.out.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
            self.len = end;
        }
    }
}

impl Reply {
    /// The reply a frame carries, `None` if it is not a well-formed reply.
    pub fn parse(frame: &Frame<'_>) -> Option<Reply> {
        let mut f = Fields(frame.payload);
        let reply = match Kind::from_byte(frame.kind)? {
            Kind::Welcome => Reply::Welcome {
                version: f.u16()?,
                max_payload: f.u32()?,
            },
            Kind::Progress => Reply::Progress(TransferProgress {
                slot: slot_from_code(f.u8()?)?,
                next_chunk: f.u32()?,
                chunk_count: f.u32()?,
                resume_offset: f.u32()?,
            }),
            Kind::Finished => Reply::Finished {
                slot: slot_from_code(f.u8()?)?,
            },
            Kind::Nak => {
                let code = f.u8()?;
                let (a, b) = (f.u32()?, f.u32()?);
                Reply::Nak(match code {
                    0 => Nak::BadCrc,
                    1 => Nak::TooLarge { max_payload: a },
                    2 => Nak::BadRequest,
                    3 => Nak::OutOfOrder {
                        expected: a,
                        got: b,
                    },
                    _ => Nak::Refused {
                        refusal: UpdateRefusal::from_code(code.wrapping_sub(4)),
                        detail: [a, b],
                    },
                })
            }
            _ => return None,
        };
        f.0.is_empty().then_some(reply)
    }

    /// Its kind and payload.
    pub fn payload(&self) -> (Kind, [u8; MAX_REPLY_PAYLOAD], usize) {
        let mut out = [0u8; MAX_REPLY_PAYLOAD];
        let mut w = Writer {
            out: &mut out,
            len: 0,
        };
        let kind = match *self {
            Reply::Welcome {
                version,
                max_payload,
            } => {
                w.put(&version.to_le_bytes());
                w.put(&max_payload.to_le_bytes());
                Kind::Welcome
            }
            Reply::Progress(p) => {
                w.put(&[slot_code(p.slot)]);
                w.put(&p.next_chunk.to_le_bytes());
                w.put(&p.chunk_count.to_le_bytes());
                w.put(&p.resume_offset.to_le_bytes());
                Kind::Progress
            }
            Reply::Finished { slot } => {
                w.put(&[slot_code(slot)]);
                Kind::Finished
            }
            Reply::Nak(nak) => {
                let (code, a, b) = match nak {
                    Nak::BadCrc => (0, 0, 0),
                    Nak::TooLarge { max_payload } => (1, max_payload, 0),
                    Nak::BadRequest => (2, 0, 0),
                    Nak::OutOfOrder { expected, got } => (3, expected, got),
                    Nak::Refused { refusal, detail } => {
                        ((refusal as u8).wrapping_add(4), detail[0], detail[1])
                    }
                };
                w.put(&[code]);
                w.put(&u32::to_le_bytes(a));
                w.put(&u32::to_le_bytes(b));
                Kind::Nak
            }
        };
        let len = w.len;
        (kind, out, len)
    }

    /// Encodes the reply as a frame into `out`; returns the frame's length.
    pub fn encode(&self, seq: u16, out: &mut [u8]) -> Option<usize> {
        let (kind, payload, len) = self.payload();
        encode_frame(kind as u8, seq, &[payload.get(..len)?], out)
    }
}

/// Why [`FlashLink::receive`] stopped.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum LinkError<E> {
    /// The reply could not be sent.
    #[error("link: {0:?}")]
    Send(E),
    /// The flash failed (in the emulator: power was cut). The device stops talking.
    #[error("flash: {0}")]
    Flash(NorFlashErrorKind),
}

/// The device side of the protocol: takes bytes as they arrive, drives an [`Updater`],
/// and sends a reply for every frame.
pub struct FlashLink<'b> {
    reader: FrameReader<'b>,
}

impl<'b> FlashLink<'b> {
    /// A link whose frames can be as long as `buf` (the manifest must fit, and a chunk
    /// with its index).
    pub fn new(buf: &'b mut [u8]) -> Self {
        FlashLink {
            reader: FrameReader::new(buf),
        }
    }

    /// The link went quiet mid-frame, or was closed: forget the partial frame.
    pub fn timeout(&mut self) {
        self.reader.reset();
    }

    /// Whether a frame is half received.
    pub fn is_partial(&self) -> bool {
        self.reader.is_partial()
    }

    /// Handles `bytes` from the host: every whole frame among them is answered through
    /// `send`. Returns the slot an image was put on trial in, if a `Finish` succeeded.
    pub fn receive<F, E>(
        &mut self,
        mut bytes: &[u8],
        updater: &mut Updater<F>,
        mut send: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Option<SlotId>, LinkError<E>>
    where
        F: NorFlash + MappedFlash,
    {
        let mut finished = None;
        while !bytes.is_empty() {
            let taken = self.reader.push(bytes);
            bytes = bytes.get(taken..).unwrap_or_default();
            let max_payload = u32::try_from(self.reader.max_payload()).unwrap_or(u32::MAX);
            let (seq, reply) = match self.reader.frame() {
                None => continue,
                Some(Received::Damaged { seq }) => (seq, Reply::Nak(Nak::BadCrc)),
                Some(Received::Oversized { seq, .. }) => {
                    (seq, Reply::Nak(Nak::TooLarge { max_payload }))
                }
                Some(Received::Frame(frame)) => {
                    let reply = match Request::parse(&frame) {
                        None => Reply::Nak(Nak::BadRequest),
                        Some(request) => {
                            match handle(request, updater, max_payload, &mut finished) {
                                Ok(reply) => reply,
                                Err(UpdateError::Flash(kind)) => {
                                    return Err(LinkError::Flash(kind));
                                }
                                Err(e) => Reply::Nak(Nak::from(&e)),
                            }
                        }
                    };
                    (frame.seq, reply)
                }
            };
            let mut out = [0u8; MAX_REPLY_PAYLOAD + FRAME_OVERHEAD];
            let len = reply.encode(seq, &mut out).unwrap_or(0);
            send(out.get(..len).unwrap_or_default()).map_err(LinkError::Send)?;
        }
        Ok(finished)
    }
}

fn handle<F: NorFlash + MappedFlash>(
    request: Request<'_>,
    updater: &mut Updater<F>,
    max_payload: u32,
    finished: &mut Option<SlotId>,
) -> Result<Reply, UpdateError> {
    Ok(match request {
        Request::Hello => Reply::Welcome {
            version: PROTOCOL_VERSION,
            max_payload,
        },
        Request::Begin { manifest } => Reply::Progress(updater.begin(manifest)?),
        Request::Chunk { index, bytes } => Reply::Progress(updater.write_chunk(index, bytes)?),
        Request::Finish => {
            let slot = updater.finish()?;
            *finished = Some(slot);
            Reply::Finished { slot }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(request: Request<'_>, seq: u16) -> ([u8; 64], usize) {
        let mut out = [0u8; 64];
        let n = request.encode(seq, &mut out).unwrap();
        (out, n)
    }

    #[test]
    fn frames_survive_noise_split_reads_and_report_damage() {
        let (a, na) = frame_bytes(
            Request::Chunk {
                index: 7,
                bytes: b"hello",
            },
            3,
        );
        let mut stream = [0u8; 200];
        // Noise (including a lone sync byte), then the frame, then a damaged copy.
        stream[..4].copy_from_slice(&[0x00, 0xa7, 0x42, 0x1f]);
        stream[4..4 + na].copy_from_slice(&a[..na]);
        stream[4 + na..4 + 2 * na].copy_from_slice(&a[..na]);
        stream[4 + na + 12] ^= 0x10;
        let total = 4 + 2 * na;
        let mut buf = [0u8; 64];
        let mut reader = FrameReader::new(&mut buf);
        let mut seen = [None, None];
        let mut rest = &stream[..total];
        let mut n = 0;
        while !rest.is_empty() {
            // One byte at a time: the worst split.
            let taken = reader.push(&rest[..1]);
            rest = &rest[taken..];
            if let Some(r) = reader.frame() {
                seen[n] = Some(match r {
                    Received::Frame(f) => Request::parse(&f).map(|req| (f.seq, req.parts().1)),
                    _ => None,
                });
                n += 1;
            }
        }
        assert_eq!(n, 2);
        assert_eq!(seen[0], Some(Some((3, 7u32.to_le_bytes()))));
        assert_eq!(seen[1], Some(None), "the damaged copy is not a frame");
    }

    #[test]
    fn oversized_frames_are_reported_and_skipped() {
        let (a, na) = frame_bytes(Request::Begin { manifest: &[1; 40] }, 9);
        let mut buf = [0u8; 32];
        let mut reader = FrameReader::new(&mut buf);
        let taken = reader.push(&a[..na]);
        assert_eq!(taken, FRAME_HEADER_LEN);
        assert_eq!(
            reader.frame(),
            Some(Received::Oversized { seq: 9, len: 40 })
        );
        reader.push(&a[taken..na]);
        assert!(!matches!(reader.frame(), Some(Received::Frame(_))));
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply::Welcome {
                version: 1,
                max_payload: 70000,
            },
            Reply::Progress(TransferProgress {
                slot: SlotId::B,
                next_chunk: 3,
                chunk_count: 9,
                resume_offset: 3 * 4096,
            }),
            Reply::Finished { slot: SlotId::A },
            Reply::Nak(Nak::BadCrc),
            Reply::Nak(Nak::TooLarge { max_payload: 5 }),
            Reply::Nak(Nak::BadRequest),
            Reply::Nak(Nak::OutOfOrder {
                expected: 2,
                got: 5,
            }),
            Reply::Nak(Nak::Refused {
                refusal: UpdateRefusal::ChunkLength,
                detail: [4, 4096],
            }),
        ];
        for (seq, reply) in replies.into_iter().enumerate() {
            let mut out = [0u8; 64];
            let n = reply.encode(seq as u16, &mut out).unwrap();
            let mut buf = [0u8; 64];
            let mut reader = FrameReader::new(&mut buf);
            assert_eq!(reader.push(&out[..n]), n);
            let Some(Received::Frame(frame)) = reader.frame() else {
                panic!("no frame for {reply:?}");
            };
            assert_eq!(frame.seq, seq as u16);
            assert_eq!(Reply::parse(&frame), Some(reply));
        }
        for refusal in UpdateRefusal::ALL {
            assert_eq!(UpdateRefusal::from_code(refusal as u8), refusal);
        }
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut buf = [0u8; 48];
        let mut reader = FrameReader::new(&mut buf);
        let mut x = 0x1234_5678u32;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Sync bytes often, so headers with random lengths get parsed.
            let byte = match x % 5 {
                0 => SYNC[0],
                1 => SYNC[1],
                _ => (x >> 8) as u8,
            };
            reader.push(&[byte]);
            if let Some(Received::Frame(f)) = reader.frame() {
                let _ = Request::parse(&f);
                let _ = Reply::parse(&f);
            }
        }
    }
}
