//! The client's server-sent-events parser (`kiln watch`, `kiln run` on a
//! served runner): any bytes, split anywhere, give the same messages as the
//! whole stream at once, each with an event name.
#![no_main]

use kiln::api::client::{SseMessage, SseParser};
use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cuts = input.slice().to_vec();
    let stream = input.rest();
    let whole = SseParser::default().push(stream);
    let mut parser = SseParser::default();
    let mut split: Vec<SseMessage> = Vec::new();
    let mut rest = stream;
    for cut in cuts {
        let (chunk, tail) = rest.split_at(usize::from(cut).min(rest.len()));
        split.extend(parser.push(chunk));
        rest = tail;
    }
    split.extend(parser.push(rest));
    assert_eq!(
        split, whole,
        "the messages depend on where the bytes were split"
    );
    for msg in &whole {
        assert!(
            !msg.event.is_empty(),
            "a message without an event name: {msg:?}"
        );
    }
});
