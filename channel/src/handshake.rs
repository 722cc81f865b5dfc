//! The channel handshake: the app's [`Hello`] and the sidecar's [`Verdict`].
//!
//! Both are the first bytes on the channel's stream, each framed as a 4-byte
//! big-endian length followed by the encoded protobuf. The codec here is
//! pure (bytes in, decision out); the async helpers only move bytes.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::{ClientCredential, Grant};
use crate::{Credential, Hello, RefusalReason, Verdict};

/// The handshake version this crate speaks.
pub const VERSION: u32 = 1;

/// The largest hello or verdict accepted, in bytes (the frame body).
pub const MAX_FRAME: usize = 16 * 1024;

/// Why a handshake frame could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("handshake frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not the expected protobuf message.
    #[error("handshake frame does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The stream ended or failed before the frame was complete.
    #[error("stream ended or failed inside the handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one handshake frame.
pub fn encode<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(4 + len);
    // Frames we build stay far below u32::MAX; saturate rather than wrap.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    msg.encode_raw(&mut buf);
    buf.freeze()
}

/// Validates a frame's 4-byte length prefix; fails when it exceeds [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME });
    }
    Ok(len)
}

/// Reads one frame and decodes it as `M`; fails on a short read, an
/// oversized frame or a body that does not decode.
pub async fn read<M: Message + Default, R: AsyncRead + Unpin>(r: &mut R) -> Result<M, FrameError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await?;
    let len = frame_len(prefix)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(M::decode(body.as_slice())?)
}

/// Decodes the frame at the start of `buf` as `M`, as [`read`] would from a
/// stream holding `buf` (bytes after the frame are left alone); fails with
/// [`FrameError::Io`] when `buf` ends inside the frame, and otherwise as
/// [`read`] does. Allocates no more than the body's decoded fields.
pub fn decode_frame<M: Message + Default>(buf: &[u8]) -> Result<M, FrameError> {
    let eof = || FrameError::Io(std::io::ErrorKind::UnexpectedEof.into());
    let (prefix, rest) = buf.split_first_chunk::<4>().ok_or_else(eof)?;
    let len = frame_len(*prefix)?;
    let body = rest.get(..len).ok_or_else(eof)?;
    Ok(M::decode(body)?)
}

/// Writes one frame and flushes; fails when the stream does.
pub async fn write<M: Message, W: AsyncWrite + Unpin>(w: &mut W, msg: &M) -> std::io::Result<()> {
    w.write_all(&encode(msg)).await?;
    w.flush().await
}

/// The checks every hello gets before any credential is looked at: the
/// version, and an app-id that is present and sane. `Ok` hands the
/// credential on to the sidecar's authenticator.
pub fn check_hello(hello: &Hello) -> Result<&Credential, (RefusalReason, String)> {
    if hello.version != VERSION {
        return Err((
            RefusalReason::UnsupportedVersion,
            format!("handshake version {} is not supported; this sidecar speaks version {VERSION}", hello.version),
        ));
    }
    if hello.app_id.is_empty() || hello.app_id.len() > 256 {
        return Err((RefusalReason::Malformed, "hello has no valid app_id".to_string()));
    }
    hello.credential.as_ref().ok_or_else(|| {
        (
            RefusalReason::NoCredential,
            "hello carries no credential (one-time token, API token or client certificate)".to_string(),
        )
    })
}

/// A verdict that accepts the channel as `channel_id`, with what the grant
/// gives (a reconnect token, a client certificate: either may be absent),
/// saying whether the API is served as HTTP/3 on it.
pub fn accepted(channel_id: u64, grant: Grant, api_over_http3: bool) -> Verdict {
    let credential = grant.client_credential.unwrap_or(ClientCredential { cert: vec![], expires_unix_ms: 0 });
    Verdict {
        accepted: true,
        reason: RefusalReason::Unspecified as i32,
        message: String::new(),
        channel_id,
        reconnect_token: grant.reconnect_token,
        api_over_http3,
        client_certificate: credential.cert,
        client_certificate_expires_unix_ms: credential.expires_unix_ms,
    }
}

/// A verdict that refuses the channel, saying why.
pub fn refused(reason: RefusalReason, message: impl Into<String>) -> Verdict {
    Verdict { accepted: false, reason: reason as i32, message: message.into(), channel_id: 0, ..Verdict::default() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::Credential;

    fn hello() -> Hello {
        Hello {
            version: VERSION,
            app_id: "app".into(),
            credential: Some(Credential::OneTimeToken("t".into())),
            instance: "i".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn frame_round_trip() {
        let bytes = encode(&hello());
        assert_eq!(frame_len(bytes[..4].try_into().unwrap()).unwrap(), bytes.len() - 4);
        let got: Hello = read(&mut bytes.as_ref()).await.unwrap();
        assert_eq!(got, hello());
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_the_body() {
        let mut bytes = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"x");
        let err = read::<Hello, _>(&mut bytes.as_slice()).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_and_short_frames_fail_cleanly() {
        let err = read::<Hello, _>(&mut &b"\x00\x00\x00\x05\xff\xff\xff\xff\xff"[..]).await.unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
        let err = read::<Hello, _>(&mut &b"\x00\x00\x00\x09ab"[..]).await.unwrap_err();
        assert!(matches!(err, FrameError::Io(_)), "{err}");
        // An HTTP request where a frame belongs: "GET " is a length of ~1.2 GB.
        let err = read::<Hello, _>(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn hello_checks() {
        assert!(check_hello(&hello()).is_ok());
        let v2 = Hello { version: 2, ..hello() };
        assert_eq!(check_hello(&v2).unwrap_err().0, RefusalReason::UnsupportedVersion);
        let no_id = Hello { app_id: String::new(), ..hello() };
        assert_eq!(check_hello(&no_id).unwrap_err().0, RefusalReason::Malformed);
        let no_cred = Hello { credential: None, ..hello() };
        assert_eq!(check_hello(&no_cred).unwrap_err().0, RefusalReason::NoCredential);
    }

    #[test]
    fn verdicts() {
        let v = accepted(7, Grant { reconnect_token: "r".into(), client_credential: None }, false);
        assert!(v.accepted);
        assert_eq!(v.channel_id, 7);
        let v = refused(RefusalReason::BadCredential, "nope");
        assert!(!v.accepted);
        assert_eq!(v.reason(), RefusalReason::BadCredential);
    }
}
