//! The device end of a flashing link: bytes in, [`FlashLink`] replies out.

use crate::EmuError;
use crate::flash::EmuFlash;
use glint_board::protocol::{FlashLink, LinkError};
use glint_board::{SlotId, UpdateError, Updater};
use glint_flash::{LinkRead, read_link};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Bytes of the device's frame buffer: a 128 KiB manifest or a chunk of up to 128 KiB,
/// with room to spare.
pub const LINK_BUFFER_LEN: usize = 256 << 10;
/// A link silent this long with nothing half received is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// Serves one link until the host closes it: every request is answered. A read that
/// times out (set the link's timeout) drops a half-received frame. Returns the slot an
/// update put on trial, if one finished.
pub fn serve<L: Read + Write>(
    link: &mut L,
    updater: &mut Updater<EmuFlash>,
    buf: &mut [u8],
) -> Result<Option<SlotId>, EmuError> {
    let mut flash_link = FlashLink::new(buf);
    let mut input = vec![0u8; 64 << 10];
    let mut finished = None;
    let mut heard = Instant::now();
    loop {
        let n = match read_link(link, &mut input) {
            Ok(LinkRead::Bytes(n)) => n,
            Ok(LinkRead::Closed) => return Ok(finished),
            Ok(LinkRead::TimedOut) => {
                if flash_link.is_partial() {
                    flash_link.timeout();
                } else if heard.elapsed() > IDLE_LIMIT {
                    return Ok(finished);
                }
                continue;
            }
            // A host that goes away mid-transfer: the transfer resumes on its next link.
            Err(_) => return Ok(finished),
        };
        heard = Instant::now();
        let bytes = &input[..n];
        match flash_link.receive(bytes, updater, |reply| link.write_all(reply)) {
            Ok(Some(slot)) => finished = Some(slot),
            Ok(None) => {}
            Err(LinkError::Send(_)) => return Ok(finished),
            Err(LinkError::Flash(kind)) => return Err(EmuError::Update(UpdateError::Flash(kind))),
        }
    }
}
