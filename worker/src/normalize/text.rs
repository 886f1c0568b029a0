//! Text: decode (UTF-8; UTF-16 or UTF-32 with a byte-order mark or told by
//! their NUL bytes; or a detected legacy encoding), then cut into
//! overlapping character windows.

use serde_json::json;
use sluice_common::schema::Row;
use sluice_common::settings::Settings;

use super::NormalizeError;

/// A text encoding of two or four bytes a character, told by its byte-order
/// mark or, without one, by where its NUL bytes fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wide {
    Utf16Le,
    Utf16Be,
    Utf32Le,
    Utf32Be,
}

impl Wide {
    pub fn name(self) -> &'static str {
        match self {
            Wide::Utf16Le => "UTF-16LE",
            Wide::Utf16Be => "UTF-16BE",
            Wide::Utf32Le => "UTF-32LE",
            Wide::Utf32Be => "UTF-32BE",
        }
    }

    /// Bytes of one code unit.
    fn unit(self) -> usize {
        match self {
            Wide::Utf16Le | Wide::Utf16Be => 2,
            Wide::Utf32Le | Wide::Utf32Be => 4,
        }
    }

    /// Decode `bytes` (no BOM) or say where it stops being this encoding.
    fn decode(self, bytes: &[u8]) -> Result<String, String> {
        if !bytes.len().is_multiple_of(self.unit()) {
            return Err(format!("its length ({} bytes) is not a whole number of {}-byte units", bytes.len(), self.unit()));
        }
        match self {
            Wide::Utf16Le | Wide::Utf16Be => {
                let units = bytes.chunks_exact(2).map(|c| match self {
                    Wide::Utf16Le => u16::from_le_bytes([c[0], c[1]]),
                    _ => u16::from_be_bytes([c[0], c[1]]),
                });
                char::decode_utf16(units)
                    .enumerate()
                    .map(|(i, c)| c.map_err(|_| format!("an unpaired surrogate near byte {}", i * 2)))
                    .collect()
            }
            Wide::Utf32Le | Wide::Utf32Be => bytes
                .chunks_exact(4)
                .enumerate()
                .map(|(i, c)| {
                    let v = match self {
                        Wide::Utf32Le => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                        _ => u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                    };
                    char::from_u32(v).ok_or_else(|| format!("0x{v:X} at byte {} is not a character", i * 4))
                })
                .collect(),
        }
    }
}

const BOMS: [(&[u8], Wide); 4] = [
    // UTF-32LE's mark starts like UTF-16LE's: it is tried first.
    (b"\xFF\xFE\x00\x00", Wide::Utf32Le),
    (b"\x00\x00\xFE\xFF", Wide::Utf32Be),
    (b"\xFF\xFE", Wide::Utf16Le),
    (b"\xFE\xFF", Wide::Utf16Be),
];

/// The wide encoding whose byte-order mark starts `bytes`, and the bytes after it.
pub fn wide_bom(bytes: &[u8]) -> Option<(Wide, &[u8])> {
    BOMS.iter().find_map(|(bom, wide)| bytes.strip_prefix(*bom).map(|rest| (*wide, rest)))
}

/// Wide text without a byte-order mark, from the NUL bytes of its head:
/// Latin-script text in UTF-16 has a NUL in one byte of nearly every unit
/// and in the other of almost none; in UTF-32, two or three NULs a unit at
/// fixed places. Binary data has NULs scattered, or in runs.
pub fn sniff_wide(bytes: &[u8]) -> Option<Wide> {
    let head = &bytes[..bytes.len().min(4096)];
    // Too short to tell from a few stray NULs.
    if head.len() < 16 || !head.contains(&0) {
        return None;
    }
    let share = |unit: usize, at: usize| {
        let units = head.len() / unit;
        head.chunks_exact(unit).filter(|c| c[at] == 0).count() as f64 / units.max(1) as f64
    };
    // UTF-32 first: its units look like two UTF-16 units with NULs. The top
    // byte of every character is NUL (none is above U+10FFFF).
    if share(4, 3) == 1.0 && share(4, 2) > 0.5 && share(4, 0) < 0.05 {
        return Some(Wide::Utf32Le);
    }
    if share(4, 0) == 1.0 && share(4, 1) > 0.5 && share(4, 3) < 0.05 {
        return Some(Wide::Utf32Be);
    }
    if share(2, 1) > 0.5 && share(2, 0) < 0.01 {
        return Some(Wide::Utf16Le);
    }
    if share(2, 0) > 0.5 && share(2, 1) < 0.01 {
        return Some(Wide::Utf16Be);
    }
    None
}

/// Control characters other than whitespace: a decoded "text" full of them
/// was binary after all.
fn mostly_controls(text: &str) -> bool {
    let (mut controls, mut total) = (0usize, 0usize);
    for c in text.chars().take(4096) {
        total += 1;
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0C') {
            controls += 1;
        }
    }
    controls * 20 > total
}

/// Decode text bytes, returning the text and the encoding it was read as.
pub fn decode_text(bytes: &[u8]) -> Result<(String, &'static str), NormalizeError> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return match std::str::from_utf8(rest) {
            Ok(s) => Ok((s.to_string(), "UTF-8")),
            Err(e) => Err(NormalizeError::new(format!("text has a UTF-8 byte-order mark but is not valid UTF-8 (byte {})", e.valid_up_to() + 3))),
        };
    }
    if let Some((wide, rest)) = wide_bom(bytes) {
        let name = wide.name();
        let text = wide.decode(rest).map_err(|why| NormalizeError::new(format!("text has a {name} byte-order mark but is not valid {name}: {why}")))?;
        return Ok((text, name));
    }
    if let Some(pos) = bytes.iter().position(|b| *b == 0) {
        if let Some(wide) = sniff_wide(bytes) {
            match wide.decode(bytes) {
                Ok(text) if !text.contains('\0') && !mostly_controls(&text) => return Ok((text, wide.name())),
                Ok(_) => {}
                Err(why) => {
                    return Err(NormalizeError::new(format!("not text: looks like {} without a byte-order mark, but {why}", wide.name())));
                }
            }
        }
        return Err(NormalizeError::new(format!("not text: binary content (NUL byte at offset {pos})")));
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok((s.to_string(), "UTF-8")),
        Err(utf8_err) => {
            let mut detector = chardetng::EncodingDetector::new();
            detector.feed(bytes, true);
            let enc = detector.guess(None, true);
            let (text, _, had_errors) = enc.decode(bytes);
            if had_errors || enc == encoding_rs::UTF_8 {
                return Err(NormalizeError::new(format!(
                    "not valid UTF-8 (invalid byte at offset {}) and not decodable as {}",
                    utf8_err.valid_up_to(),
                    enc.name()
                )));
            }
            Ok((text.into_owned(), enc.name()))
        }
    }
}

/// Byte offset `n` characters after `from` (or the end of the text).
fn advance(text: &str, from: usize, n: usize) -> usize {
    text[from..].char_indices().nth(n).map_or(text.len(), |(i, _)| from + i)
}

/// Overlapping windows of `size` characters, each starting `size - overlap`
/// characters after the previous one: (start char, end char, text).
pub fn chunk_text(text: &str, size: usize, overlap: usize) -> Vec<(usize, usize, &str)> {
    let step = size.saturating_sub(overlap).max(1);
    let mut out = Vec::new();
    let (mut start_b, mut start_c) = (0usize, 0usize);
    loop {
        let end_b = advance(text, start_b, size);
        let piece = &text[start_b..end_b];
        let chars = piece.chars().count();
        out.push((start_c, start_c + chars, piece));
        if end_b >= text.len() {
            break;
        }
        start_b = advance(text, start_b, step);
        start_c += step;
    }
    out
}

pub fn normalize_text(bytes: &[u8], mime: &str, settings: &Settings) -> Result<Vec<Row>, NormalizeError> {
    let (text, encoding) = decode_text(bytes)?;
    let chunks = chunk_text(&text, settings.chunk_size as usize, settings.chunk_overlap as usize);
    let total = chunks.len();
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, (start, end, piece))| Row {
            chunk_index: i as u32,
            mime_type: mime.to_string(),
            text: Some(piece.to_string()),
            metadata: Some(json!({
                "encoding": encoding,
                "char_start": start,
                "char_end": end,
                "chunks": total,
            })),
            ..Default::default()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_overlap_and_cover_the_text() {
        let text: String = (0..2500).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let chunks = chunk_text(&text, 1000, 200);
        assert_eq!(chunks.len(), 3);
        assert_eq!((chunks[0].0, chunks[0].1), (0, 1000));
        assert_eq!((chunks[1].0, chunks[1].1), (800, 1800));
        assert_eq!((chunks[2].0, chunks[2].1), (1600, 2500));
        assert_eq!(&chunks[0].2[800..], &chunks[1].2[..200]);
    }

    #[test]
    fn chunking_counts_characters_not_bytes() {
        let text = "é".repeat(10);
        let chunks = chunk_text(&text, 4, 1);
        assert_eq!(chunks[0].2.chars().count(), 4);
        assert_eq!(chunks.last().unwrap().1, 10);
    }

    #[test]
    fn empty_text_is_one_empty_chunk() {
        assert_eq!(chunk_text("", 10, 2), vec![(0, 0, "")]);
    }

    #[test]
    fn utf16_and_latin1_are_transcoded() {
        let mut utf16 = vec![0xFF, 0xFE];
        for u in "héllo".encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(decode_text(&utf16).unwrap(), ("héllo".to_string(), "UTF-16LE"));
        let latin1 = b"caf\xe9 cr\xe8me br\xfbl\xe9e, d\xe9j\xe0 vu, na\xefve fa\xe7ade";
        let (text, enc) = decode_text(latin1).unwrap();
        assert!(text.starts_with("café crème"), "{text} ({enc})");
        assert_ne!(enc, "UTF-8");
    }

    fn encode(text: &str, wide: Wide, bom: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if bom {
            out.extend_from_slice(BOMS.iter().find(|(_, w)| *w == wide).unwrap().0);
        }
        match wide {
            Wide::Utf16Le => text.encode_utf16().for_each(|u| out.extend_from_slice(&u.to_le_bytes())),
            Wide::Utf16Be => text.encode_utf16().for_each(|u| out.extend_from_slice(&u.to_be_bytes())),
            Wide::Utf32Le => text.chars().for_each(|c| out.extend_from_slice(&(c as u32).to_le_bytes())),
            Wide::Utf32Be => text.chars().for_each(|c| out.extend_from_slice(&(c as u32).to_be_bytes())),
        }
        out
    }

    #[test]
    fn utf16_and_utf32_with_or_without_a_bom_are_read() {
        let text = "Grüße aus Zürich: naïve café, 10 € — and a 🦀.\r\nSecond line\twith a tab.";
        for wide in [Wide::Utf16Le, Wide::Utf16Be, Wide::Utf32Le, Wide::Utf32Be] {
            for bom in [true, false] {
                let bytes = encode(text, wide, bom);
                assert_eq!(decode_text(&bytes).unwrap(), (text.to_string(), wide.name()), "{wide:?} bom={bom}");
            }
        }
        // Cut in the middle of a unit: said so, not called binary.
        let mut odd = encode(text, Wide::Utf16Le, false);
        odd.pop();
        let err = decode_text(&odd).unwrap_err();
        assert!(err.0.contains("UTF-16LE") && err.0.contains("whole number"), "{err}");
    }

    #[test]
    fn binary_with_nul_bytes_is_not_taken_for_wide_text() {
        // Executables, images, archives: NULs in runs and scattered.
        let elf: Vec<u8> = b"\x7FELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0\x3E\0\x01\0\0\0".iter().copied().cycle().take(600).collect();
        let counter: Vec<u8> = (0u32..400).flat_map(|i| i.to_le_bytes()).collect();
        let shorts: Vec<u8> = (0u16..2000).flat_map(|i| (i * 7).to_le_bytes()).collect();
        for (name, bytes) in [("elf", elf), ("u32 counter", counter), ("u16 samples", shorts)] {
            let err = decode_text(&bytes).unwrap_err();
            assert!(err.0.contains("binary content"), "{name}: {err}");
        }
    }

    #[test]
    fn binary_is_rejected_with_a_reason() {
        let err = decode_text(b"abc\0def").unwrap_err();
        assert!(err.0.contains("NUL byte at offset 3"), "{err}");
    }

    #[test]
    fn rows_carry_chunk_positions() {
        let s = Settings { chunk_size: 5, chunk_overlap: 2, ..Default::default() };
        let rows = normalize_text(b"abcdefghij", "text/plain", &s).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].text.as_deref(), Some("defgh"));
        assert_eq!(rows[1].metadata.as_ref().unwrap()["char_start"], 3);
    }
}
