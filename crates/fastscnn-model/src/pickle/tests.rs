use super::*;

/// `[[...[]...]]` nested `depth` deep, as Python's pickler writes it (protocol 2).
fn nested_lists(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x80, 2];
    bytes.extend(std::iter::repeat_n(b']', depth));
    bytes.extend(std::iter::repeat_n(b'a', depth - 1));
    bytes.push(b'.');
    bytes
}

#[test]
fn nesting_is_bounded() {
    assert!(parse(&nested_lists(MAX_DEPTH as usize)).is_ok());
    let err = parse(&nested_lists(MAX_DEPTH as usize + 1)).unwrap_err();
    assert!(err.why.contains("nested deeper"), "{err}");
}

#[test]
fn nesting_through_the_memo_is_counted_too() {
    let mut bytes = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..(MAX_DEPTH + 1) {
        bytes.extend([b'0', b']', b'h', 0, b'a', b'q', 0]);
    }
    bytes.push(b'.');
    let err = parse(&bytes).unwrap_err();
    assert!(err.why.contains("nested deeper"), "{err}");
}

#[test]
fn copies_through_the_memo_are_bounded() {
    // A list of 64 copies of the previous one, memoised, 8 times over: 64^8 values.
    let mut bytes = vec![0x80, 2, b'N', b'q', 0];
    for _ in 0..8 {
        bytes.push(b'(');
        bytes.extend(std::iter::repeat_n([b'h', 0], 64).flatten());
        bytes.extend([b'l', b'q', 0]);
    }
    bytes.push(b'.');
    let err = parse(&bytes).unwrap_err();
    assert!(err.why.contains("more than"), "{err}");
}

#[test]
fn copies_of_long_strings_count_their_bytes() {
    // One string of 1 MiB, then 200 copies of it through the memo: 200 MiB of copies from a
    // file of 1 MiB.
    let mut bytes = vec![0x80, 2, b'(', b'B'];
    bytes.extend((1u32 << 20).to_le_bytes());
    bytes.extend(std::iter::repeat_n(b'x', 1 << 20));
    bytes.extend([b'q', 0]);
    bytes.extend(std::iter::repeat_n([b'h', 0], 200).flatten());
    bytes.extend([b'l', b'.']);
    let err = parse(&bytes).unwrap_err();
    assert!(err.why.contains("more than"), "{err}");
}

#[test]
fn briefs_stay_short() {
    let long = Value::Str("y".repeat(1 << 20));
    assert!(long.brief().len() < 100, "{}", long.brief());
    assert_eq!(Value::Bytes(vec![0; 1 << 20]).brief(), "1048576 bytes");
    assert_eq!(Value::Str("ab".into()).brief(), "\"ab\"");
}

#[test]
fn lengths_past_the_end_are_refused() {
    let bytes = [0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a', b'.'];
    let err = parse(&bytes).unwrap_err();
    assert_eq!(err.offset, 2);
    assert!(err.why.contains("past the end"), "{err}");
}

#[test]
fn malformed_streams_are_refused() {
    for (bytes, why) in [
        (&b"\x80\x02]"[..], "ends before the STOP"),
        (b"\x80\x02a.", "empty stack"),
        (b"\x80\x02\xff.", "opcode 0xff"),
        (b"\x80\x02h\x05.", "memo entry 5"),
        (b"\x80\x02(.", "STOP without"),
        (b"\x80\x02K\x01K\x02a.", "added to something else"),
    ] {
        let err = parse(bytes).unwrap_err();
        assert!(err.why.contains(why), "{bytes:?}: {err}");
    }
}

#[test]
fn integers_of_every_width() {
    for (bytes, value) in [
        (&b"\x80\x02K\xff."[..], 255),
        (b"\x80\x02M\x00\x01.", 256),
        (b"\x80\x02J\xff\xff\xff\xff.", -1),
        (b"\x80\x02\x8a\x02\x00\x80.", -32768),
        (b"\x80\x02\x8a\x05\x00\xe4\x0b\x54\x02.", 10_000_000_000),
        (b"I42\n.", 42),
        (b"L-7L\n.", -7),
    ] {
        assert_eq!(parse(bytes).unwrap(), Value::Int(value), "{bytes:?}");
    }
}

#[test]
fn an_ordered_dict_of_a_tensor_as_torch_writes_it() {
    let mut b = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00w".to_vec();
    b.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02(");
    b.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000");
    b.extend(b"X\x03\x00\x00\x00cpuK\x04tQ");
    b.extend(b"K\x00K\x02K\x02\x86K\x02K\x01\x86\x89h\x00)RtRu}bq\x03.");
    let value = parse(&b).unwrap();
    let Value::Dict(items) = value.unbuilt() else {
        panic!("{value:?}")
    };
    assert_eq!(items[0].0, Value::Str("w".into()));
    let Value::Call { callable, args } = &items[0].1 else {
        panic!()
    };
    assert!(callable.is_global("torch._utils", "_rebuild_tensor_v2"));
    let Value::Tuple(args) = args.as_ref() else {
        panic!()
    };
    assert_eq!(args[2], Value::Tuple(vec![Value::Int(2), Value::Int(2)]));
    assert!(matches!(args[0], Value::Persistent(_)));
}
