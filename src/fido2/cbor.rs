//! The few CBOR shapes CTAP2 uses, over ciborium's `Value`: maps keyed
//! by small integers or text.

use ciborium::Value;

/// A map with integer keys, in the order given (CTAP2's canonical order
/// is ascending; callers list them so).
pub fn int_map(entries: Vec<(i64, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// A map with text keys, in the order given.
pub fn text_map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// The value at integer `key` of a map.
pub fn map_get(map: &Value, key: i64) -> Option<&Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_integer() == Some(key.into()))
        .map(|(_, v)| v)
}

/// The value at text `key` of a map.
pub fn map_text<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}
