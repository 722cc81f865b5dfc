//! Fuzzes the channel's hello/verdict decoder: the first bytes a stranger
//! sends to the callback listener, and the first bytes an app reads back.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use dialback_channel::handshake::{self, FrameError, MAX_FRAME};
use dialback_channel::{Hello, Verdict};
use libfuzzer_sys::fuzz_target;

/// Decodes `data` as a frame of `M` with both decoders, checks they agree,
/// and that a decoded message survives encode + decode.
fn decode<M>(data: &[u8]) -> Option<M>
where
    M: prost::Message + Default + PartialEq + std::fmt::Debug,
{
    let framed = handshake::decode_frame::<M>(data);
    let mut rest = data;
    let streamed = match pin!(handshake::read::<M, _>(&mut rest)).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("reading from a slice never waits"),
    };
    match (&framed, &streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(FrameError::TooLarge { len: a, .. }), Err(FrameError::TooLarge { len: b, .. })) => {
            assert_eq!(a, b);
            assert_eq!(data.len() - rest.len(), 4, "an oversized frame's body must not be read");
        }
        (Err(FrameError::Decode(_)), Err(FrameError::Decode(_))) | (Err(FrameError::Io(_)), Err(FrameError::Io(_))) => {
        }
        (a, b) => panic!("decode_frame gave {a:?}, read gave {b:?}"),
    }
    let msg = framed.ok()?;
    let again = handshake::decode_frame::<M>(&handshake::encode(&msg)).expect("a decoded message re-encodes");
    assert_eq!(again, msg);
    Some(msg)
}

fuzz_target!(|data: &[u8]| {
    // The input as it comes off the wire, length prefix included...
    if let Some(hello) = decode::<Hello>(data) {
        let _ = handshake::check_hello(&hello);
    }
    let _ = decode::<Verdict>(data);
    // ...and as the body behind a valid prefix, so every input reaches protobuf.
    if data.len() <= MAX_FRAME {
        let mut frame = (data.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(data);
        if let Some(hello) = decode::<Hello>(&frame) {
            let _ = handshake::check_hello(&hello);
        }
        let _ = decode::<Verdict>(&frame);
    }
});
