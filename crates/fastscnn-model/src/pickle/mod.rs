//! A pickle reader for PyTorch checkpoints that trusts nothing in the file: it builds plain
//! values (no code runs: a global is a name, a call is a record of callable and arguments), and
//! refuses nesting deeper than [`MAX_DEPTH`] (so that nothing that walks or drops a value can
//! overflow the stack), more than [`MAX_NODES`] values in all, a string counting one value per
//! [`BYTES_PER_NODE`] bytes (memo reads and DUP copy, and a few bytes could otherwise ask for
//! exponentially many values or gigabytes of copied strings), lengths past the end of the data,
//! unknown opcodes, and a stack or memo used out of turn. Every error names the byte offset of its
//! opcode.
//!
//! A memo entry holds its value as it was when stored: a list or dict memoised before its items
//! were added reads back without them. PyTorch's state_dicts never read such an entry back (each
//! container is written once), so this costs them nothing and keeps every value a plain tree.

mod value;

pub use value::Value;

use std::collections::HashMap;

/// The deepest nesting accepted. A state_dict nests six or seven deep (dict, tensor rebuild
/// call, its argument tuple, the storage tuple); mmsegmentation's metadata a few more.
pub const MAX_DEPTH: u32 = 256;
/// The most values one pickle may build: a state_dict builds a few thousand.
pub const MAX_NODES: u64 = 10_000_000;
/// The bytes of a string or byte string that count as one value towards [`MAX_NODES`]: at most
/// 160 MB of strings, however often they are copied.
pub const BYTES_PER_NODE: u64 = 16;

/// Why a pickle was refused, with the byte offset of the opcode concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pickle byte {offset}: {why}")]
pub struct PickleError {
    /// Byte offset, from the start of the pickle, of the opcode that was refused.
    pub offset: usize,
    /// What was wrong, in words.
    pub why: String,
}

/// A value on the stack, with how deep it nests (a scalar is 1) and how many values it holds.
#[derive(Debug, Clone)]
struct Sized {
    value: Value,
    depth: u32,
    nodes: u64,
}

#[derive(Debug)]
enum Slot {
    Mark,
    Value(Sized),
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    op_at: usize,
    stack: Vec<Slot>,
    memo: HashMap<u64, Sized>,
    nodes: u64,
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
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.error("a text argument without its end of line"))?;
        self.at += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.error("a text argument not in UTF-8"))
    }

    fn text(&mut self, n: u64) -> Result<String, PickleError> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error("a string not in UTF-8"))
    }

    /// Pushes `make` of `parts`' values, one level deeper than the deepest of them.
    fn push_built(
        &mut self,
        parts: Vec<Sized>,
        make: impl FnOnce(Vec<Value>) -> Value,
    ) -> Result<(), PickleError> {
        let depth = 1 + parts.iter().map(|p| p.depth).max().unwrap_or(0);
        let nodes = 1 + parts.iter().map(|p| p.nodes).sum::<u64>();
        let value = make(parts.into_iter().map(|p| p.value).collect());
        self.push_sized(Sized {
            value,
            depth,
            nodes,
        })
    }

    fn push_leaf(&mut self, value: Value) -> Result<(), PickleError> {
        let bytes = match &value {
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            _ => 0,
        };
        let nodes = 1 + bytes as u64 / BYTES_PER_NODE;
        self.nodes += nodes;
        self.push_checked(Sized {
            value,
            depth: 1,
            nodes,
        })
    }

    fn push_sized(&mut self, sized: Sized) -> Result<(), PickleError> {
        self.nodes += 1;
        self.push_checked(sized)
    }

    fn push_checked(&mut self, sized: Sized) -> Result<(), PickleError> {
        if sized.depth > MAX_DEPTH {
            return Err(self.error(format!("objects nested deeper than {MAX_DEPTH} levels")));
        }
        if self.nodes > MAX_NODES {
            return Err(self.error(format!("more than {MAX_NODES} values")));
        }
        self.stack.push(Slot::Value(sized));
        Ok(())
    }

    fn pop(&mut self) -> Result<Sized, PickleError> {
        match self.stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.error("a mark where an object was expected")),
            None => Err(self.error("an object taken from an empty stack")),
        }
    }

    /// Everything down to the topmost mark, in push order (the mark is removed).
    fn pop_to_mark(&mut self) -> Result<Vec<Sized>, PickleError> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Slot::Value(v)) => items.push(v),
                Some(Slot::Mark) => {
                    items.reverse();
                    return Ok(items);
                }
                None => return Err(self.error("no mark on the stack")),
            }
        }
    }

    fn top(&self) -> Result<&Sized, PickleError> {
        match self.stack.last() {
            Some(Slot::Value(v)) => Ok(v),
            _ => Err(self.error("no object on top of the stack")),
        }
    }

    /// Adds `items` to the list (APPEND, APPENDS) or, in pairs, to the dict (SETITEM, SETITEMS)
    /// on top of the stack. A call's result (an OrderedDict, a list subclass) becomes the plain
    /// container.
    fn extend_top(&mut self, items: Vec<Sized>, pairs: bool) -> Result<(), PickleError> {
        let mut top = self.pop()?;
        let depth = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
        top.depth = top.depth.max(depth);
        top.nodes += items.iter().map(|i| i.nodes).sum::<u64>();
        let mut values = items.into_iter().map(|i| i.value);
        match (&mut top.value, pairs) {
            (Value::List(list), false) => list.extend(values),
            (Value::Dict(dict), true) => {
                while let (Some(k), Some(v)) = (values.next(), values.next()) {
                    dict.push((k, v));
                }
            }
            (Value::Call { .. }, false) => top.value = Value::List(values.collect()),
            (Value::Call { .. }, true) => {
                let mut dict = Vec::new();
                while let (Some(k), Some(v)) = (values.next(), values.next()) {
                    dict.push((k, v));
                }
                top.value = Value::Dict(dict);
            }
            _ => {
                let what = if pairs { "dict items" } else { "list items" };
                return Err(self.error(format!("{what} added to something else")));
            }
        }
        self.push_checked(top)
    }

    fn memo_get(&mut self, index: u64) -> Result<(), PickleError> {
        let sized =
            self.memo.get(&index).cloned().ok_or_else(|| {
                self.error(format!("memo entry {index} read before it is written"))
            })?;
        // A copy: count its values again.
        self.nodes += sized.nodes;
        self.push_checked(sized)
    }

    fn memo_put(&mut self, index: u64) -> Result<(), PickleError> {
        let top = self.top()?.clone();
        self.nodes += top.nodes;
        if self.nodes > MAX_NODES {
            return Err(self.error(format!("more than {MAX_NODES} values")));
        }
        self.memo.insert(index, top);
        Ok(())
    }

    fn text_index(&mut self) -> Result<u64, PickleError> {
        let line = self.line()?;
        line.trim()
            .parse()
            .map_err(|_| self.error("a memo index that is not a number"))
    }

    fn long(&mut self, n: u64) -> Result<(), PickleError> {
        let bytes = self.take(n)?;
        if bytes.len() > 8 {
            return Err(self.error("an integer wider than 64 bits"));
        }
        let mut value: i64 = 0;
        for (i, &b) in bytes.iter().enumerate() {
            value |= i64::from(b) << (8 * i);
        }
        // Sign-extend from the last byte's top bit.
        if let Some(&last) = bytes.last() {
            if last & 0x80 != 0 && bytes.len() < 8 {
                value |= -1i64 << (8 * bytes.len());
            }
        }
        self.push_leaf(Value::Int(value))
    }

    /// Runs one opcode; true at STOP.
    fn step(&mut self) -> Result<bool, PickleError> {
        self.op_at = self.at;
        let op = self.take(1)?[0];
        match op {
            b'.' => return Ok(true),
            b'(' => self.stack.push(Slot::Mark),
            b'N' => self.push_leaf(Value::None)?,
            0x88 => self.push_leaf(Value::Bool(true))?,
            0x89 => self.push_leaf(Value::Bool(false))?,
            b']' => self.push_leaf(Value::List(Vec::new()))?,
            b'}' => self.push_leaf(Value::Dict(Vec::new()))?,
            b')' => self.push_leaf(Value::Tuple(Vec::new()))?,
            // Sets are kept as lists: a checkpoint's sets hold nothing a state_dict needs.
            0x8f => self.push_leaf(Value::List(Vec::new()))?,
            b'J' => {
                let v = self.uint(4)? as u32 as i32;
                self.push_leaf(Value::Int(i64::from(v)))?
            }
            b'K' => {
                let v = self.uint(1)?;
                self.push_leaf(Value::Int(v as i64))?
            }
            b'M' => {
                let v = self.uint(2)?;
                self.push_leaf(Value::Int(v as i64))?
            }
            0x8a => {
                let n = self.uint(1)?;
                self.long(n)?
            }
            0x8b => {
                let n = self.uint(4)?;
                self.long(n)?
            }
            b'G' => {
                let bits = u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                self.push_leaf(Value::Float(f64::from_bits(bits)))?
            }
            b'X' => {
                let n = self.uint(4)?;
                let s = self.text(n)?;
                self.push_leaf(Value::Str(s))?
            }
            0x8c => {
                let n = self.uint(1)?;
                let s = self.text(n)?;
                self.push_leaf(Value::Str(s))?
            }
            0x8d => {
                let n = self.uint(8)?;
                let s = self.text(n)?;
                self.push_leaf(Value::Str(s))?
            }
            b'T' | b'B' => {
                let n = self.uint(4)?;
                let b = self.take(n)?.to_vec();
                self.push_leaf(Value::Bytes(b))?
            }
            b'U' | b'C' => {
                let n = self.uint(1)?;
                let b = self.take(n)?.to_vec();
                self.push_leaf(Value::Bytes(b))?
            }
            0x8e | 0x96 => {
                let n = self.uint(8)?;
                let b = self.take(n)?.to_vec();
                self.push_leaf(Value::Bytes(b))?
            }
            b'I' => {
                let line = self.line()?;
                let value = match line {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(
                        line.parse()
                            .map_err(|_| self.error("a text integer that is not one"))?,
                    ),
                };
                self.push_leaf(value)?
            }
            b'L' => {
                let line = self.line()?;
                let v = line
                    .trim_end_matches('L')
                    .parse()
                    .map_err(|_| self.error("a text integer that is not one"))?;
                self.push_leaf(Value::Int(v))?
            }
            b'F' => {
                let line = self.line()?;
                let v = line
                    .parse()
                    .map_err(|_| self.error("a text float that is not one"))?;
                self.push_leaf(Value::Float(v))?
            }
            b'S' | b'V' => {
                let line = self.line()?.to_string();
                self.push_leaf(Value::Str(line))?
            }
            b'P' => {
                let id = self.line()?.to_string();
                self.push_leaf(Value::Persistent(Box::new(Value::Str(id))))?
            }
            b'c' => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                self.push_leaf(Value::Global { module, name })?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module.value, name.value) {
                    (Value::Str(module), Value::Str(name)) => {
                        self.push_leaf(Value::Global { module, name })?
                    }
                    _ => return Err(self.error("STACK_GLOBAL of something other than names")),
                }
            }
            b'i' => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                let items = self.pop_to_mark()?;
                self.push_built(items, |args| Value::Call {
                    callable: Box::new(Value::Global { module, name }),
                    args: Box::new(Value::Tuple(args)),
                })?
            }
            b'o' => {
                let items = self.pop_to_mark()?;
                if items.is_empty() {
                    return Err(self.error("OBJ without a class"));
                }
                self.push_built(items, |mut values| {
                    let class = values.remove(0);
                    Value::Call {
                        callable: Box::new(class),
                        args: Box::new(Value::Tuple(values)),
                    }
                })?
            }
            0x80 => {
                self.take(1)?;
            }
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
                let top = self.top()?.clone();
                self.nodes += top.nodes;
                self.push_checked(top)?
            }
            b't' => {
                let items = self.pop_to_mark()?;
                self.push_built(items, Value::Tuple)?
            }
            b'l' | 0x91 => {
                let items = self.pop_to_mark()?;
                self.push_built(items, Value::List)?
            }
            b'd' => {
                let items = self.pop_to_mark()?;
                if items.len() % 2 != 0 {
                    return Err(self.error("DICT with an odd number of items"));
                }
                self.push_leaf(Value::Dict(Vec::new()))?;
                self.extend_top(items, true)?
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push_built(items, Value::Tuple)?
            }
            b'a' => {
                let item = self.pop()?;
                self.extend_top(vec![item], false)?
            }
            b'e' | 0x90 => {
                let items = self.pop_to_mark()?;
                self.extend_top(items, false)?
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.extend_top(vec![key, value], true)?
            }
            b'u' => {
                let items = self.pop_to_mark()?;
                if items.len() % 2 != 0 {
                    return Err(self.error("SETITEMS with an odd number of items"));
                }
                self.extend_top(items, true)?
            }
            b'b' => {
                let state = self.pop()?;
                let object = self.pop()?;
                self.push_built(vec![object, state], |mut v| {
                    let state = v.pop().expect("two values");
                    Value::Built {
                        object: Box::new(v.pop().expect("two values")),
                        state: Box::new(state),
                    }
                })?
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.push_built(vec![callable, args], call)?
            }
            0x92 => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let class = self.pop()?;
                // Keyword arguments are counted but not kept: no tensor record has them.
                self.push_built(vec![class, args, kwargs], |mut v| {
                    v.pop();
                    call(v)
                })?
            }
            b'Q' => {
                let id = self.pop()?;
                self.push_built(vec![id], |mut v| {
                    Value::Persistent(Box::new(v.pop().expect("one value")))
                })?
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
            other => {
                return Err(self.error(format!(
                    "opcode 0x{other:02x}, which no PyTorch checkpoint uses"
                )))
            }
        }
        Ok(false)
    }
}

/// A call record from `[callable, args]`.
fn call(mut parts: Vec<Value>) -> Value {
    let args = parts.pop().expect("two values");
    let callable = parts.pop().expect("two values");
    Value::Call {
        callable: Box::new(callable),
        args: Box::new(args),
    }
}

/// Reads the object `bytes` pickle: it must reach STOP with one object on the stack.
pub fn parse(bytes: &[u8]) -> Result<Value, PickleError> {
    let mut machine = Machine {
        bytes,
        at: 0,
        op_at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        nodes: 0,
    };
    loop {
        if machine.at >= bytes.len() {
            machine.op_at = machine.at;
            return Err(machine.error("the data ends before the STOP opcode"));
        }
        if machine.step()? {
            return match machine.stack.pop() {
                Some(Slot::Value(sized)) if machine.stack.is_empty() => Ok(sized.value),
                _ => Err(machine.error("STOP without exactly one object on the stack")),
            };
        }
    }
}

#[cfg(test)]
mod tests;
