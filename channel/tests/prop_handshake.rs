//! Property tests of the hello/verdict codec: whatever bytes a stranger
//! sends before the handshake, [`handshake::read`] and
//! [`handshake::decode_frame`] answer with a message or a clean
//! [`FrameError`], and every message we build survives the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use dialback_channel::handshake::{self, FrameError, MAX_FRAME, VERSION};
use dialback_channel::{Credential, Hello, RefusalReason, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use prost::Message;

/// A fixed seed and a case count that keeps each property well under a
/// second in a debug build.
fn config(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(0x6469_616c_6261_636b), failure_persistence: None, ..Config::default() }
}

/// Runs [`handshake::read`] over `bytes`; returns the result and how many
/// bytes it consumed. A byte slice is always ready, so one poll finishes.
fn read_from<M: Message + Default>(bytes: &[u8]) -> (Result<M, FrameError>, usize) {
    let mut rest = bytes;
    let got = {
        let fut = pin!(handshake::read::<M, _>(&mut rest));
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("reading from a slice never waits"),
        }
    };
    (got, bytes.len() - rest.len())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9._-]{1,40}", any::<String>()]
}

fn credential() -> impl Strategy<Value = Option<Credential>> {
    prop_oneof![
        Just(None),
        text().prop_map(|t| Some(Credential::OneTimeToken(t))),
        text().prop_map(|t| Some(Credential::ApiToken(t))),
        any::<bool>().prop_map(|b| Some(Credential::ClientCertificate(b))),
        text().prop_map(|t| Some(Credential::ReconnectToken(t))),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    let fields =
        (any::<u32>(), any::<u32>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..100), any::<bool>());
    (prop_oneof![Just(VERSION), any::<u32>()], text(), credential(), text(), any::<bool>(), fields).prop_map(
        |(
            version,
            app_id,
            credential,
            instance,
            standby,
            (max_message_bytes, liveness_beat_ms, api_over_http3, client_public_key, serves_early_streams),
        )| {
            Hello {
                version,
                app_id,
                credential,
                instance,
                standby,
                max_message_bytes,
                liveness_beat_ms,
                api_over_http3,
                client_public_key,
                serves_early_streams,
            }
        },
    )
}

fn reason() -> impl Strategy<Value = RefusalReason> {
    (0i32..=11).prop_map(|r| RefusalReason::try_from(r).unwrap())
}

fn verdict() -> impl Strategy<Value = Verdict> {
    let cert = (proptest::collection::vec(any::<u8>(), 0..100), any::<u64>());
    (any::<bool>(), any::<i32>(), text(), any::<u64>(), text(), any::<bool>(), cert).prop_map(
        |(accepted, reason, message, channel_id, reconnect_token, api_over_http3, (client_certificate, expires))| {
            Verdict {
                accepted,
                reason,
                message,
                channel_id,
                reconnect_token,
                api_over_http3,
                client_certificate,
                client_certificate_expires_unix_ms: expires,
            }
        },
    )
}

/// Arbitrary bytes, often behind a plausible length prefix so that the
/// protobuf decoder is reached, not only the size check.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|body| {
            let mut v = (body.len() as u32).to_be_bytes().to_vec();
            v.extend(body);
            v
        }),
        (0u32..300, proptest::collection::vec(any::<u8>(), 0..256)).prop_map(|(len, body)| {
            let mut v = len.to_be_bytes().to_vec();
            v.extend(body);
            v
        }),
    ]
}

/// Both decoders agree on `bytes`: same message, or errors of the same kind.
fn decoders_agree<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (streamed, _) = read_from::<M>(bytes);
    let framed = handshake::decode_frame::<M>(bytes);
    match (streamed, framed) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(FrameError::TooLarge { len: a, .. }), Err(FrameError::TooLarge { len: b, .. })) => prop_assert_eq!(a, b),
        (Err(FrameError::Decode(_)), Err(FrameError::Decode(_))) | (Err(FrameError::Io(_)), Err(FrameError::Io(_))) => {
        }
        (a, b) => prop_assert!(false, "read gave {a:?}, decode_frame gave {b:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn hello_round_trips(h in hello(), trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
        let frame = handshake::encode(&h);
        prop_assert_eq!(handshake::frame_len(frame[..4].try_into().unwrap()).unwrap(), frame.len() - 4);
        let mut bytes = frame.to_vec();
        bytes.extend(&trailing);
        let (got, used) = read_from::<Hello>(&bytes);
        prop_assert_eq!(got.unwrap(), h.clone());
        prop_assert_eq!(used, frame.len(), "read must stop at the end of the frame");
        prop_assert_eq!(handshake::decode_frame::<Hello>(&bytes).unwrap(), h);
    }

    #[test]
    fn verdict_round_trips(v in verdict()) {
        let frame = handshake::encode(&v);
        prop_assert_eq!(read_from::<Verdict>(&frame).0.unwrap(), v.clone());
        prop_assert_eq!(handshake::decode_frame::<Verdict>(&frame).unwrap(), v);
    }

    #[test]
    fn arbitrary_bytes_fail_cleanly(bytes in wire()) {
        decoders_agree::<Hello>(&bytes)?;
        decoders_agree::<Verdict>(&bytes)?;
        if let Ok(h) = handshake::decode_frame::<Hello>(&bytes) {
            let _ = handshake::check_hello(&h);
        }
    }

    #[test]
    fn oversized_prefix_is_refused_without_reading_the_body(
        len in (MAX_FRAME as u32 + 1)..=u32::MAX,
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend(&body);
        let (got, used) = read_from::<Hello>(&bytes);
        prop_assert!(matches!(got, Err(FrameError::TooLarge { len: l, max: MAX_FRAME }) if l == len as usize), "{got:?}");
        prop_assert_eq!(used, 4, "only the prefix may be read");
        let framed = handshake::decode_frame::<Hello>(&bytes);
        prop_assert!(matches!(framed, Err(FrameError::TooLarge { .. })), "{framed:?}");
        prop_assert!(handshake::frame_len(len.to_be_bytes()).is_err());
    }

    #[test]
    fn prefix_up_to_the_limit_is_accepted(len in 0..=MAX_FRAME as u32) {
        prop_assert_eq!(handshake::frame_len(len.to_be_bytes()).unwrap(), len as usize);
    }

    #[test]
    fn truncated_frame_is_an_io_error(h in hello(), v in verdict(), cut in any::<prop::sample::Index>()) {
        let frame = handshake::encode(&h);
        let short = &frame[..cut.index(frame.len())];
        let got = read_from::<Hello>(short).0;
        prop_assert!(matches!(got, Err(FrameError::Io(_))), "{got:?}");
        let got = handshake::decode_frame::<Hello>(short);
        prop_assert!(matches!(got, Err(FrameError::Io(_))), "{got:?}");
        let frame = handshake::encode(&v);
        let short = &frame[..cut.index(frame.len())];
        let got = read_from::<Verdict>(short).0;
        prop_assert!(matches!(got, Err(FrameError::Io(_))), "{got:?}");
    }

    #[test]
    fn check_hello_decides_by_version_app_id_and_credential(h in hello()) {
        let got = handshake::check_hello(&h);
        let expected = if h.version != VERSION {
            Some(RefusalReason::UnsupportedVersion)
        } else if h.app_id.is_empty() || h.app_id.len() > 256 {
            Some(RefusalReason::Malformed)
        } else if h.credential.is_none() {
            Some(RefusalReason::NoCredential)
        } else {
            None
        };
        match (got, expected) {
            (Ok(c), None) => prop_assert_eq!(Some(c), h.credential.as_ref()),
            (Err((reason, message)), Some(want)) => {
                prop_assert_eq!(reason, want);
                prop_assert!(!message.is_empty());
            }
            (got, want) => prop_assert!(false, "check_hello gave {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn verdict_builders_round_trip(id in any::<u64>(), token in text(), r in reason(), msg in text(), api in any::<bool>()) {
        let grant = dialback_channel::Grant { reconnect_token: token.clone(), client_credential: None };
        let v = handshake::accepted(id, grant, api);
        let back = handshake::decode_frame::<Verdict>(&handshake::encode(&v)).unwrap();
        prop_assert!(back.accepted);
        prop_assert_eq!(back.channel_id, id);
        prop_assert_eq!(back.reason(), RefusalReason::Unspecified);
        prop_assert_eq!(back.reconnect_token, token);
        prop_assert_eq!(back.api_over_http3, api);
        let v = handshake::refused(r, msg.clone());
        let back = handshake::decode_frame::<Verdict>(&handshake::encode(&v)).unwrap();
        prop_assert!(!back.accepted);
        prop_assert_eq!(back.reason(), r);
        prop_assert_eq!(back.channel_id, 0);
        prop_assert_eq!(back.message, msg);
    }
}

proptest! {
    #![proptest_config(config(16))]

    /// Messages near the size limit: encodable always, readable only up to it.
    #[test]
    fn frames_over_the_limit_are_refused(extra in 0usize..64, over in any::<bool>()) {
        let size = if over { MAX_FRAME + 1 + extra } else { MAX_FRAME - 16 - extra };
        let h = Hello { version: VERSION, app_id: "a".repeat(size), ..Default::default() };
        let frame = handshake::encode(&h);
        let got = handshake::decode_frame::<Hello>(&frame);
        if frame.len() - 4 > MAX_FRAME {
            prop_assert!(matches!(got, Err(FrameError::TooLarge { .. })), "{got:?}");
        } else {
            prop_assert_eq!(got.unwrap(), h);
        }
    }
}
