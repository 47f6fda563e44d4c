//! How an MQTT message is stored as one log record: the MQTT topic, one NUL
//! byte, then the payload exactly as published.
//!
//! Log records have no key or header field, so the topic travels in the
//! record. MQTT forbids U+0000 in topic names (MQTT 5 §1.5.4), so the first
//! NUL always ends the topic and the payload after it may hold anything
//! (NULs too). The log's frame format stays unchanged.

/// Appends the record of a message on `topic` with `payload` to `out`.
pub fn encode_record(topic: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(topic.len() + 1 + payload.len());
    out.extend_from_slice(topic);
    out.push(0);
    out.extend_from_slice(payload);
}

/// The MQTT topic and payload of a record written by [`encode_record`]
/// (`None` when the record holds no NUL, so was not written by the gateway).
pub fn split_record(record: &[u8]) -> Option<(&[u8], &[u8])> {
    weir_core::record::split_topic(record)
}

/// The key of a message from level `level` (0-based) of its topic:
/// `sensors/dev-7/temp` at level 1 is `dev-7`. An empty or missing level is no key.
pub fn topic_level(topic: &[u8], level: usize) -> Option<&[u8]> {
    topic.split(|&b| b == b'/').nth(level).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_any_payload() {
        let mut buf = Vec::new();
        encode_record(b"sensors/a", b"\x00bin\x00\xff", &mut buf);
        assert_eq!(buf, b"sensors/a\x00\x00bin\x00\xff");
        assert_eq!(split_record(&buf), Some((&b"sensors/a"[..], &b"\x00bin\x00\xff"[..])));
        buf.clear();
        encode_record(b"t", b"", &mut buf);
        assert_eq!(split_record(&buf), Some((&b"t"[..], &b""[..])));
        assert_eq!(split_record(b"no topic"), None);
    }

    #[test]
    fn topic_levels() {
        assert_eq!(topic_level(b"sensors/dev-7/temp", 1), Some(&b"dev-7"[..]));
        assert_eq!(topic_level(b"sensors/dev-7/temp", 0), Some(&b"sensors"[..]));
        assert_eq!(topic_level(b"sensors/dev-7/temp", 3), None);
        assert_eq!(topic_level(b"sensors//temp", 1), None);
    }
}
