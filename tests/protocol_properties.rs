//! Property tests of the sans-I/O decoder (RFC 6455 §5): any sequence of messages, encoded with
//! random fragmentation, interleaved control frames and random TCP split points, decodes to the
//! same messages; arbitrary bytes never panic it; and its memory stays bounded by the limits.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wsplug::protocol::frame::encode_client_frame;
use wsplug::protocol::{Decoder, Event, Limits, Message};

#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        any::<String>().prop_map(Msg::Text),
        proptest::collection::vec(any::<u8>(), 0..2000).prop_map(Msg::Binary),
    ]
}

/// One message as frames: fragment boundaries (byte offsets, possibly mid code point) and, after
/// each fragment, maybe a ping.
fn encode(m: &Msg, cuts: &[usize], pings: &[bool], key: [u8; 4], out: &mut Vec<u8>, expected: &mut Vec<Event>) {
    let (opcode, bytes): (u8, &[u8]) = match m {
        Msg::Text(s) => (1, s.as_bytes()),
        Msg::Binary(b) => (2, b),
    };
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds.retain(|&b| b > 0 && b < bytes.len());
    bounds.push(bytes.len());
    let mut start = 0;
    for (i, &end) in bounds.iter().enumerate() {
        let fin = i + 1 == bounds.len();
        let op = if i == 0 { opcode } else { 0 };
        out.extend(encode_client_frame(fin, op, &bytes[start..end], key));
        if !fin && pings.get(i).copied().unwrap_or(false) {
            let payload = format!("p{i}");
            out.extend(encode_client_frame(true, 9, payload.as_bytes(), key));
            expected.push(Event::Ping(Bytes::from(payload)));
        }
        start = end;
    }
    let data = Bytes::copy_from_slice(bytes);
    expected.push(Event::Message(if opcode == 1 { Message::Text(data) } else { Message::Binary(data) }));
}

fn decode_in_chunks(bytes: &[u8], splits: &[usize]) -> Result<Vec<Event>, String> {
    let mut decoder = Decoder::server(Limits { max_frame_size: 1 << 20, max_message_size: 1 << 20 });
    let mut points: Vec<usize> = splits.iter().map(|s| s % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut start = 0;
    for p in points {
        buf.extend_from_slice(&bytes[start..p]);
        start = p;
        while let Some(e) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            events.push(e);
        }
    }
    assert!(buf.is_empty(), "all bytes consumed");
    Ok(events)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn fragmented_pinged_split_messages_decode_to_the_originals(
        msgs in proptest::collection::vec((msg(), proptest::collection::vec(any::<usize>(), 0..5), proptest::collection::vec(any::<bool>(), 0..5)), 1..8),
        key in any::<[u8; 4]>(),
        splits in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (m, cuts, pings) in &msgs {
            encode(m, cuts, pings, key, &mut wire, &mut expected);
        }
        prop_assert_eq!(decode_in_chunks(&wire, &splits).unwrap(), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..4096), splits in proptest::collection::vec(any::<usize>(), 0..8)) {
        let limits = Limits { max_frame_size: 1024, max_message_size: 2048 };
        let mut decoder = Decoder::server(limits);
        let mut points: Vec<usize> = splits.iter().map(|s| s % (bytes.len() + 1)).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut start = 0;
        'feed: for p in points {
            buf.extend_from_slice(&bytes[start..p]);
            start = p;
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(Event::Message(m))) => prop_assert!(m.payload().len() <= limits.max_message_size),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }

    #[test]
    fn arbitrary_masked_frames_never_panic(frames in proptest::collection::vec((any::<bool>(), 0u8..16, proptest::collection::vec(any::<u8>(), 0..300)), 0..10)) {
        let mut wire = Vec::new();
        for (fin, op, payload) in &frames {
            wire.extend(encode_client_frame(*fin, *op, payload, [9, 8, 7, 6]));
        }
        let mut decoder = Decoder::server(Limits::default());
        let mut buf = BytesMut::from(&wire[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
    }
}
