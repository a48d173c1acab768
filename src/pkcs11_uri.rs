//! RFC 7512 `pkcs11:` URIs: parse, and write back without the PIN. Used by
//! the PKCS#11 slot and by the vault server's `--hsm-uri`.
//!
//! Owns: the attributes coffer matches a token and a key by (token label,
//! serial, manufacturer, model; object label, id, type) and the query
//! attributes it honours (`pin-source`, `pin-value`, `module-path`).
//! Must never: keep `pin-value` in what [`Pkcs11Uri::to_stored`] writes (a
//! slot's URI is copied into every archive header), or allocate past
//! [`MAX_URI_LEN`] on hostile input.

use std::fmt::Write as _;

/// Longest URI accepted, bytes.
pub const MAX_URI_LEN: usize = 4096;

/// A parsed `pkcs11:` URI. Unknown attributes are kept (RFC 7512 §2.3 lets
/// vendors add `x-` ones) but not used for matching.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// Path attributes in order, values percent-decoded.
    path: Vec<(String, Vec<u8>)>,
    /// Query attributes in order, values percent-decoded.
    query: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never shows pin-value.
        f.write_str(&self.to_stored())
    }
}

const PATH_ATTRS: &[&str] = &[
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "object",
    "type",
    "id",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
];
const QUERY_ATTRS: &[&str] = &["pin-source", "pin-value", "module-name", "module-path"];

fn pct_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape at byte {i} of a value"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Percent-encode `v` onto `out`: every byte if `all` (for `id`), else all
/// but RFC 3986's unreserved characters and `extra` (RFC 7512 allows more;
/// this is enough). Also the object store's query values.
pub(crate) fn pct_encode(out: &mut String, v: &[u8], all: bool, extra: &[u8]) {
    for &c in v {
        if !all && (c.is_ascii_alphanumeric() || b"-._~".contains(&c) || extra.contains(&c)) {
            out.push(c as char);
        } else {
            let _ = write!(out, "%{c:02X}");
        }
    }
}

fn parse_attrs(
    part: &str,
    sep: char,
    known: &[&str],
    out: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), String> {
    if part.is_empty() {
        return Ok(());
    }
    for (i, a) in part.split(sep).enumerate() {
        // Not echoed: it may be a mistyped `pin-value`.
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| format!("attribute {} has no `=`", i + 1))?;
        let k = k.to_ascii_lowercase();
        if k.is_empty() {
            return Err("an attribute has an empty name".into());
        }
        if !known.contains(&k.as_str()) && !k.starts_with("x-") {
            return Err(format!("unknown attribute `{k}`"));
        }
        if out.iter().any(|(n, _)| *n == k) {
            return Err(format!("attribute `{k}` appears twice"));
        }
        out.push((k, pct_decode(v)?));
    }
    Ok(())
}

impl Pkcs11Uri {
    /// Parse a `pkcs11:` URI (RFC 7512). Errors say what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_URI_LEN {
            return Err(format!("longer than {MAX_URI_LEN} bytes"));
        }
        let rest = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("pkcs11:"))
            .map(|_| &s[7..])
            .ok_or("does not start with `pkcs11:`")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut uri = Self::default();
        parse_attrs(path, ';', PATH_ATTRS, &mut uri.path)?;
        parse_attrs(query, '&', QUERY_ATTRS, &mut uri.query)?;
        for (k, v) in uri.path.iter().chain(&uri.query) {
            if k != "id" && std::str::from_utf8(v).is_err() {
                return Err(format!("attribute `{k}` is not UTF-8"));
            }
        }
        if let Some(t) = uri.attr("type")
            && !["private", "public", "secret-key", "cert", "data"].contains(&t)
        {
            return Err(format!("`type={t}` is not an RFC 7512 object type"));
        }
        Ok(uri)
    }

    fn raw(&self, k: &str) -> Option<&[u8]> {
        self.path
            .iter()
            .chain(&self.query)
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_slice())
    }

    /// A text attribute (path or query), decoded.
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.raw(k).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The `id` attribute, as bytes.
    pub fn id(&self) -> Option<&[u8]> {
        self.raw("id")
    }

    /// The names of the attributes given (path, then query).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.path.iter().chain(&self.query).map(|(n, _)| n.as_str())
    }

    /// Whether the URI names a token by anything but its slot.
    pub fn names_token(&self) -> bool {
        ["token", "serial", "manufacturer", "model"]
            .iter()
            .any(|k| self.raw(k).is_some())
    }

    /// Whether the URI names a key (object label or id).
    pub fn names_object(&self) -> bool {
        self.raw("object").is_some() || self.raw("id").is_some()
    }

    /// Set (or replace) a path attribute.
    pub fn set(&mut self, k: &str, v: &[u8]) {
        match self.path.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v.to_vec(),
            None => self.path.push((k.to_owned(), v.to_vec())),
        }
    }

    /// A copy without `pin-value` and `pin-source`: how a slot copied from
    /// an unauthenticated archive header is used (a header never supplies
    /// a PIN, nor a file to read one from).
    pub fn without_pin(&self) -> Self {
        let mut u = self.clone();
        u.query
            .retain(|(k, _)| k != "pin-value" && k != "pin-source");
        u
    }

    /// The URI as text without `pin-value`: what a slot stores.
    pub fn to_stored(&self) -> String {
        let mut s = String::from("pkcs11:");
        for (i, (k, v)) in self.path.iter().enumerate() {
            if i > 0 {
                s.push(';');
            }
            s.push_str(k);
            s.push('=');
            pct_encode(&mut s, v, k == "id", b":@");
        }
        let q: Vec<_> = self
            .query
            .iter()
            .filter(|(k, _)| k != "pin-value")
            .collect();
        for (i, (k, v)) in q.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            s.push('=');
            pct_encode(&mut s, v, false, b":@/");
        }
        s
    }

    /// A short description of what the URI names, for messages.
    pub fn describe_token(&self) -> String {
        let parts: Vec<String> = ["token", "serial", "manufacturer", "model"]
            .iter()
            .filter_map(|k| self.attr(k).map(|v| format!("{k}={v}")))
            .collect();
        if parts.is_empty() {
            "any token".into()
        } else {
            format!("token {}", parts.join(" "))
        }
    }

    /// A short description of the key the URI names, for messages.
    pub fn describe_object(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.attr("object") {
            parts.push(format!("object={l}"));
        }
        if let Some(id) = self.id() {
            parts.push(format!("id={}", hex::encode(id)));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7512_examples_parse() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
        )
        .unwrap();
        assert_eq!(u.attr("token"), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.attr("manufacturer"), Some("Snake Oil, Inc."));
        assert_eq!(u.attr("serial"), Some(""));
        assert_eq!(
            u.id(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        assert_eq!(u.attr("pin-source"), Some("file:/etc/token_pin"));
        assert!(u.names_token() && u.names_object());
        assert!(Pkcs11Uri::parse("pkcs11:").unwrap().path.is_empty());
        assert!(Pkcs11Uri::parse("PKCS11:object=a").is_ok());
        let u = Pkcs11Uri::parse("pkcs11:object=my-key;type=private?pin-value=1234").unwrap();
        assert_eq!(u.attr("pin-value"), Some("1234"));
    }

    #[test]
    fn stored_form_drops_the_pin_and_round_trips() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token;object=k%3B1;id=%01%02?pin-value=1234&pin-source=/run/pin",
        )
        .unwrap();
        let s = u.to_stored();
        assert!(!s.contains("1234"), "{s}");
        assert_eq!(
            s,
            "pkcs11:token=My%20Token;object=k%3B1;id=%01%02?pin-source=/run/pin"
        );
        let back = Pkcs11Uri::parse(&s).unwrap();
        assert_eq!(back.attr("object"), Some("k;1"));
        assert_eq!(back.attr("pin-value"), None);
        assert_eq!(back.to_stored(), s);
        assert!(!format!("{u:?}").contains("1234"));
        let bare = u.without_pin().to_stored();
        assert_eq!(bare, "pkcs11:token=My%20Token;object=k%3B1;id=%01%02");
    }

    #[test]
    fn bad_uris_are_refused() {
        for bad in [
            "pkcs1:token=a",
            "token=a",
            "pkcs11:token",
            "pkcs11:token=a;token=b",
            "pkcs11:frobnicate=1",
            "pkcs11:token=%zz",
            "pkcs11:token=%4",
            "pkcs11:token=%ff",
            "pkcs11:type=banana",
            "pkcs11:=x",
        ] {
            assert!(Pkcs11Uri::parse(bad).is_err(), "{bad}");
        }
        assert!(Pkcs11Uri::parse(&format!("pkcs11:object={}", "a".repeat(5000))).is_err());
        // Vendor attributes are allowed, and invalid UTF-8 only in `id`.
        assert!(Pkcs11Uri::parse("pkcs11:x-vendor=1;id=%ff").is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Header data reaches the parser: any input is refused or parsed,
        /// never a panic; what parses writes back in a stable form, and the
        /// stored and PIN-less forms hold no PIN.
        #[test]
        fn any_input_parses_or_is_refused_and_round_trips(
            s in "(pkcs11:|PKCS11:)?([a-z%0-9A-F;?&=:@/._~-]|pin-value=|pin-source=|token=|id=|x-|\u{1b}|é){0,60}",
        ) {
            if let Ok(u) = Pkcs11Uri::parse(&s) {
                let stored = u.to_stored();
                let back = Pkcs11Uri::parse(&stored).expect("the stored form parses");
                proptest::prop_assert_eq!(back.to_stored(), stored.clone());
                proptest::prop_assert!(back.attr("pin-value").is_none());
                let bare = u.without_pin();
                proptest::prop_assert!(bare.attr("pin-value").is_none());
                proptest::prop_assert!(bare.attr("pin-source").is_none());
                let _ = (u.describe_token(), u.describe_object());
            }
        }
    }
}
