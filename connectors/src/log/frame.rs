//! Record frames, the unit of a segment file: `u32 LE length`, `u32 LE CRC-32 of
//! the length bytes and the payload`, payload. Encoding, parsing from a buffer,
//! and the search for a valid frame after a damaged one, which tells a torn tail
//! from corruption (see the module docs of [`super`]).

/// Bytes before the payload: length and CRC.
pub(crate) const HEADER: usize = 8;

/// Largest payload of one record (256 MiB). A frame claiming more is damaged.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// How many payload bytes [`find_valid_frame`] may hash before it gives up. A
/// torn tail is at most a batch, so this only ends pathological searches.
pub(crate) const RESYNC_BUDGET: usize = 1 << 30;

fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(payload);
    hasher.finalize()
}

/// Size of the frame of a payload of `len` bytes.
pub(crate) fn frame_len(len: usize) -> u64 {
    (HEADER + len) as u64
}

/// Appends the frame of `payload` to `out`. The caller checks
/// `payload.len() <= MAX_RECORD_BYTES`.
pub(crate) fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_RECORD_BYTES);
    let len = (payload.len() as u32).to_le_bytes();
    out.reserve(HEADER + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What starts at the beginning of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A valid frame with this payload (the frame is `HEADER + payload.len()` bytes).
    Record(&'a [u8]),
    /// The buffer ends inside the frame: the header, or the payload of this size, is cut.
    Incomplete {
        /// The payload length the header claims, when the header is complete.
        len: Option<usize>,
    },
    /// The frame is damaged: what was expected and what was found.
    Bad(String),
}

fn header(buf: &[u8]) -> Option<(usize, u32, [u8; 4])> {
    let h = buf.get(..HEADER)?;
    let len_bytes = [h[0], h[1], h[2], h[3]];
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    Some((u32::from_le_bytes(len_bytes) as usize, crc, len_bytes))
}

/// The payload length the header at the start of `buf` claims, when the header is complete.
pub(crate) fn claimed_len(buf: &[u8]) -> Option<usize> {
    header(buf).map(|h| h.0)
}

/// What a frame whose CRC does not match is reported as.
pub(crate) fn crc_mismatch(stored: u32, len: usize, computed: u32) -> String {
    format!("expected CRC-32 {stored:#010x} of a {len}-byte record, computed {computed:#010x}")
}

/// Parses the frame at the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Frame<'_> {
    let Some((len, stored, len_bytes)) = header(buf) else {
        return Frame::Incomplete { len: None };
    };
    if len > MAX_RECORD_BYTES {
        return Frame::Bad(format!("expected a record length of at most {MAX_RECORD_BYTES} bytes, found {len}"));
    }
    let Some(payload) = buf.get(HEADER..HEADER + len) else {
        return Frame::Incomplete { len: Some(len) };
    };
    let computed = checksum(len_bytes, payload);
    if computed != stored {
        return Frame::Bad(crc_mismatch(stored, len, computed));
    }
    Frame::Record(payload)
}

/// Describes an incomplete frame of which `have` bytes exist.
pub(crate) fn describe_incomplete(len: Option<usize>, have: usize) -> String {
    match len {
        Some(len) => format!("expected a {}-byte frame, the file ends after {have}", HEADER + len),
        None => format!("expected an 8-byte frame header, the file ends after {have}"),
    }
}

/// Result of [`find_valid_frame`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resync {
    /// A valid frame starts at this position of the region.
    Found(usize),
    /// No valid frame starts anywhere after the region's first byte.
    NotFound,
    /// The search hashed [`RESYNC_BUDGET`] bytes without an answer.
    GaveUp,
}

/// Looks for a valid frame starting anywhere in `region` after its first byte
/// (where the damaged frame starts). Finding one means valid data follows the
/// damage, so it is corruption, not a torn tail.
pub(crate) fn find_valid_frame(region: &[u8], budget: usize) -> Resync {
    let mut spent = 0usize;
    for at in 1..region.len() {
        let rest = &region[at..];
        let Some((len, stored, len_bytes)) = header(rest) else {
            break;
        };
        if len > MAX_RECORD_BYTES || HEADER + len > rest.len() {
            continue;
        }
        spent += len;
        if spent > budget {
            return Resync::GaveUp;
        }
        if checksum(len_bytes, &rest[HEADER..HEADER + len]) == stored {
            return Resync::Found(at);
        }
    }
    Resync::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_empty_record() {
        let mut buf = Vec::new();
        encode(&mut buf, b"hello");
        encode(&mut buf, b"");
        assert_eq!(buf.len(), 2 * HEADER + 5);
        assert_eq!(parse(&buf), Frame::Record(b"hello"));
        assert_eq!(parse(&buf[13..]), Frame::Record(b""));
    }

    #[test]
    fn cut_frames_are_incomplete() {
        let mut buf = Vec::new();
        encode(&mut buf, b"hello");
        assert_eq!(parse(&buf[..3]), Frame::Incomplete { len: None });
        assert_eq!(parse(&buf[..10]), Frame::Incomplete { len: Some(5) });
    }

    #[test]
    fn flipped_bytes_and_zeros_are_bad() {
        let mut buf = Vec::new();
        encode(&mut buf, b"hello");
        for i in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[i] ^= 0x10;
            assert!(!matches!(parse(&damaged), Frame::Record(_)), "flip at {i} passed");
        }
        assert!(matches!(parse(&[0u8; 16]), Frame::Bad(_)));
        assert!(matches!(parse(&[0xff; 16]), Frame::Bad(_)));
    }

    #[test]
    fn resync_finds_the_next_frame_only_when_there_is_one() {
        let mut buf = Vec::new();
        encode(&mut buf, b"first record");
        let second = buf.len();
        encode(&mut buf, b"second");
        buf[3] ^= 1; // damage the first frame's length
        assert_eq!(find_valid_frame(&buf, RESYNC_BUDGET), Resync::Found(second));
        assert_eq!(find_valid_frame(&buf[..second], RESYNC_BUDGET), Resync::NotFound);
        assert_eq!(find_valid_frame(&[0u8; 4096], RESYNC_BUDGET), Resync::NotFound);
        let small = [8u8, 0, 0, 0, 0, 0, 0, 0].repeat(1000);
        assert_eq!(find_valid_frame(&small, 1000), Resync::GaveUp);
    }
}
