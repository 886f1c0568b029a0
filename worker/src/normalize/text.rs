//! Text: decode (UTF-8, UTF-16 with BOM, or a detected legacy encoding), then
//! cut into overlapping character windows.

use serde_json::json;
use sluice_common::schema::Row;
use sluice_common::settings::Settings;

use super::NormalizeError;

/// Decode text bytes, returning the text and the encoding it was read as.
pub fn decode_text(bytes: &[u8]) -> Result<(String, &'static str), NormalizeError> {
    for (bom, enc) in [
        (&b"\xEF\xBB\xBF"[..], encoding_rs::UTF_8),
        (&b"\xFF\xFE"[..], encoding_rs::UTF_16LE),
        (&b"\xFE\xFF"[..], encoding_rs::UTF_16BE),
    ] {
        if bytes.starts_with(bom) {
            let (text, had_errors) = enc.decode_without_bom_handling(&bytes[bom.len()..]);
            if had_errors {
                return Err(NormalizeError::new(format!("text has a {} byte-order mark but is not valid {}", enc.name(), enc.name())));
            }
            return Ok((text.into_owned(), enc.name()));
        }
    }
    if let Some(pos) = bytes.iter().position(|b| *b == 0) {
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
