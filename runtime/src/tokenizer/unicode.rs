//! Code-point classification and the GPT-2 byte-to-unicode alphabet.
//!
//! The pre-tokenizers only need to know, per code point, whether it is a
//! letter (`\p{L}`), a number (`\p{N}`), punctuation (`\p{P}`) or white space
//! (`\s`), exactly as llama.cpp's `unicode_cpt_flags` answers it.

use super::unicode_tables::CLASS_RANGES;

/// `\p{L}`: general category L*.
pub(crate) const LETTER: u8 = 1 << 0;
/// `\p{N}`: general category N*.
pub(crate) const NUMBER: u8 = 1 << 1;
/// `\p{P}`: general category P*.
pub(crate) const PUNCT: u8 = 1 << 2;
/// `\s`: the Unicode `White_Space` property.
pub(crate) const WHITESPACE: u8 = 1 << 3;

/// Class stored in [`CLASS_RANGES`] → flag bit.
const CLASS_FLAG: [u8; 4] = [0, LETTER, NUMBER, PUNCT];

/// Binary search of the generated table; `const` so the ASCII table below is
/// computed at compile time from the same data (one source of truth).
const fn table_class(cp: u32) -> u8 {
    // Largest index whose start is <= cp; entry 0 starts at code point 0.
    let mut lo = 0usize;
    let mut hi = CLASS_RANGES.len();
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if (CLASS_RANGES[mid] >> 8) <= cp {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    CLASS_FLAG[(CLASS_RANGES[lo] & 3) as usize]
}

/// Flags of the ASCII range, the overwhelmingly common case, without a search.
const ASCII_FLAGS: [u8; 128] = {
    let mut flags = [0u8; 128];
    let mut cp = 0;
    while cp < 128 {
        flags[cp] = table_class(cp as u32);
        cp += 1;
    }
    // ASCII White_Space: \t \n \v \f \r and space.
    let mut ws = 0x09;
    while ws <= 0x0D {
        flags[ws] |= WHITESPACE;
        ws += 1;
    }
    flags[0x20] |= WHITESPACE;
    flags
};

/// The `White_Space` property, which is what llama.cpp's
/// `unicode_set_whitespace` holds; `char::is_whitespace` implements exactly
/// this property (and the set has been stable since Unicode 6.3).
fn is_whitespace(c: char) -> bool {
    c.is_whitespace()
}

/// Classification flags (`LETTER`/`NUMBER`/`PUNCT`/`WHITESPACE`) of `c`.
#[inline]
pub(crate) fn flags(c: char) -> u8 {
    let cp = c as u32;
    if cp < 128 {
        ASCII_FLAGS[cp as usize]
    } else {
        let ws = if is_whitespace(c) { WHITESPACE } else { 0 };
        table_class(cp) | ws
    }
}

/// Whether GPT-2's alphabet keeps byte `b` as the code point of the same
/// value (printable Latin-1); the other 68 bytes are moved to U+0100.. .
const fn keeps_own_code_point(b: usize) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// GPT-2's reversible byte → printable code point map: printable Latin-1
/// bytes map to themselves, the remaining 68 bytes to U+0100.. in order.
/// Vocabulary strings of byte-level BPE models are written in this alphabet.
pub(crate) const BYTE_TO_CHAR: [char; 256] = {
    let mut map = ['\0'; 256];
    let mut next = 0x100u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if keeps_own_code_point(b) {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        // All values are below 0x144, far from surrogates, so this never
        // takes the fallback arm.
        map[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    map
};

/// Bytes behind U+0100..U+0143, the remapped part of [`BYTE_TO_CHAR`].
const REMAPPED_BYTES: [u8; 68] = {
    let mut bytes = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        if !keeps_own_code_point(b) {
            bytes[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    bytes
};

/// Inverse of [`BYTE_TO_CHAR`]: the byte a GPT-2 alphabet character stands for.
#[inline]
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as usize;
    if cp < 0x100 {
        keeps_own_code_point(cp).then_some(cp as u8)
    } else {
        REMAPPED_BYTES.get(cp - 0x100).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('a'), Some(b'a'));
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
    }

    #[test]
    fn classes() {
        assert_eq!(flags('a'), LETTER);
        assert_eq!(flags('Z'), LETTER);
        assert_eq!(flags('7'), NUMBER);
        assert_eq!(flags('!'), PUNCT);
        assert_eq!(flags('$'), 0); // Sc, a symbol
        assert_eq!(flags('`'), 0); // Sk
        assert_eq!(flags(' '), WHITESPACE);
        assert_eq!(flags('\n'), WHITESPACE);
        assert_eq!(flags('é'), LETTER);
        assert_eq!(flags('²'), NUMBER); // No
        assert_eq!(flags('Ⅻ'), NUMBER); // Nl: numeric, also Alphabetic
        assert_eq!(flags('\u{0301}'), 0); // combining accent, Mn
        assert_eq!(flags('\u{00A0}'), WHITESPACE);
        assert_eq!(flags('\u{3000}'), WHITESPACE);
        assert_eq!(flags('«'), PUNCT);
        assert_eq!(flags('中'), LETTER);
        assert_eq!(flags('😀'), 0);
        assert_eq!(flags('\u{10FFFF}'), 0);
        // A 15.1 addition (CJK Extension I).
        assert_eq!(flags('\u{2EBF0}'), LETTER);
    }
}
