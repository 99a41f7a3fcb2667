//! What a pickle builds: plain values, no objects.

/// A pickled value, as data.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Python's `None`.
    None,
    /// A `bool` (also protocol 0's `I01` and `I00`).
    Bool(bool),
    /// An `int` that fits in 64 bits; wider ones are refused.
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str`; protocol 0's text strings are kept as written, quotes and escapes included.
    Str(String),
    /// A `bytes` or `bytearray`, or a Python 2 binary string.
    Bytes(Vec<u8>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `list`; sets and frozensets are read as lists too.
    List(Vec<Value>),
    /// A `dict` (or an `OrderedDict` that items were added to), as key-value pairs in the order
    /// they were added.
    Dict(Vec<(Value, Value)>),
    /// `module.name`, which Python would import; here only its name.
    Global {
        /// The module path, such as `torch._utils`.
        module: String,
        /// The name within the module, such as `_rebuild_tensor_v2`.
        name: String,
    },
    /// A call Python would make (REDUCE, NEWOBJ): the callable and its arguments.
    Call {
        /// What would be called: usually a `Global`.
        callable: Box<Value>,
        /// The positional arguments, usually a `Tuple`; keyword arguments are dropped.
        args: Box<Value>,
    },
    /// A persistent id: how torch refers to a tensor's storage in the archive.
    Persistent(Box<Value>),
    /// An object whose state BUILD set.
    Built {
        /// The object before BUILD.
        object: Box<Value>,
        /// The state BUILD gives it, which Python would pass to `__setstate__` or merge into
        /// the object's `__dict__`.
        state: Box<Value>,
    },
}

impl Value {
    /// What the value is, in at most a line: its kind, its size and the start of a string, for
    /// error messages about values a file may have made arbitrarily large.
    pub fn brief(&self) -> String {
        const SHOWN: usize = 40;
        match self {
            Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) => format!("{self:?}"),
            Value::Str(s) if s.len() <= SHOWN => format!("{s:?}"),
            Value::Str(s) => {
                let end = (0..=SHOWN)
                    .rev()
                    .find(|&i| s.is_char_boundary(i))
                    .unwrap_or(0);
                format!("a string of {} bytes starting {:?}", s.len(), &s[..end])
            }
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Tuple(v) => format!("a tuple of {} items", v.len()),
            Value::List(v) => format!("a list of {} items", v.len()),
            Value::Dict(v) => format!("a dict of {} items", v.len()),
            Value::Global { module, name } => {
                let name = format!("{module}.{name}");
                if name.len() <= SHOWN {
                    name
                } else {
                    format!("a global of {} bytes", name.len())
                }
            }
            Value::Call { callable, .. } => format!("a call of {}", callable.brief()),
            Value::Persistent(_) => "a persistent id".into(),
            Value::Built { object, .. } => format!("{} with state", object.brief()),
        }
    }

    /// The text of a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of an `Int`, or of a `Bool` as 0 or 1.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The object itself, whatever state BUILD gave it.
    pub fn unbuilt(&self) -> &Value {
        match self {
            Value::Built { object, .. } => object.unbuilt(),
            other => other,
        }
    }

    /// `module.name` when this is that global.
    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global { module: m, name: n } if m == module && n == name)
    }
}
