//! `glint-quantize`: everything of [`glint_pack`] (import, round-to-nearest and GPTQ
//! packing, fetch), re-exported, plus what needs the runtime's forward pass:
//! calibration ([`calibrate`]: the Hessians GPTQ quantizes with) and evaluation against
//! the float reference ([`evaluate`]).

pub use glint_pack::*;

pub mod calibrate;
pub mod evaluate;
