//! SHA-256 certificate fingerprints.

use std::fmt;

use rustls::pki_types::CertificateDer;

use crate::FingerprintError;

/// The SHA-256 digest of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`; never fails.
    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// Lowercase hex, no separators; never fails.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        s
    }

    /// Parses hex in any case, with optional `:` separators; fails on other characters or
    /// if the result is not 32 bytes.
    pub fn from_hex(s: &str) -> Result<Fingerprint, FingerprintError> {
        let mut nibbles = Vec::with_capacity(64);
        for (offset, ch) in s.trim().char_indices() {
            if ch == ':' {
                continue;
            }
            let nibble = ch.to_digit(16).ok_or(FingerprintError::InvalidChar { ch, offset })?;
            // to_digit(16) is at most 15, so this fits.
            nibbles.push(nibble as u8);
        }
        if nibbles.len() % 2 != 0 {
            return Err(FingerprintError::OddDigits { digits: nibbles.len() });
        }
        let bytes: Vec<u8> = nibbles.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
        Fingerprint::from_slice(&bytes)
    }

    /// Wraps raw digest bytes; fails unless `b` is exactly 32 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Fingerprint, FingerprintError> {
        <[u8; 32]>::try_from(b).map(Fingerprint).map_err(|_| FingerprintError::WrongLength { len: b.len() })
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fingerprint::from_hex(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let fp = Fingerprint::of(&CertificateDer::from(vec![1, 2, 3]));
        let hex = fp.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(Fingerprint::from_hex(&hex).unwrap(), fp);
        assert_eq!(Fingerprint::from_hex(&hex.to_uppercase()).unwrap(), fp);
        assert_eq!(fp.to_string(), hex);
        assert_eq!(format!("{fp:?}"), format!("Fingerprint({hex})"));
    }

    #[test]
    fn accepts_colon_separators() {
        let fp = Fingerprint([0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(Fingerprint::from_hex(&colons).unwrap(), fp);
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(Fingerprint::from_hex("zz"), Err(FingerprintError::InvalidChar { ch: 'z', offset: 0 })));
        assert!(matches!(Fingerprint::from_hex("abc"), Err(FingerprintError::OddDigits { digits: 3 })));
        assert!(matches!(Fingerprint::from_hex("abcd"), Err(FingerprintError::WrongLength { len: 2 })));
        assert!(matches!(Fingerprint::from_hex(&"a".repeat(66)), Err(FingerprintError::WrongLength { len: 33 })));
        assert!(matches!(Fingerprint::from_slice(&[0; 31]), Err(FingerprintError::WrongLength { len: 31 })));
        assert_eq!(Fingerprint::from_slice(&[7; 32]).unwrap(), Fingerprint([7; 32]));
    }
}
