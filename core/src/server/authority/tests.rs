use super::*;

/// A parsed frame: type, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);
/// A decoded header list.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn parse(mut bytes: &[u8]) -> Vec<Frame> {
    assert!(bytes.starts_with(PREFACE), "no preface");
    bytes = &bytes[PREFACE.len()..];
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        assert!(len <= MAX_FRAME_LEN, "frame of {len} bytes written");
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        frames.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    frames
}

/// Feeds `input` in pieces of `step` bytes.
fn run(input: &[u8], step: usize) -> Result<Vec<u8>, FrameError> {
    let mut rewriter = Rewriter::default();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        rewriter.feed(piece, &mut out)?;
    }
    Ok(out)
}

/// The header lists the server decodes from the rewritten frames, with the
/// flags of each block's HEADERS frame.
fn server_view(frames: &[Frame]) -> Vec<(u8, Fields)> {
    let mut decoder = Decoder::new();
    let mut blocks = Vec::new();
    let mut open: Option<(u8, Vec<u8>)> = None;
    for (ty, flags, _, payload) in frames {
        match *ty {
            TYPE_HEADERS => {
                assert!(open.is_none());
                assert_eq!(flags & FLAG_PADDED, 0, "padding is never written");
                let body = if flags & FLAG_PRIORITY != 0 {
                    &payload[5..]
                } else {
                    &payload[..]
                };
                open = Some((*flags, body.to_vec()));
            }
            TYPE_CONTINUATION => open.as_mut().unwrap().1.extend_from_slice(payload),
            _ => continue,
        }
        if flags & FLAG_END_HEADERS != 0 {
            let (first_flags, block) = open.take().unwrap();
            blocks.push((first_flags, decoder.decode(&block).unwrap()));
        }
    }
    assert!(open.is_none(), "unfinished header block");
    blocks
}

fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
    vec![
        (b":method", b"POST".to_vec()),
        (b":scheme", b"http".to_vec()),
        (b":path", b"/csi.v1.Identity/Probe".to_vec()),
        (b":authority", authority.to_vec()),
        (b"content-type", b"application/grpc".to_vec()),
        (b"te", b"trailers".to_vec()),
    ]
}

fn encode(encoder: &mut Encoder<'_>, headers: &[(&'static [u8], Vec<u8>)]) -> Vec<u8> {
    encoder.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())))
}

fn authority_of(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    headers
        .iter()
        .find(|(n, _)| n == b":authority")
        .map(|(_, v)| v.clone())
        .unwrap()
}

#[test]
fn refused_authorities_become_localhost_and_others_are_kept() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"/run/omnidisk/csi.sock", REPLACEMENT),
        (b"", REPLACEMENT),
        (b"unix:///tmp/a b", REPLACEMENT),
        (b"localhost", b"localhost"),
        (b"omnidisk.invalid:80", b"omnidisk.invalid:80"),
    ];
    for (sent, expected) in cases {
        let mut encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        let block = encode(&mut encoder, &request(sent));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        for step in [1, 7, 4096] {
            let out = run(&input, step).unwrap();
            let frames = parse(&out);
            assert_eq!(frames[0], (0x4, 0, 0, vec![]));
            let blocks = server_view(&frames);
            assert_eq!(blocks.len(), 1);
            assert_eq!(
                authority_of(&blocks[0].1),
                expected.to_vec(),
                "sent {sent:?}"
            );
            let path = blocks[0].1.iter().find(|(n, _)| n == b":path").unwrap();
            assert_eq!(path.1, b"/csi.v1.Identity/Probe");
            assert_eq!(blocks[0].1.len(), 6);
        }
    }
}

#[test]
fn percent_encoded_paths_follow_the_authority_parser() {
    // Whatever `http` decides, the server must be able to parse the result.
    let sent = b"%2Frun%2Fomnidisk%2Fcsi.sock";
    let mut encoder = Encoder::new();
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        1,
        &encode(&mut encoder, &request(sent)),
    ));
    let blocks = server_view(&parse(&run(&input, 3).unwrap()));
    let got = authority_of(&blocks[0].1);
    assert!(Authority::try_from(got.as_slice()).is_ok(), "{got:?}");
}

/// A literal with incremental indexing whose name is static entry `name`
/// (0: a literal name follows).
fn indexed_literal(block: &mut Vec<u8>, name: u8, literal_name: &[u8], value: &[u8]) {
    block.push(0x40 | name);
    if name == 0 {
        block.push(literal_name.len() as u8);
        block.extend_from_slice(literal_name);
    }
    block.push(value.len() as u8);
    block.extend_from_slice(value);
}

#[test]
fn the_client_dynamic_table_is_followed_across_blocks() {
    // First block: everything but the method and scheme goes into the
    // client's dynamic table; the second refers to those entries only.
    let mut first = vec![0x83, 0x86];
    indexed_literal(&mut first, 4, b"", b"/csi.v1.Identity/Probe");
    indexed_literal(&mut first, 1, b"", b"/run/a.sock");
    indexed_literal(&mut first, 31, b"", b"application/grpc");
    indexed_literal(&mut first, 0, b"te", b"trailers");
    // A table size update first, then te (62), content-type (63),
    // :authority (64), :path (65).
    let second = vec![
        0x3f,
        0xe1,
        0x1f,
        0x83,
        0x86,
        0x80 | 65,
        0x80 | 64,
        0x80 | 63,
        0x80 | 62,
    ];
    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first));
    input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
    input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &second));
    let out = run(&input, 5).unwrap();
    let frames = parse(&out);
    assert_eq!(frames[1], (0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
    assert_eq!(frames[2].2, 3);
    let blocks = server_view(&frames);
    assert_eq!(blocks.len(), 2);
    for (_, headers) in &blocks {
        assert_eq!(authority_of(headers), REPLACEMENT);
        let names: Vec<&[u8]> = headers.iter().map(|(n, _)| n.as_slice()).collect();
        let expected: Vec<&[u8]> = vec![
            b":method",
            b":scheme",
            b":path",
            b":authority",
            b"content-type",
            b"te",
        ];
        assert_eq!(names, expected);
        assert_eq!(headers[2].1, b"/csi.v1.Identity/Probe");
        assert_eq!(headers[5].1, b"trailers");
    }
    // The rewritten second block stands alone: it decodes without the
    // first one.
    let second_out = &frames[2].3;
    let alone = Decoder::new().decode(second_out).unwrap();
    assert_eq!(authority_of(&alone), REPLACEMENT);
}

#[test]
fn padding_priority_and_continuation_are_handled() {
    let mut encoder = Encoder::new();
    let block = encode(&mut encoder, &request(b"/run/b.sock"));
    let (a, b) = block.split_at(block.len() / 3);
    let (b, c) = b.split_at(b.len() / 2);
    let mut payload = vec![4u8];
    payload.extend_from_slice(&[0x80, 0, 0, 1, 200]);
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0; 4]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
        5,
        &payload,
    ));
    input.extend(frame(TYPE_CONTINUATION, 0, 5, b));
    input.extend(frame(TYPE_CONTINUATION, 0, 5, &[]));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, c));
    let frames = parse(&run(&input, 2).unwrap());
    assert_eq!(frames.len(), 1);
    let (ty, flags, stream, payload) = &frames[0];
    assert_eq!((*ty, *stream), (TYPE_HEADERS, 5));
    assert_eq!(*flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
    assert_eq!(&payload[..5], &[0x80, 0, 0, 1, 200]);
    let blocks = server_view(&frames);
    assert_eq!(authority_of(&blocks[0].1), REPLACEMENT);
}

#[test]
fn large_header_lists_are_split_into_continuations() {
    let mut encoder = Encoder::new();
    let mut headers = request(b"/run/c.sock");
    headers.push((b"x-big", vec![b'v'; 40_000]));
    let block = encode(&mut encoder, &headers);
    let mut input = PREFACE.to_vec();
    let mut chunks = block.chunks(MAX_FRAME_LEN).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            FLAG_END_HEADERS
        } else {
            0
        };
        let ty = if first {
            TYPE_HEADERS
        } else {
            TYPE_CONTINUATION
        };
        first = false;
        input.extend(frame(ty, flags, 1, chunk));
    }
    let frames = parse(&run(&input, 1000).unwrap());
    assert!(frames.len() >= 3);
    assert!(frames[1..].iter().all(|f| f.0 == TYPE_CONTINUATION));
    let blocks = server_view(&frames);
    let big = blocks[0].1.iter().find(|(n, _)| n == b"x-big").unwrap();
    assert_eq!(big.1.len(), 40_000);
    assert_eq!(authority_of(&blocks[0].1), REPLACEMENT);
}

#[test]
fn other_frames_pass_untouched_and_non_http2_passes_raw() {
    let mut input = PREFACE.to_vec();
    let others = [
        frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]),
        frame(0x8, 0, 0, &[0, 1, 0, 0]),
        frame(0x6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]),
        frame(0x0, 0x8, 1, &[2, b'x', 0, 0]),
        frame(0xfa, 0xff, 9, &[9; 100]),
    ];
    for f in &others {
        input.extend_from_slice(f);
    }
    assert_eq!(run(&input, 3).unwrap(), input);
    let http1 = b"GET / HTTP/1.1\r\nHost: /x\r\n\r\n".to_vec();
    assert_eq!(run(&http1, 2).unwrap(), http1);
    let almost = b"PRI * HTTP/2.0\r\n\r\nXX".to_vec();
    assert_eq!(run(&almost, 1).unwrap(), almost);
}

#[test]
fn framing_violations_are_errors() {
    let mut encoder = Encoder::new();
    let block = encode(&mut encoder, &request(b"/x"));
    let with = |frames: &[Vec<u8>]| {
        let mut input = PREFACE.to_vec();
        for f in frames {
            input.extend_from_slice(f);
        }
        run(&input, 10)
    };
    let open = frame(TYPE_HEADERS, 0, 1, &block[..2]);
    assert!(matches!(
        with(&[open.clone(), frame(0x0, 0, 1, b"x")]),
        Err(FrameError::ExpectedContinuation { .. })
    ));
    assert!(matches!(
        with(&[
            open,
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &block[2..])
        ]),
        Err(FrameError::ExpectedContinuation { .. })
    ));
    assert!(matches!(
        with(&[frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block)]),
        Err(FrameError::StrayContinuation(1))
    ));
    assert!(matches!(
        with(&[frame(TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 1, &block)]),
        Err(FrameError::PushPromise)
    ));
    assert!(matches!(
        with(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &[200, 1, 2]
        )]),
        Err(FrameError::BadPadding(1))
    ));
    assert!(matches!(
        with(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PRIORITY,
            1,
            &[1, 2]
        )]),
        Err(FrameError::BadPadding(1))
    ));
    assert!(matches!(
        with(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0x7f]
        )]),
        Err(FrameError::Hpack { stream: 1, .. })
    ));
    assert!(matches!(
        with(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &vec![0u8; MAX_FRAME_LEN + 1]
        )]),
        Err(FrameError::FrameTooLarge(_))
    ));
    // A block that never ends is cut off at MAX_BLOCK_LEN.
    let mut frames = vec![frame(TYPE_HEADERS, 0, 1, &[0x82])];
    for _ in 0..=MAX_BLOCK_LEN / MAX_FRAME_LEN {
        frames.push(frame(TYPE_CONTINUATION, 0, 1, &vec![0x82; MAX_FRAME_LEN]));
    }
    assert!(matches!(with(&frames), Err(FrameError::BlockTooLarge)));
    // A small block of references to one big entry is cut off too.
    let mut bomb = vec![0x40, 1, b'x'];
    bomb.extend(loona_hpack::encoder::encode_integer(4000, 7));
    bomb.extend(std::iter::repeat_n(b'y', 4000));
    bomb.extend(std::iter::repeat_n(0x80 | 62, 100));
    assert!(matches!(
        with(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &bomb)]),
        Err(FrameError::DecodedTooLarge)
    ));
}

#[test]
fn random_input_never_panics() {
    // A fixed linear congruential sequence: reproducible noise.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as u8
    };
    for round in 0..2_000 {
        let mut input = PREFACE.to_vec();
        let frames = 1 + usize::from(next()) % 4;
        for _ in 0..frames {
            let len = usize::from(next()) % 64;
            let ty = [TYPE_HEADERS, TYPE_CONTINUATION, 0x0, next()][usize::from(next()) % 4];
            let flags = next();
            let stream = u32::from(next() % 4);
            let payload: Vec<u8> = (0..len).map(|_| next()).collect();
            input.extend(frame(ty, flags, stream, &payload));
        }
        let _ = run(&input, 1 + round % 13);
    }
}
