//! A pass over a pickle's opcodes before candle's reader sees it. The reader builds and drops its
//! objects recursively, so a pickle of lists nested a million deep overflows the stack, and it
//! trusts every length the file declares. This pass runs the pickle machine on the nesting depth
//! of each object alone (no object is built), so it needs no recursion and little memory, and it
//! refuses what the reader could not survive: nesting deeper than [`MAX_DEPTH`], lengths past the
//! end of the data, opcodes it does not know, and a stack or memo used out of turn.

use std::collections::HashMap;

/// The deepest nesting accepted. A state_dict nests five or six deep (dict, tensor rebuild
/// call, its argument tuple, the storage tuple); mmsegmentation's metadata a few more.
pub const MAX_DEPTH: u32 = 256;

#[derive(Debug, Clone, Copy)]
enum Item {
    Mark,
    /// An object, by how deep it nests (a scalar is 1).
    Object(u32),
}

/// Why a pickle was refused, with the byte offset of the opcode concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pickle byte {offset}: {why}")]
pub struct PickleError {
    pub offset: usize,
    pub why: String,
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where the current opcode starts, for errors.
    op_at: usize,
    stack: Vec<Item>,
    memo: HashMap<u64, u32>,
}

impl<'a> Machine<'a> {
    fn error(&self, why: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.op_at,
            why: why.into(),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let available = (self.bytes.len() - self.at) as u64;
        if n > available {
            return Err(self.error(format!(
                "an argument of {n} bytes runs past the end of the data ({available} left)"
            )));
        }
        let slice = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(slice)
    }

    fn uint(&mut self, n: u64) -> Result<u64, PickleError> {
        let bytes = self.take(n)?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn line(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.error("a text argument without its end of line"))?;
        self.at += end + 1;
        Ok(&rest[..end])
    }

    fn push(&mut self, depth: u32) -> Result<(), PickleError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("objects nested deeper than {MAX_DEPTH} levels")));
        }
        self.stack.push(Item::Object(depth));
        Ok(())
    }

    fn pop(&mut self) -> Result<u32, PickleError> {
        match self.stack.pop() {
            Some(Item::Object(depth)) => Ok(depth),
            Some(Item::Mark) => Err(self.error("a mark where an object was expected")),
            None => Err(self.error("an object taken from an empty stack")),
        }
    }

    /// Pops everything down to the topmost mark (and the mark); the deepest of them.
    fn pop_to_mark(&mut self) -> Result<u32, PickleError> {
        let mut deepest = 0;
        loop {
            match self.stack.pop() {
                Some(Item::Object(depth)) => deepest = deepest.max(depth),
                Some(Item::Mark) => return Ok(deepest),
                None => return Err(self.error("no mark on the stack")),
            }
        }
    }

    /// Puts `depth` inside the object on top of the stack (a list appended to, a dict set).
    fn add_to_top(&mut self, depth: u32) -> Result<(), PickleError> {
        let top = self.pop()?;
        self.push(top.max(depth + 1))
    }

    fn top(&self) -> Result<u32, PickleError> {
        match self.stack.last() {
            Some(Item::Object(depth)) => Ok(*depth),
            _ => Err(self.error("no object on top of the stack")),
        }
    }

    fn memo_get(&mut self, index: u64) -> Result<(), PickleError> {
        let depth = *self
            .memo
            .get(&index)
            .ok_or_else(|| self.error(format!("memo entry {index} read before it is written")))?;
        self.push(depth)
    }

    fn memo_put(&mut self, index: u64) -> Result<(), PickleError> {
        let depth = self.top()?;
        self.memo.insert(index, depth);
        Ok(())
    }

    fn text_index(&mut self) -> Result<u64, PickleError> {
        let line = self.line()?;
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| self.error("a memo index that is not a number"))
    }

    /// Runs one opcode; true at STOP.
    fn step(&mut self) -> Result<bool, PickleError> {
        self.op_at = self.at;
        let op = self.take(1)?[0];
        match op {
            b'.' => return Ok(true),
            b'(' => self.stack.push(Item::Mark),
            // Leaves: scalars, strings, empty containers, globals, persistent ids by text.
            b'N' | 0x88 | 0x89 | b']' | b'}' | b')' | 0x8f => self.push(1)?,
            b'J' => self.leaf_after(4)?,
            b'K' | 0x82 => self.leaf_after(1)?,
            b'M' | 0x83 => self.leaf_after(2)?,
            b'G' => self.leaf_after(8)?,
            0x84 => self.leaf_after(4)?,
            b'T' | b'X' | b'B' | 0x8b => {
                let n = self.uint(4)?;
                self.leaf_after(n)?
            }
            b'U' | b'C' | 0x8a | 0x8c => {
                let n = self.uint(1)?;
                self.leaf_after(n)?
            }
            0x8d | 0x8e | 0x96 => {
                let n = self.uint(8)?;
                self.leaf_after(n)?
            }
            b'I' | b'L' | b'F' | b'S' | b'V' | b'P' => {
                self.line()?;
                self.push(1)?
            }
            b'c' => {
                self.line()?;
                self.line()?;
                self.push(1)?
            }
            b'i' => {
                self.line()?;
                self.line()?;
                let deepest = self.pop_to_mark()?;
                self.push(deepest + 1)?
            }
            0x80 => {
                self.take(1)?;
            }
            // FRAME: the frame's length; its opcodes follow as usual.
            0x95 => {
                self.take(8)?;
            }
            b'0' => {
                self.stack
                    .pop()
                    .ok_or_else(|| self.error("POP on an empty stack"))?;
            }
            b'1' => {
                self.pop_to_mark()?;
            }
            b'2' => {
                let depth = self.top()?;
                self.push(depth)?
            }
            b't' | b'l' | b'd' | 0x91 => {
                let deepest = self.pop_to_mark()?;
                self.push(deepest + 1)?
            }
            b'o' => {
                let deepest = self.pop_to_mark()?;
                self.push(deepest + 1)?
            }
            b'e' | b'u' | 0x90 => {
                let deepest = self.pop_to_mark()?;
                self.add_to_top(deepest)?
            }
            b'a' => {
                let item = self.pop()?;
                self.add_to_top(item)?
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.add_to_top(value.max(key))?
            }
            b'b' => {
                let state = self.pop()?;
                self.add_to_top(state)?
            }
            0x85..=0x87 => {
                let mut deepest = 0;
                for _ in 0..(op - 0x84) {
                    deepest = deepest.max(self.pop()?);
                }
                self.push(deepest + 1)?
            }
            // REDUCE and NEWOBJ: a callable and its arguments; NEWOBJ_EX has keyword arguments.
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.push(args.max(callable) + 1)?
            }
            0x92 => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let class = self.pop()?;
                self.push(kwargs.max(args).max(class) + 1)?
            }
            b'Q' => {
                let id = self.pop()?;
                self.push(id + 1)?
            }
            0x93 => {
                self.pop()?;
                self.pop()?;
                self.push(1)?
            }
            b'g' => {
                let index = self.text_index()?;
                self.memo_get(index)?
            }
            b'h' => {
                let index = self.uint(1)?;
                self.memo_get(index)?
            }
            b'j' => {
                let index = self.uint(4)?;
                self.memo_get(index)?
            }
            b'p' => {
                let index = self.text_index()?;
                self.memo_put(index)?
            }
            b'q' => {
                let index = self.uint(1)?;
                self.memo_put(index)?
            }
            b'r' => {
                let index = self.uint(4)?;
                self.memo_put(index)?
            }
            0x94 => {
                let index = self.memo.len() as u64;
                self.memo_put(index)?
            }
            0x97 => self.push(1)?,
            0x98 => {
                self.top()?;
            }
            other => return Err(self.error(format!("unknown opcode 0x{other:02x}"))),
        }
        Ok(false)
    }

    fn leaf_after(&mut self, n: u64) -> Result<(), PickleError> {
        self.take(n)?;
        self.push(1)
    }
}

/// Checks that `bytes` is a pickle candle's reader can read without overflowing its stack or
/// trusting a length the data does not have: it must reach STOP with one object on the stack.
pub fn check_pickle(bytes: &[u8]) -> Result<(), PickleError> {
    let mut machine = Machine {
        bytes,
        at: 0,
        op_at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        if machine.at >= bytes.len() {
            machine.op_at = machine.at;
            return Err(machine.error("the data ends before the STOP opcode"));
        }
        if machine.step()? {
            return match machine.stack.as_slice() {
                [Item::Object(_)] => Ok(()),
                _ => Err(machine.error("STOP without exactly one object on the stack")),
            };
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(check_pickle(&nested_lists(MAX_DEPTH as usize)), Ok(()));
        let err = check_pickle(&nested_lists(MAX_DEPTH as usize + 1)).unwrap_err();
        assert!(err.why.contains("nested deeper"), "{err}");
    }

    #[test]
    fn nesting_through_the_memo_is_counted_too() {
        // Two stack slots, unbounded depth: a new list, the previous one from the memo, append,
        // memoise, again and again.
        let mut bytes = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..(MAX_DEPTH + 1) {
            bytes.extend([b'0', b']', b'h', 0, b'a', b'q', 0]);
        }
        bytes.push(b'.');
        let err = check_pickle(&bytes).unwrap_err();
        assert!(err.why.contains("nested deeper"), "{err}");
    }

    #[test]
    fn lengths_past_the_end_are_refused() {
        // BINUNICODE declaring 4 GB.
        let bytes = [0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a', b'.'];
        let err = check_pickle(&bytes).unwrap_err();
        assert_eq!(err.offset, 2);
        assert!(err.why.contains("past the end"), "{err}");
    }

    #[test]
    fn malformed_streams_are_refused() {
        for (bytes, why) in [
            (&b"\x80\x02]"[..], "ends before the STOP"),
            (b"\x80\x02a.", "empty stack"),
            (b"\x80\x02\xff.", "unknown opcode"),
            (b"\x80\x02h\x05.", "memo entry 5"),
            (b"\x80\x02(.", "STOP without"),
        ] {
            let err = check_pickle(bytes).unwrap_err();
            assert!(err.why.contains(why), "{bytes:?}: {err}");
        }
    }

    #[test]
    fn a_dict_of_tensors_as_torch_writes_it_passes() {
        // {'w': _rebuild_tensor_v2(persistent_load(('storage', FloatStorage, '0', 'cpu', 4)),
        //   0, (2, 2), (2, 1), False, OrderedDict())}
        let mut b = vec![0x80, 2, b'}', b'q', 0, b'(', b'X', 1, 0, 0, 0, b'w'];
        b.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01(");
        b.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000");
        b.extend(b"X\x03\x00\x00\x00cpuK\x04tQ");
        b.extend(b"K\x00K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)R");
        b.extend(b"tRu.");
        assert_eq!(check_pickle(&b), Ok(()));
    }
}
