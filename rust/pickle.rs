//! A restricted unpickler: pickle bytes -> an inert tree of values.
//!
//! It runs the pickle machine (protocols 0-5) but never imports or calls anything: a global is
//! kept as its `(module, name)` and a call (REDUCE, NEWOBJ, INST, OBJ) as a record of the callable
//! and its arguments. Interpreting the records (tensor rebuild functions, OrderedDict, ...) against
//! an allow-list is the caller's job (see `checkpoint.rs`).
//!
//! Values live in an arena and refer to each other by index, so shared and even cyclic
//! references (the memo) cost nothing, dropping never recurses, and memory is bounded by the
//! input: every opcode adds at most one node, and no length read from the input is allocated
//! before it is checked against the bytes that remain.

use std::collections::HashMap;

/// Index of a value in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id(u32);

/// How a record was made: the callable applied to arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// REDUCE: `callable(*args)`.
    Reduce,
    /// NEWOBJ / NEWOBJ_EX / INST / OBJ: `cls.__new__(cls, *args)`.
    NewObj,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64: its little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// Items in insertion order (later duplicates are kept; readers take the last).
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// A global reference `module.name` (two `Str` values, shared, never copied); never resolved.
    Global {
        module: Id,
        name: Id,
    },
    /// The result of a call that was not made: the callable, its argument tuple, and whatever
    /// BUILD / SETITEM(S) / APPEND(S) applied to it afterwards.
    Call {
        func: Id,
        args: Id,
        kind: CallKind,
        state: Option<Id>,
        dict_items: Vec<(Id, Id)>,
        list_items: Vec<Id>,
    },
    /// A persistent id (BINPERSID / PERSID): the loader's reference to out-of-band data.
    PersistentId(Id),
}

/// What is wrong with a pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError(pub String);

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PickleError {}

type Result<T> = std::result::Result<T, PickleError>;

/// The unpickled values; `root` is what STOP returned.
#[derive(Debug)]
pub struct Pickle {
    nodes: Vec<Value>,
    pub root: Id,
}

impl Pickle {
    pub fn get(&self, id: Id) -> &Value {
        // Ids are only made by the arena itself, so they are always in range.
        &self.nodes[id.0 as usize]
    }

    /// The `module.name` of a global, if `id` is one.
    pub fn global_name(&self, id: Id) -> Option<(&str, &str)> {
        match self.get(id) {
            Value::Global { module, name } => match (self.get(*module), self.get(*name)) {
                (Value::Str(module), Value::Str(name)) => Some((module, name)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn sequence(&self, id: Id) -> Option<&[Id]> {
        match self.get(id) {
            Value::Tuple(items) | Value::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            // Protocol 0-2 pickles written by Python 2 may use byte strings for names.
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_int(&self, id: Id) -> Option<i64> {
        match self.get(id) {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(PickleError(msg.into()))
}

/// At most this many values (about 70 bytes each): a hostile pickle of one-byte opcodes cannot
/// make us allocate more than a few GiB, and no checkpoint pickle comes near it.
const MAX_VALUES: usize = 1 << 25;

/// Parses `bytes` as one pickle.
pub fn parse(bytes: &[u8]) -> Result<Pickle> {
    Machine::new(bytes).run()
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    nodes: Vec<Value>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

impl<'a> Machine<'a> {
    fn new(input: &'a [u8]) -> Self {
        Machine {
            input,
            pos: 0,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn alloc(&mut self, value: Value) -> Result<Id> {
        if self.nodes.len() >= MAX_VALUES {
            return err(format!("pickle has more than {MAX_VALUES} values"));
        }
        let id = u32::try_from(self.nodes.len()).or_else(|_| err("pickle has too many values"))?;
        self.nodes.push(value);
        Ok(Id(id))
    }

    fn push(&mut self, value: Value) -> Result<()> {
        let id = self.alloc(value)?;
        self.stack.push(id);
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.input.len());
        match end {
            Some(end) => {
                let out = &self.input[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => err(format!(
                "pickle truncated: {n} bytes wanted at offset {}",
                self.pos
            )),
        }
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length field: checked against the remaining input before anything is allocated.
    fn length(&mut self, n: u64) -> Result<usize> {
        let left = (self.input.len() - self.pos) as u64;
        if n > left {
            return err(format!(
                "pickle truncated: length {n} at offset {} exceeds the data",
                self.pos
            ));
        }
        Ok(n as usize)
    }

    /// A text line without its trailing newline (protocol 0 arguments).
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.input[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return err("pickle truncated: unterminated line");
        };
        let line = self.take(n + 1)?;
        std::str::from_utf8(&line[..n]).or_else(|_| err("pickle text argument is not UTF-8"))
    }

    fn pop(&mut self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return err(format!("pickle stack underflow at offset {}", self.pos));
        }
        self.stack
            .pop()
            .ok_or_else(|| PickleError("pickle stack underflow".into()))
    }

    fn top(&self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return err(format!("pickle stack underflow at offset {}", self.pos));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| PickleError("pickle stack underflow".into()))
    }

    /// Pops everything above the last MARK, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return err(format!("pickle MARK missing at offset {}", self.pos));
        };
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => err(format!("pickle memo key {key} not found")),
        }
    }

    /// A global named by two text lines (GLOBAL, INST).
    fn global_from_lines(&mut self, module: String, name: String) -> Result<Id> {
        let module = self.alloc(Value::Str(module))?;
        let name = self.alloc(Value::Str(name))?;
        self.alloc(Value::Global { module, name })
    }

    fn call(&mut self, func: Id, args: Id, kind: CallKind) -> Result<()> {
        self.push(Value::Call {
            func,
            args,
            kind,
            state: None,
            dict_items: Vec::new(),
            list_items: Vec::new(),
        })
    }

    fn set_items(&mut self, target: Id, pairs: Vec<(Id, Id)>) -> Result<()> {
        match &mut self.nodes[target.0 as usize] {
            Value::Dict(items)
            | Value::Call {
                dict_items: items, ..
            } => {
                items.extend(pairs);
                Ok(())
            }
            _ => err("pickle SETITEM on something that is not a dict"),
        }
    }

    fn append_items(&mut self, target: Id, values: Vec<Id>) -> Result<()> {
        match &mut self.nodes[target.0 as usize] {
            Value::List(items)
            | Value::Set(items)
            | Value::Call {
                list_items: items, ..
            } => {
                items.extend(values);
                Ok(())
            }
            _ => err("pickle APPEND on something that is not a list"),
        }
    }

    fn pairs(values: Vec<Id>) -> Result<Vec<(Id, Id)>> {
        if !values.len().is_multiple_of(2) {
            return err("pickle SETITEMS with an odd number of items");
        }
        Ok(values.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn string_value(&mut self, bytes: &[u8]) -> Result<()> {
        match std::str::from_utf8(bytes) {
            Ok(s) => self.push(Value::Str(s.to_owned())),
            Err(_) => err("pickle string is not valid UTF-8"),
        }
    }

    fn run(mut self) -> Result<Pickle> {
        loop {
            let at = self.pos;
            let op = self.byte()?;
            match op {
                // --- framing and protocol ---
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only; the opcodes follow inline.
                    let _ = self.u64()?;
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(Pickle {
                        nodes: self.nodes,
                        root,
                    });
                }
                // --- stack manipulation ---
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.stack.push(top);
                }
                // --- memo ---
                b'p' => {
                    let line = self.line()?;
                    let key = line
                        .trim()
                        .parse()
                        .or_else(|_| err("pickle PUT with a bad key"))?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = self.byte()?;
                    self.memo_put(u64::from(key))?;
                }
                b'r' => {
                    let key = self.u32()?;
                    self.memo_put(u64::from(key))?;
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    self.memo_put(key)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let key = line
                        .trim()
                        .parse()
                        .or_else(|_| err("pickle GET with a bad key"))?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let key = self.byte()?;
                    self.memo_get(u64::from(key))?;
                }
                b'j' => {
                    let key = self.u32()?;
                    self.memo_get(u64::from(key))?;
                }
                // --- constants ---
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                // --- integers ---
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a => {
                    let n = usize::from(self.byte()?);
                    let bytes = self.take(n)?;
                    self.push(long_value(bytes))?;
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return err("pickle LONG4 with a negative length");
                    }
                    let n = self.length(n as u64)?;
                    let bytes = self.take(n)?;
                    self.push(long_value(bytes))?;
                }
                b'I' => {
                    let line = self.line()?;
                    let value = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        text => text_int(text)?,
                    };
                    self.push(value)?;
                }
                b'L' => {
                    let line = self.line()?;
                    let value = text_int(line.trim_end_matches('L'))?;
                    self.push(value)?;
                }
                // --- floats ---
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?;
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line
                        .trim()
                        .parse()
                        .or_else(|_| err("pickle FLOAT is not a number"))?;
                    self.push(Value::Float(v))?;
                }
                // --- strings and bytes ---
                b'X' => {
                    let n = u64::from(self.u32()?);
                    let n = self.length(n)?;
                    let b = self.take(n)?;
                    self.string_value(b)?;
                }
                0x8c => {
                    let n = usize::from(self.byte()?);
                    let b = self.take(n)?;
                    self.string_value(b)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.length(n)?;
                    let b = self.take(n)?;
                    self.string_value(b)?;
                }
                b'V' => {
                    let line = self.line()?;
                    let text = raw_unicode_unescape(line)?;
                    self.push(Value::Str(text))?;
                }
                b'B' => {
                    let n = u64::from(self.u32()?);
                    let n = self.length(n)?;
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.to_vec()))?;
                }
                b'C' => {
                    let n = usize::from(self.byte()?);
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.to_vec()))?;
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let n = self.length(n)?;
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.to_vec()))?;
                }
                // Python 2 byte strings (protocols 0-2): kept as bytes; names decode them as ASCII.
                b'T' => {
                    let n = u64::from(self.u32()?);
                    let n = self.length(n)?;
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.to_vec()))?;
                }
                b'U' => {
                    let n = usize::from(self.byte()?);
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.to_vec()))?;
                }
                b'S' => {
                    let line = self.line()?;
                    let bytes = quoted_string(line)?;
                    self.push(Value::Bytes(bytes))?;
                }
                0x97 => return err("pickle uses out-of-band buffers (NEXT_BUFFER), not supported"),
                0x98 | 0x99 => {
                    // READONLY_BUFFER / ... : flags on the buffer on top of the stack.
                    self.top()?;
                }
                // --- containers ---
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b'}' => self.push(Value::Dict(Vec::new()))?,
                0x8f => self.push(Value::Set(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return err(format!("pickle stack underflow at offset {at}"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = Self::pairs(items)?;
                    self.push(Value::Dict(pairs))?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(items))?;
                }
                b'a' => {
                    let value = self.pop()?;
                    let list = self.top()?;
                    self.append_items(list, vec![value])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.append_items(list, items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = Self::pairs(items)?;
                    let dict = self.top()?;
                    self.set_items(dict, pairs)?;
                }
                // --- globals and calls (recorded, never performed) ---
                b'c' => {
                    let module = self.line()?.to_owned();
                    let name = self.line()?.to_owned();
                    let global = self.global_from_lines(module, name)?;
                    self.stack.push(global);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(_), Value::Str(_)) =
                        (&self.nodes[module.0 as usize], &self.nodes[name.0 as usize])
                    else {
                        return err("pickle STACK_GLOBAL with non-string names");
                    };
                    self.push(Value::Global { module, name })?;
                }
                0x82..=0x84 => return err("pickle uses the copyreg extension registry (EXT*)"),
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args, CallKind::Reduce)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args, CallKind::NewObj)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args, CallKind::NewObj)?;
                }
                b'i' => {
                    let module = self.line()?.to_owned();
                    let name = self.line()?.to_owned();
                    let items = self.pop_mark()?;
                    let cls = self.global_from_lines(module, name)?;
                    let args = self.alloc(Value::Tuple(items))?;
                    self.call(cls, args, CallKind::NewObj)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return err("pickle OBJ without a class");
                    }
                    let cls = items.remove(0);
                    let args = self.alloc(Value::Tuple(items))?;
                    self.call(cls, args, CallKind::NewObj)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    match &mut self.nodes[target.0 as usize] {
                        Value::Call { state: slot, .. } => *slot = Some(state),
                        _ => return err("pickle BUILD on something that is not an object"),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::PersistentId(pid))?;
                }
                b'P' => {
                    let line = self.line()?.to_owned();
                    let pid = self.alloc(Value::Str(line))?;
                    self.push(Value::PersistentId(pid))?;
                }
                other => {
                    return err(format!(
                        "unknown pickle opcode 0x{other:02x} at offset {at}"
                    ));
                }
            }
        }
    }
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn long_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut a = if negative { [0xFFu8; 8] } else { [0u8; 8] };
        a[..bytes.len()].copy_from_slice(bytes);
        return Value::Int(i64::from_le_bytes(a));
    }
    Value::BigInt(bytes.to_vec())
}

fn text_int(text: &str) -> Result<Value> {
    match text.trim().parse::<i64>() {
        Ok(v) => Ok(Value::Int(v)),
        Err(_) => err(format!("pickle integer {text:?} is not an int64")),
    }
}

/// Protocol 0 `S` argument: a Python repr of a byte string ('...' or "...") with escapes.
fn quoted_string(line: &str) -> Result<Vec<u8>> {
    let bytes = line.as_bytes();
    if bytes.len() < 2 || bytes[0] != bytes[bytes.len() - 1] || !matches!(bytes[0], b'\'' | b'"') {
        return err("pickle STRING argument is not quoted");
    }
    let inner = &bytes[1..bytes.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = inner.get(i) else {
            return err("pickle STRING ends in a backslash");
        };
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0' => out.push(0),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'x' => {
                let hex = inner
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(v) = v else {
                    return err("pickle STRING has a bad \\x escape");
                };
                out.push(v);
                i += 2;
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// Protocol 0 `V` argument: raw-unicode-escape (only \uXXXX and \UXXXXXXXX are escapes).
fn raw_unicode_unescape(line: &str) -> Result<String> {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            let width = match line.as_bytes().get(i + 1) {
                Some(b'u') => 4,
                Some(b'U') => 8,
                _ => 0,
            };
            if width > 0 {
                let hex = line.get(i + 2..i + 2 + width);
                let code = hex
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32);
                let Some(code) = code else {
                    return err("pickle UNICODE has a bad escape");
                };
                out.push(code);
                for _ in 0..width + 1 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol2_object_graph() {
        // GLOBAL, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, MARK, BINUNICODE, BININT1, SETITEMS, BUILD, STOP
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"c__torch__.m\nLinear\nq\x00)\x81}(X\x01\x00\x00\x00aK\x05ub.");
        let pk = parse(&p).unwrap();
        let Value::Call {
            func,
            state: Some(state),
            kind: CallKind::NewObj,
            ..
        } = pk.get(pk.root)
        else {
            panic!("not an object: {:?}", pk.get(pk.root));
        };
        assert_eq!(pk.global_name(*func), Some(("__torch__.m", "Linear")));
        let Value::Dict(items) = pk.get(*state) else {
            panic!()
        };
        assert_eq!(pk.as_str(items[0].0), Some("a"));
        assert_eq!(pk.as_int(items[0].1), Some(5));
    }

    #[test]
    fn protocol4_opcodes() {
        // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, EMPTY_LIST, APPENDS, BINFLOAT, LONG1,
        // LONG_BINGET, TUPLE2, NEWFALSE, NONE
        let mut p = vec![0x80, 4, 0x95];
        p.extend_from_slice(&100u64.to_le_bytes());
        p.extend_from_slice(&[0x8c, 1, b'm', 0x94, 0x8c, 1, b'n', 0x94, 0x93, 0x94]);
        p.extend_from_slice(&[b']', 0x94, b'(', b'G']);
        p.extend_from_slice(&1.5f64.to_be_bytes());
        p.extend_from_slice(&[0x8a, 2, 0xff, 0x7f, b'j']);
        p.extend_from_slice(&2u32.to_le_bytes());
        p.extend_from_slice(&[0x89, b'N', b'e', 0x86, b'.']);
        let pk = parse(&p).unwrap();
        let items = pk.sequence(pk.root).unwrap();
        assert_eq!(pk.global_name(items[0]), Some(("m", "n")));
        let list = pk.sequence(items[1]).unwrap();
        assert_eq!(pk.get(list[0]), &Value::Float(1.5));
        assert_eq!(pk.as_int(list[1]), Some(0x7fff));
        assert_eq!(pk.global_name(list[2]), Some(("m", "n")));
        assert_eq!(pk.get(list[3]), &Value::Bool(false));
        assert_eq!(pk.get(list[4]), &Value::None);
    }

    #[test]
    fn integers() {
        assert_eq!(long_value(&[0xff]), Value::Int(-1));
        assert_eq!(long_value(&[0x00, 0x80]), Value::Int(-32768));
        assert_eq!(long_value(&[]), Value::Int(0));
        assert!(matches!(long_value(&[1; 9]), Value::BigInt(_)));
        let pk = parse(b"J\xff\xff\xff\xff.").unwrap();
        assert_eq!(pk.as_int(pk.root), Some(-1));
        let pk = parse(b"I-42\n.").unwrap();
        assert_eq!(pk.as_int(pk.root), Some(-42));
        let pk = parse(b"I01\n.").unwrap();
        assert_eq!(pk.get(pk.root), &Value::Bool(true));
    }

    #[test]
    fn protocol0_text() {
        let pk = parse(b"(S'a\\nb'\np0\nVx\\u00e9\ng0\nF2.5\nL7L\ntp1\n.").unwrap();
        let items = pk.sequence(pk.root).unwrap();
        assert_eq!(pk.get(items[0]), &Value::Bytes(b"a\nb".to_vec()));
        assert_eq!(pk.as_str(items[1]), Some("x\u{e9}"));
        assert_eq!(pk.get(items[2]), &Value::Bytes(b"a\nb".to_vec()));
        assert_eq!(pk.get(items[3]), &Value::Float(2.5));
        assert_eq!(pk.as_int(items[4]), Some(7));
    }

    #[test]
    fn reduce_records_without_calling() {
        let pk = parse(b"cos\nsystem\nX\x04\x00\x00\x00echo\x85R.").unwrap();
        let Value::Call {
            func,
            args,
            kind: CallKind::Reduce,
            ..
        } = pk.get(pk.root)
        else {
            panic!()
        };
        assert_eq!(pk.global_name(*func), Some(("os", "system")));
        assert_eq!(pk.sequence(*args).map(<[Id]>::len), Some(1));
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            &b""[..],
            b"(",
            b"X\xff\xff\xff\xff",
            b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff",
            b"h\x05.",
            b"0.",
            b"t.",
            b"N\x85\x85R.",
            b"\x80\x09.",
            b"\xfe",
            b"}Ns.",
            b"\x82\x01.",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic xorshift stream of bytes, biased towards opcodes.
        let ops = b"()0123NJKMGXCBhjqr]}}tlduesabcR\x81\x85\x86\x87\x88\x89\x8a\x8c\x93\x94\x95Q.";
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..3000 {
            let mut data = Vec::new();
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let b = (state >> 24) as u8;
                data.push(if b & 1 == 0 {
                    ops[(b as usize / 2) % ops.len()]
                } else {
                    b
                });
            }
            let _ = parse(&data);
        }
    }

    #[test]
    fn deep_self_reference_is_harmless() {
        // A list appended into itself: a cycle in the arena, no recursion anywhere.
        let pk = parse(b"]q\x00h\x00a.").unwrap();
        let list = pk.sequence(pk.root).unwrap();
        assert_eq!(list[0], pk.root);
    }
}
