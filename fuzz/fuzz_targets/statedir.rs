//! Fuzzes the state-dir parsers: the peers file and the reset key, which
//! anyone with access to the directory may have written.
#![no_main]

use dialback_sidecar::statedir::{MAX_CIDS, MAX_PEERS, format_peers, parse_peers, parse_reset_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (peers, cids) = parse_peers(&String::from_utf8_lossy(data));
    assert!(peers.len() <= MAX_PEERS, "{} peers", peers.len());
    assert!(cids.len() <= MAX_CIDS, "{} cids", cids.len());
    assert!(cids.iter().all(|c| c.len() <= 20), "a cid over 20 bytes");
    // What the sidecar would write back reads back the same.
    let text = format_peers(&peers, &cids);
    assert_eq!(parse_peers(&text), (peers, cids), "format(parse(x)) does not parse back:\n{text}");

    match parse_reset_key(data) {
        Some(key) => assert_eq!(&key[..], data),
        None => assert_ne!(data.len(), 32),
    }
});
