//! Unit tests of the QUIC transport's pure helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::quic_alpn;
use crate::transport::quic_accept::abandoned;

#[test]
fn an_app_dropping_an_attempt_is_abandoned_not_refused() {
    let closed = |code: u32| {
        quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(code),
            reason: bytes::Bytes::new(),
        })
    };
    assert!(abandoned(&closed(0)), "quinn's implicit close on drop");
    assert!(!abandoned(&closed(crate::CloseCode::ShuttingDown as u32)));
    assert!(!abandoned(&quinn::ConnectionError::TimedOut));
    assert!(!abandoned(&quinn::ConnectionError::Reset));
}

#[test]
fn a_stream_per_call_is_offered_only_next_to_dialback_1() {
    let one = dialback_certs::ALPN.to_vec();
    let two = dialback_certs::ALPN_STREAMS.to_vec();
    assert_eq!(quic_alpn(std::slice::from_ref(&one)), vec![two.clone(), one.clone()]);
    assert_eq!(quic_alpn(&[two.clone(), one.clone()]), vec![two, one], "not twice");
    assert!(quic_alpn(&[]).is_empty(), "no ALPN stays none, to be refused");
    assert_eq!(quic_alpn(&[b"h2".to_vec()]), vec![b"h2".to_vec()]);
}
