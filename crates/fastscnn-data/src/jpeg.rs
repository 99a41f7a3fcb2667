//! Whether a JPEG file reaches its end-of-image marker. The decoder fills a scan cut short with
//! grey and reports success, so a truncated download would be segmented as if whole; walking the
//! marker segments finds the cut without decoding anything.

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;

/// True when the JPEG's segments, read from the start-of-image marker, end in an end-of-image
/// marker before the bytes run out. Data after it (a phone's appended video, a trailer) is
/// ignored, and so are thumbnails inside metadata segments, which are skipped whole by their
/// length. Bytes that do not start with a start-of-image marker are left to the decoder to refuse.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if bytes.len() < 2 || bytes[0] != 0xFF || bytes[1] != SOI {
        return true;
    }
    let mut i = 2;
    loop {
        if i >= bytes.len() {
            return false;
        }
        if bytes[i] != 0xFF {
            // Not a marker where one must be: malformed rather than short; the decoder judges.
            return true;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            EOI => return true,
            // Markers without a length: restart markers and TEM.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(length) = bytes.get(i..i + 2) else {
            return false;
        };
        let end = i + usize::from(u16::from_be_bytes([length[0], length[1]]));
        if end > bytes.len() {
            return false;
        }
        i = end;
        if marker == SOS {
            match end_of_scan(bytes, i) {
                Some(next) => i = next,
                None => return false,
            }
        }
    }
}

/// The position of the first marker after the entropy-coded data starting at `start`: in that
/// data a 0xFF byte is followed by 0x00 (a stuffed 0xFF), a restart marker or more 0xFF fill.
fn end_of_scan(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            0x00 | 0xD0..=0xD7 => i += 2,
            0xFF => i += 1,
            _ => return Some(i),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOI, an APP0 segment, a scan with a stuffed 0xFF and a restart marker, EOI.
    fn minimal() -> Vec<u8> {
        let mut b = vec![0xFF, SOI, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB];
        b.extend([0xFF, SOS, 0x00, 0x03, 0x01]);
        b.extend([0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        b.extend([0xFF, EOI]);
        b
    }

    #[test]
    fn a_whole_file_is_complete_and_every_cut_is_not() {
        let whole = minimal();
        assert!(jpeg_is_complete(&whole));
        for cut in 2..whole.len() {
            assert!(!jpeg_is_complete(&whole[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn data_after_the_end_is_ignored() {
        let mut b = minimal();
        b.extend(b"ftypmp42 trailing video");
        assert!(jpeg_is_complete(&b));
    }

    #[test]
    fn an_end_marker_inside_a_metadata_segment_does_not_count() {
        // An APP1 segment holding a whole thumbnail (SOI .. EOI), then the main image cut short.
        let mut b = vec![
            0xFF, SOI, 0xFF, 0xE1, 0x00, 0x08, 0xFF, SOI, 0xFF, SOS, 0xFF, EOI,
        ];
        b.extend([0xFF, SOS, 0x00, 0x03, 0x01, 0x12, 0x34]);
        assert!(!jpeg_is_complete(&b));
    }

    #[test]
    fn other_bytes_are_left_to_the_decoder() {
        assert!(jpeg_is_complete(b"\x89PNG"));
        assert!(jpeg_is_complete(&[]));
    }
}
