//! Record keys from JSON objects: the value of a top-level field, found
//! without materializing the rest of the object (`weir produce --key-field`,
//! `weir ingest mqtt --key-field`).

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// The key of a JSON-object record: the bytes of the string (its UTF-8 text)
/// or number (its JSON text, e.g. `42`, `1.5`) at top-level `field`; `None` when
/// the record is no JSON object or the field is missing or of another type.
/// Only the key's value is materialized; the rest of the object is skipped.
pub fn json_key(line: &[u8], field: &str) -> Option<Vec<u8>> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let key = KeyOf { field }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    key
}

/// Deserializes a JSON object to the key at `field`, if usable.
struct KeyOf<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Option<Vec<u8>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeyOf<'_> {
    type Value = Option<Vec<u8>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut key = None;
        while let Some(is_field) = map.next_key_seed(FieldIs(self.field))? {
            if is_field && key.is_none() {
                key = map.next_value::<KeyValue>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(key)
    }
}

/// Deserializes an object key to whether it is the key field (without allocating).
struct FieldIs<'f>(&'f str);

impl<'de> DeserializeSeed<'de> for FieldIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// A key value: the bytes of a string or of a number's JSON text; `None` otherwise.
struct KeyValue(Option<Vec<u8>>);

impl<'de> de::Deserialize<'de> for KeyValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyValueVisitor)
    }
}

struct KeyValueVisitor;

impl<'de> Visitor<'de> for KeyValueVisitor {
    type Value = KeyValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyValue, E> {
        Ok(KeyValue(Some(v.as_bytes().to_vec())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyValue, E> {
        Ok(KeyValue(Some(v.to_string().into_bytes())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyValue, E> {
        Ok(KeyValue(Some(v.to_string().into_bytes())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyValue, E> {
        Ok(KeyValue(serde_json::Number::from_f64(v).map(|n| n.to_string().into_bytes())))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<KeyValue, E> {
        Ok(KeyValue(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<KeyValue, E> {
        Ok(KeyValue(None))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeyValue, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(KeyValue(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyValue, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(KeyValue(None))
    }
}
