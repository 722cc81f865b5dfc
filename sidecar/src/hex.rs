//! Hex for the sidecar's tokens, trace ids and state files: one encoder
//! (lower case) and one strict decoder, instead of one of each per file.

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The bytes of `s`, hex in either case; `None` unless every character is
/// a hex digit and there is an even number of them.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        assert_eq!(encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(decode("00abFF"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(decode(""), Some(vec![]));
        for bad in ["0", "zz", "+f", "é0", "0g"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
