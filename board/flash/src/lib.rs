//! The host side of the glasses' flashing protocol ([`glint_board::protocol`]): sends a
//! signed manifest and its image over any [`Transport`] (TCP to the emulator, a serial
//! port or a device node opened as a file), resends damaged or unanswered frames,
//! reconnects after a cut and resumes from the device's last verified chunk.
//!
//! ```no_run
//! use glint_flash::{FlashOptions, TcpTransport, flash};
//! # fn demo(manifest: &[u8], image: &[u8]) -> Result<(), glint_flash::FlashError> {
//! let mut tcp = TcpTransport::new("127.0.0.1:7878");
//! let report = flash(&mut tcp, manifest, image, &FlashOptions::default(), |_| {})?;
//! println!("slot {:?}, {:.1} MB/s", report.slot, report.megabytes_per_second());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod keys;

use glint_board::protocol::{
    FRAME_OVERHEAD, FrameReader, MAX_REPLY_PAYLOAD, Nak, PROTOCOL_VERSION, Received, Reply, Request,
};
use glint_board::{HEADER_LEN, ManifestError, ManifestHeader, SlotId, TransferProgress};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A way to reach the device: each [`connect`](Transport::connect) opens a fresh link
/// (after a cut, the flasher connects again and resumes).
pub trait Transport {
    /// The byte stream to the device.
    type Link: Read + Write;
    /// Opens a link.
    fn connect(&mut self) -> io::Result<Self::Link>;
}

/// TCP: the emulator listens on loopback.
#[derive(Clone, Debug)]
pub struct TcpTransport {
    /// `host:port`.
    pub addr: String,
    /// How long to wait for a reply before resending.
    pub reply_timeout: Duration,
}

impl TcpTransport {
    /// TCP to `addr`, waiting 10 s for each reply.
    pub fn new(addr: impl Into<String>) -> Self {
        TcpTransport {
            addr: addr.into(),
            reply_timeout: Duration::from_secs(10),
        }
    }
}

impl Transport for TcpTransport {
    type Link = TcpStream;

    fn connect(&mut self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(&self.addr)?;
        stream.set_read_timeout(Some(self.reply_timeout))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A serial port or any device node (a USB gadget's tty, a FIFO) opened as a file, read
/// and written. Its reads block as the device node does (set a tty's timeout with
/// `stty`); a read that times out is resent like a TCP one.
#[derive(Clone, Debug)]
pub struct PortTransport {
    /// The device node.
    pub path: PathBuf,
}

impl Transport for PortTransport {
    type Link = File;

    fn connect(&mut self) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(&self.path)
    }
}

/// How hard the flasher tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashOptions {
    /// Resends of one frame (damaged, or unanswered within the transport's timeout)
    /// before the link is given up and reopened.
    pub resends: u32,
    /// Links opened after the first before the transfer is given up.
    pub reconnects: u32,
    /// Wait before reopening a link.
    pub reconnect_delay: Duration,
}

impl Default for FlashOptions {
    fn default() -> Self {
        FlashOptions {
            resends: 5,
            reconnects: 20,
            reconnect_delay: Duration::from_millis(200),
        }
    }
}

/// What a finished transfer did.
#[derive(Clone, Debug, PartialEq)]
pub struct FlashReport {
    /// The slot the image is on trial in.
    pub slot: SlotId,
    /// Bytes of the image.
    pub image_len: u64,
    /// Image bytes sent (more than the image after resends and repeated chunks; less
    /// when a transfer resumed).
    pub image_bytes_sent: u64,
    /// The image offset each link started from (the device's last verified chunk).
    pub resumed_at: Vec<u32>,
    /// Frames sent again (damaged, or unanswered).
    pub resends: u32,
    /// Links reopened after a cut.
    pub reconnects: u32,
    /// From the first connect to the device's `Finished`.
    pub elapsed: Duration,
}

impl FlashReport {
    /// Image bytes sent per second, in MB (10^6 bytes).
    pub fn megabytes_per_second(&self) -> f64 {
        self.image_bytes_sent as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The manifest does not parse (the host's own check, before sending).
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The image is not the length its manifest says.
    #[error("image is {actual} bytes, its manifest says {expected}")]
    ImageLength {
        /// From the manifest.
        expected: u64,
        /// Given.
        actual: u64,
    },
    /// The device speaks another protocol version.
    #[error("device speaks protocol {device}, this tool {host}")]
    Version {
        /// The device's version.
        device: u16,
        /// Ours.
        host: u16,
    },
    /// A frame would not fit the device's buffer.
    #[error("{what} of {len} bytes does not fit the device's frames ({max_payload} bytes)")]
    TooLarge {
        /// The manifest or a chunk.
        what: &'static str,
        /// Its payload length.
        len: usize,
        /// The device's largest payload.
        max_payload: u32,
    },
    /// The device refused a request.
    #[error("device: {0}")]
    Refused(Nak),
    /// The device answered something that is not an answer to the request.
    #[error("unexpected reply {got:?} to {request}")]
    UnexpectedReply {
        /// The request's name.
        request: &'static str,
        /// The reply.
        got: Reply,
    },
    /// The link failed, and kept failing after every reconnect allowed.
    #[error("link failed after {reconnects} reconnects: {source}")]
    Link {
        /// Reconnects tried.
        reconnects: u32,
        /// The last failure.
        source: io::Error,
    },
}

/// Why one link's session ended early.
enum SessionEnd {
    /// Reconnect and resume.
    Link(io::Error),
    /// Give up.
    Fatal(FlashError),
}

impl From<io::Error> for SessionEnd {
    fn from(e: io::Error) -> Self {
        SessionEnd::Link(e)
    }
}

impl From<FlashError> for SessionEnd {
    fn from(e: FlashError) -> Self {
        SessionEnd::Fatal(e)
    }
}

/// Sends `image` and its signed `manifest` through `transport` until the device has
/// verified it and put it on trial. `on_progress` sees every acknowledgement.
pub fn flash<T: Transport>(
    transport: &mut T,
    manifest: &[u8],
    image: &[u8],
    opts: &FlashOptions,
    mut on_progress: impl FnMut(&TransferProgress),
) -> Result<FlashReport, FlashError> {
    let head: &[u8; HEADER_LEN] = manifest
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(ManifestError::Truncated)?;
    let header = ManifestHeader::parse(head)?;
    if image.len() as u64 != u64::from(header.image_len) {
        return Err(FlashError::ImageLength {
            expected: header.image_len.into(),
            actual: image.len() as u64,
        });
    }
    let start = Instant::now();
    let mut report = FlashReport {
        slot: SlotId::A,
        image_len: image.len() as u64,
        image_bytes_sent: 0,
        resumed_at: Vec::new(),
        resends: 0,
        reconnects: 0,
        elapsed: Duration::ZERO,
    };
    loop {
        let outcome = transport
            .connect()
            .map_err(SessionEnd::Link)
            .and_then(|link| {
                let mut session = Session::new(link, opts.resends);
                let result =
                    session.transfer(&header, manifest, image, &mut report, &mut on_progress);
                report.resends += session.resends;
                result
            });
        match outcome {
            Ok(slot) => {
                report.slot = slot;
                report.elapsed = start.elapsed();
                return Ok(report);
            }
            Err(SessionEnd::Fatal(e)) => return Err(e),
            Err(SessionEnd::Link(source)) => {
                if report.reconnects >= opts.reconnects {
                    return Err(FlashError::Link {
                        reconnects: report.reconnects,
                        source,
                    });
                }
                report.reconnects += 1;
                std::thread::sleep(opts.reconnect_delay);
            }
        }
    }
}

/// One link: request, reply, one at a time.
struct Session<L> {
    link: L,
    seq: u16,
    resends_allowed: u32,
    resends: u32,
    frame: Vec<u8>,
}

impl<L: Read + Write> Session<L> {
    fn new(link: L, resends_allowed: u32) -> Self {
        Session {
            link,
            seq: 0,
            resends_allowed,
            resends: 0,
            frame: Vec::new(),
        }
    }

    fn transfer(
        &mut self,
        header: &ManifestHeader,
        manifest: &[u8],
        image: &[u8],
        report: &mut FlashReport,
        on_progress: &mut impl FnMut(&TransferProgress),
    ) -> Result<SlotId, SessionEnd> {
        let max_payload = match self.exchange(Request::Hello)? {
            Reply::Welcome {
                version,
                max_payload,
            } if version == PROTOCOL_VERSION => max_payload,
            Reply::Welcome { version, .. } => {
                return Err(FlashError::Version {
                    device: version,
                    host: PROTOCOL_VERSION,
                }
                .into());
            }
            got => return Err(unexpected("Hello", got)),
        };
        let fits = |what, len: usize| {
            if len > max_payload as usize {
                Err(FlashError::TooLarge {
                    what,
                    len,
                    max_payload,
                })
            } else {
                Ok(())
            }
        };
        fits("manifest", manifest.len())?;
        fits("chunk", header.chunk_size as usize + 4)?;
        let mut progress = match self.exchange(Request::Begin { manifest })? {
            Reply::Progress(p) => p,
            got => return Err(unexpected("Begin", got)),
        };
        report.resumed_at.push(progress.resume_offset);
        on_progress(&progress);
        while progress.next_chunk < header.chunk_count {
            let index = progress.next_chunk;
            let (start, len) = header.chunk(index).unwrap_or((0, 0));
            let bytes = image
                .get(start as usize..start as usize + len as usize)
                .unwrap_or_default();
            report.image_bytes_sent += bytes.len() as u64;
            match self.exchange(Request::Chunk { index, bytes })? {
                Reply::Progress(p) => progress = p,
                Reply::Nak(Nak::OutOfOrder { expected, .. }) => progress.next_chunk = expected,
                got => return Err(unexpected("Chunk", got)),
            }
            on_progress(&progress);
        }
        match self.exchange(Request::Finish)? {
            Reply::Finished { slot } => Ok(slot),
            got => Err(unexpected("Finish", got)),
        }
    }

    /// Sends `request` and waits for its reply; resends after a damaged frame or a
    /// timeout. A refusal other than an out-of-order chunk ends the transfer.
    fn exchange(&mut self, request: Request<'_>) -> Result<Reply, SessionEnd> {
        self.seq = self.seq.wrapping_add(1);
        let (_, prefix, bytes) = request.parts();
        self.frame
            .resize(prefix.len() + bytes.len() + FRAME_OVERHEAD, 0);
        let len = request
            .encode(self.seq, &mut self.frame)
            .ok_or_else(|| io::Error::other("frame does not encode"))?;
        let mut attempt = 0;
        loop {
            self.link
                .write_all(self.frame.get(..len).unwrap_or_default())?;
            self.link.flush()?;
            match self.await_reply()? {
                Some(Reply::Nak(Nak::BadCrc)) | None => {}
                Some(Reply::Nak(nak @ Nak::OutOfOrder { .. })) => return Ok(Reply::Nak(nak)),
                Some(Reply::Nak(nak)) => return Err(FlashError::Refused(nak).into()),
                Some(reply) => return Ok(reply),
            }
            attempt += 1;
            if attempt > self.resends_allowed {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no good reply after {attempt} tries"),
                )
                .into());
            }
            self.resends += 1;
        }
    }

    /// The reply to the current request; `None` when it timed out or came damaged
    /// (resend). Replies to earlier requests (answers to resends) are skipped.
    fn await_reply(&mut self) -> io::Result<Option<Reply>> {
        let mut buf = [0u8; MAX_REPLY_PAYLOAD + FRAME_OVERHEAD];
        let mut reader = FrameReader::new(&mut buf);
        let mut input = [0u8; 256];
        loop {
            let n = match read_link(&mut self.link, &mut input)? {
                LinkRead::Bytes(n) => n,
                LinkRead::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
                LinkRead::TimedOut => return Ok(None),
            };
            let mut rest = input.get(..n).unwrap_or_default();
            while !rest.is_empty() {
                let taken = reader.push(rest);
                rest = rest.get(taken..).unwrap_or_default();
                match reader.frame() {
                    Some(Received::Frame(frame)) if frame.seq == self.seq => {
                        return Ok(Reply::parse(&frame));
                    }
                    Some(Received::Damaged { .. }) => return Ok(None),
                    _ => {}
                }
            }
        }
    }
}

/// What one read of a link brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRead {
    /// This many bytes.
    Bytes(usize),
    /// The other end closed the link.
    Closed,
    /// Nothing within the link's timeout.
    TimedOut,
}

/// Reads what the link has (retrying an interrupted read); a timeout is an outcome, not
/// an error. Both ends of the protocol read this way.
pub fn read_link(link: &mut impl Read, buf: &mut [u8]) -> io::Result<LinkRead> {
    loop {
        return match link.read(buf) {
            Ok(0) => Ok(LinkRead::Closed),
            Ok(n) => Ok(LinkRead::Bytes(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(LinkRead::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

fn unexpected(request: &'static str, got: Reply) -> SessionEnd {
    match got {
        Reply::Nak(nak) => SessionEnd::Fatal(FlashError::Refused(nak)),
        got => SessionEnd::Fatal(FlashError::UnexpectedReply { request, got }),
    }
}
