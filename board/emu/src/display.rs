//! The display: a monochrome frame buffer the board draws on, saved as PNG or shown in
//! the terminal.

use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use std::convert::Infallible;

/// A monochrome frame buffer, an embedded-graphics `DrawTarget`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameBuffer {
    size: Size,
    lit: Vec<bool>,
}

/// Why a PNG could not be read back as a frame.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The PNG codec failed.
    #[error("png: {0}")]
    Decode(#[from] png::DecodingError),
    /// Writing failed.
    #[error("png: {0}")]
    Encode(#[from] png::EncodingError),
    /// Not an 8-bit grayscale image (what [`FrameBuffer::to_png`] writes).
    #[error("not an 8-bit grayscale frame")]
    Format,
}

impl FrameBuffer {
    /// A dark display of `width` x `height` pixels.
    pub fn new(width: u32, height: u32) -> Self {
        FrameBuffer {
            size: Size::new(width, height),
            lit: vec![false; width as usize * height as usize],
        }
    }

    /// Whether the pixel at `(x, y)` is lit (false outside).
    pub fn is_lit(&self, x: u32, y: u32) -> bool {
        x < self.size.width
            && y < self.size.height
            && self.lit[y as usize * self.size.width as usize + x as usize]
    }

    /// Lit pixels.
    pub fn lit_count(&self) -> usize {
        self.lit.iter().filter(|&&p| p).count()
    }

    /// The frame as a PNG: 8-bit grayscale, lit pixels white.
    pub fn to_png(&self) -> Result<Vec<u8>, PngError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.size.width, self.size.height);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        let data: Vec<u8> = self.lit.iter().map(|&p| if p { 255 } else { 0 }).collect();
        writer.write_image_data(&data)?;
        writer.finish()?;
        Ok(out)
    }

    /// A frame read back from [`to_png`](Self::to_png)'s output (pixels brighter than
    /// half are lit).
    pub fn from_png(bytes: &[u8]) -> Result<Self, PngError> {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
        let mut data = vec![0; reader.output_buffer_size().ok_or(PngError::Format)?];
        let info = reader.next_frame(&mut data)?;
        if info.color_type != png::ColorType::Grayscale || info.bit_depth != png::BitDepth::Eight {
            return Err(PngError::Format);
        }
        let mut frame = FrameBuffer::new(info.width, info.height);
        for (dst, &v) in frame.lit.iter_mut().zip(&data) {
            *dst = v >= 128;
        }
        Ok(frame)
    }

    /// The frame in the terminal: Braille cells, 2 x 4 pixels each, in a box.
    pub fn to_terminal(&self) -> String {
        let (w, h) = (self.size.width, self.size.height);
        let cols = w.div_ceil(2) as usize;
        let mut out = format!("+{}+\n", "-".repeat(cols));
        // Braille dot bits for (dx, dy).
        const DOTS: [[u32; 4]; 2] = [[0x01, 0x02, 0x04, 0x40], [0x08, 0x10, 0x20, 0x80]];
        for cy in (0..h).step_by(4) {
            out.push('|');
            for cx in (0..w).step_by(2) {
                let mut bits = 0;
                for (dx, column) in DOTS.iter().enumerate() {
                    for (dy, bit) in column.iter().enumerate() {
                        if self.is_lit(cx + dx as u32, cy + dy as u32) {
                            bits |= bit;
                        }
                    }
                }
                out.push(char::from_u32(0x2800 + bits).unwrap_or(' '));
            }
            out.push_str("|\n");
        }
        out += &format!("+{}+\n", "-".repeat(cols));
        out
    }
}

impl OriginDimensions for FrameBuffer {
    fn size(&self) -> Size {
        self.size
    }
}

impl DrawTarget for FrameBuffer {
    type Color = BinaryColor;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Infallible>
    where
        I: IntoIterator<Item = Pixel<BinaryColor>>,
    {
        let (w, h) = (self.size.width as i32, self.size.height as i32);
        for Pixel(p, color) in pixels {
            if (0..w).contains(&p.x) && (0..h).contains(&p.y) {
                self.lit[(p.y * w + p.x) as usize] = color.is_on();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};

    #[test]
    fn frames_round_trip_through_png() {
        let mut frame = FrameBuffer::new(20, 9);
        Rectangle::new(Point::new(2, 0), Size::new(6, 8))
            .into_styled(PrimitiveStyle::with_fill(BinaryColor::On))
            .draw(&mut frame)
            .unwrap();
        assert_eq!(frame.lit_count(), 48);
        assert!(frame.is_lit(2, 0) && frame.is_lit(7, 7) && !frame.is_lit(8, 0));
        let back = FrameBuffer::from_png(&frame.to_png().unwrap()).unwrap();
        assert_eq!(back, frame);
        let view = frame.to_terminal();
        assert_eq!(view.lines().count(), 2 + 3);
        assert!(view.contains('\u{28ff}'), "a fully lit cell: {view}");
    }
}
