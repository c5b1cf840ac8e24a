//! proxy-wasm's serialized header map, decoded without trusting it.
//!
//! The host hands a whole header map over as one buffer: a little-endian `u32` count, then `count`
//! pairs of `u32` sizes (name, value), then every name and value in that order, each followed by a
//! NUL byte. The proxy-wasm SDK's own decoder panics on a value that is not UTF-8 — and Envoy passes
//! header values with obs-text bytes (`caf\xe9`) from any client — so a single such request would
//! stop the filter's VM. [`decode`] replaces invalid UTF-8 with U+FFFD instead (such a value never
//! matches a token or a FHIR media type, so it fails closed where it matters) and refuses a buffer
//! whose sizes do not fit it.

/// Why a serialized header map could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Shorter than its count and size table.
    Truncated,
    /// A name or value runs past the end, or lacks its NUL terminator.
    BadEntry,
}

/// Decodes a serialized header map into (name, value) pairs, in order. Invalid UTF-8 in a name or
/// value is replaced with U+FFFD. An empty buffer is an empty map.
pub fn decode(bytes: &[u8]) -> Result<Vec<(String, String)>, MapError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = read_u32(bytes, 0).ok_or(MapError::Truncated)?;
    let table_end = count
        .checked_mul(8)
        .and_then(|t| t.checked_add(4))
        .filter(|end| *end <= bytes.len())
        .ok_or(MapError::Truncated)?;
    let mut pairs = Vec::with_capacity(count);
    let mut at = table_end;
    for i in 0..count {
        let sizes = 4 + i * 8;
        let name_len = read_u32(bytes, sizes).ok_or(MapError::Truncated)?;
        let value_len = read_u32(bytes, sizes + 4).ok_or(MapError::Truncated)?;
        let (name, next) = entry(bytes, at, name_len)?;
        let (value, next) = entry(bytes, next, value_len)?;
        at = next;
        pairs.push((text(name), text(value)));
    }
    Ok(pairs)
}

/// A single header value as the host returns it (no terminator), as text.
pub fn value_text(bytes: Vec<u8>) -> String {
    // Checked as it is first (the fast path for the usual ASCII headers), replaced only if needed.
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

/// The `len` bytes at `at`, which must be followed by a NUL; and where the next entry starts.
fn entry(bytes: &[u8], at: usize, len: usize) -> Result<(&[u8], usize), MapError> {
    let end = at.checked_add(len).ok_or(MapError::BadEntry)?;
    let data = bytes.get(at..end).ok_or(MapError::BadEntry)?;
    if bytes.get(end) != Some(&0) {
        return Err(MapError::BadEntry);
    }
    Ok((data, end + 1))
}

fn text(bytes: &[u8]) -> String {
    value_text(bytes.to_vec())
}

/// Encodes pairs as the host does (for tests and the host emulator).
pub fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn decodes_what_the_host_encodes_in_order() {
        let cases: Vec<Vec<(&[u8], &[u8])>> = vec![
            vec![],
            vec![(b":method", b"GET")],
            vec![
                (b":path", b"/fhir/Patient/123"),
                (b"authorization", b"Bearer a.b.c"),
                (b"x-empty", b""),
            ],
            vec![(b"a", b"1"), (b"a", b"2")],
        ];
        for case in cases {
            let want: Vec<(String, String)> = case
                .iter()
                .map(|(n, v)| {
                    (
                        String::from_utf8(n.to_vec()).unwrap(),
                        String::from_utf8(v.to_vec()).unwrap(),
                    )
                })
                .collect();
            assert_eq!(decode(&encode(&case)).unwrap(), want);
        }
        assert_eq!(decode(&[]).unwrap(), Vec::new(), "no buffer: no headers");
    }

    #[test]
    fn a_value_that_is_not_utf8_is_kept_with_replacement_characters_not_a_panic() {
        let bytes = encode(&[(b"x-name", b"caf\xe9"), (b"authorization", b"Bearer \xff\xfe")]);
        assert_eq!(
            decode(&bytes).unwrap(),
            pairs(&[
                ("x-name", "caf\u{fffd}"),
                ("authorization", "Bearer \u{fffd}\u{fffd}")
            ])
        );
        assert_eq!(value_text(b"caf\xe9".to_vec()), "caf\u{fffd}");
        assert_eq!(value_text(b"plain".to_vec()), "plain");
    }

    #[test]
    fn refuses_a_buffer_whose_sizes_do_not_fit_it() {
        let good = encode(&[(b"name", b"value")]);
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut long_value = good.clone();
        long_value[8..12].copy_from_slice(&1000u32.to_le_bytes());
        let cases: Vec<(&str, Vec<u8>, MapError)> = vec![
            ("shorter than the count", vec![1, 0], MapError::Truncated),
            ("count past the end", huge_count, MapError::Truncated),
            ("size table cut", good[..8].to_vec(), MapError::Truncated),
            ("value past the end", long_value, MapError::BadEntry),
            ("value cut", good[..good.len() - 3].to_vec(), MapError::BadEntry),
            ("no terminator", no_nul, MapError::BadEntry),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode(&bytes), Err(want), "{name}");
        }
    }

    #[test]
    fn never_panics_on_any_prefix_or_byte_flip_of_a_real_map() {
        let good = encode(&[
            (b":method", b"GET"),
            (b"authorization", b"Bearer x.y.z"),
            (b"x", b"\xc3"),
        ]);
        for cut in 0..=good.len() {
            let _ = decode(&good[..cut]);
        }
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] ^= flip;
                let _ = decode(&b);
            }
        }
        assert!(decode(&good).is_ok());
    }
}
