//! Interprets torch's pickles against an allow-list: tensor rebuild functions, storage types,
//! dtypes and `collections.OrderedDict`. Anything else stays an inert record; where one stands
//! in place of a weight the file is refused with `UnsafeCheckpointError`, naming it.

use super::{Dtype, Storage, Tensor};
use crate::error::{Error, Result};
use crate::pickle::{Id, Pickle, Value};
use crate::zip::{Archive, Method};
use std::collections::HashMap;
use std::path::Path;

/// How deep wrappers may nest (`_rebuild_parameter(_rebuild_from_type_v2(...))`, dict wrappers).
const MAX_DEPTH: usize = 8;

/// Globals this reader understands. Everything else is foreign: recorded, never called.
fn is_allowed(module: &str, name: &str) -> bool {
    match module {
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor"
                | "_rebuild_tensor_v2"
                | "_rebuild_tensor_v3"
                | "_rebuild_parameter"
                | "_rebuild_parameter_with_state"
        ),
        "torch._tensor" => matches!(name, "_rebuild_from_type_v2" | "Tensor"),
        "torch.nn.parameter" => name == "Parameter",
        "collections" => name == "OrderedDict",
        "torch" | "torch.cuda" | "torch.storage" => {
            name == "UntypedStorage"
                || name == "Tensor"
                || Dtype::from_storage_name(name).is_some()
                || (module == "torch" && Dtype::from_torch_name(name).is_some())
        }
        // TorchScript module classes are inert records interpreted through their code/ entries.
        m => m == "__torch__" || m.starts_with("__torch__."),
    }
}

/// torch's own rebuild functions for tensors this reader does not support: data, not code, so
/// they are a plain `CheckpointError` rather than an unsafe global.
fn is_unsupported_tensor_kind(global: &str) -> bool {
    global.starts_with("torch._utils._rebuild_")
        || global.starts_with("torch._tensor._rebuild_")
        || global.starts_with("torch.nested._internal.")
}

/// What reading a pickle may produce (names, shapes, module visits), in bytes per byte of the
/// pickle plus a fixed allowance: values the pickle shares through its memo (one shape tuple for
/// many tensors, one module reached from many parents, one long slot name at every level) must
/// not multiply into output far larger than the file. Real checkpoints use well under 4.
const WORK_PER_BYTE: usize = 16;
const WORK_ALLOWANCE: usize = 1 << 20;

/// Turns the records of one pickle into tensors over the storages of one zip archive.
pub struct Rebuilder<'a> {
    path: &'a Path,
    pub pickle: &'a Pickle,
    archive: &'a Archive<'a>,
    root: &'a str,
    storages: Vec<Storage>,
    by_key: HashMap<String, usize>,
    /// What may still be produced (see WORK_PER_BYTE).
    work_left: usize,
}

impl<'a> Rebuilder<'a> {
    /// `pickle_len`: the size of the pickle's bytes, which bounds what reading it may produce.
    pub fn new(
        path: &'a Path,
        pickle: &'a Pickle,
        archive: &'a Archive<'a>,
        root: &'a str,
        pickle_len: usize,
    ) -> Self {
        Rebuilder {
            path,
            pickle,
            archive,
            root,
            storages: Vec::new(),
            by_key: HashMap::new(),
            work_left: pickle_len
                .saturating_mul(WORK_PER_BYTE)
                .saturating_add(WORK_ALLOWANCE),
        }
    }

    /// Counts `amount` bytes of output (or work) against the pickle's allowance.
    pub fn charge(&mut self, amount: usize) -> Result<()> {
        match self.work_left.checked_sub(amount) {
            Some(left) => {
                self.work_left = left;
                Ok(())
            }
            None => Err(self.fail(
                "the pickle describes far more names, shapes or modules than its size allows \
                 (shared records repeated: a damaged or crafted file)",
            )),
        }
    }

    pub fn path(&self) -> &Path {
        self.path
    }

    pub fn into_storages(self) -> Vec<Storage> {
        self.storages
    }

    fn fail(&self, msg: impl Into<String>) -> Error {
        Error::checkpoint(self.path, msg)
    }

    /// `module.name` of the global `id` is, or that `id` calls, when it is outside the allow-list.
    pub fn foreign_name(&self, id: Id) -> Option<String> {
        let global = match self.pickle.get(id) {
            Value::Global { .. } => id,
            Value::Call { func, .. } => *func,
            _ => return None,
        };
        match self.pickle.global_name(global) {
            Some((m, n)) if is_allowed(m, n) => None,
            Some((m, n)) => Some(format!("{m}.{n}")),
            None => Some("a call of a computed object".to_owned()),
        }
    }

    /// A short description of a value for error messages.
    pub fn describe(&self, id: Id) -> String {
        match self.pickle.get(id) {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Set(_) => "a set".into(),
            Value::PersistentId(_) => "a bare storage".into(),
            Value::Global { .. } => match self.pickle.global_name(id) {
                Some((m, n)) => format!("the global {m}.{n}"),
                None => "a global".into(),
            },
            Value::Call { func, .. } => match self.pickle.global_name(*func) {
                Some(("collections", "OrderedDict")) => "a dict".into(),
                Some((m, n)) => format!("an object made by {m}.{n}"),
                None => "an object".into(),
            },
        }
    }

    /// The items of a dict or OrderedDict, keys deduplicated as Python does (last value wins,
    /// first position kept); None when `id` is not a dict.
    pub fn dict_items(&self, id: Id) -> Option<Vec<(Id, Id)>> {
        let items = match self.pickle.get(id) {
            Value::Dict(items) => items,
            Value::Call {
                func, dict_items, ..
            } if self.pickle.global_name(*func) == Some(("collections", "OrderedDict")) => {
                dict_items
            }
            _ => return None,
        };
        let mut out: Vec<(Id, Id)> = Vec::with_capacity(items.len());
        let mut index: HashMap<DictKey<'_>, usize> = HashMap::with_capacity(items.len());
        for &(k, v) in items {
            match index.get(&self.key_of(k)) {
                Some(&i) => out[i].1 = v,
                None => {
                    index.insert(self.key_of(k), out.len());
                    out.push((k, v));
                }
            }
        }
        Some(out)
    }

    fn key_of(&self, id: Id) -> DictKey<'a> {
        let pickle: &'a Pickle = self.pickle;
        match pickle.get(id) {
            Value::Str(s) => DictKey::Str(s),
            Value::Int(i) => DictKey::Int(*i),
            _ => DictKey::Other(id),
        }
    }

    /// The tensor `id` rebuilds, or None when it is not a tensor rebuild call.
    pub fn tensor(&mut self, id: Id, name: &str) -> Result<Option<Tensor>> {
        let tensor = self.tensor_at(id, name, 0)?;
        if let Some(t) = &tensor {
            self.charge(64 + name.len() + 16 * t.shape.len())?;
        }
        Ok(tensor)
    }

    fn tensor_at(&mut self, id: Id, name: &str, depth: usize) -> Result<Option<Tensor>> {
        if depth > MAX_DEPTH {
            return Err(self.fail(format!("tensor {name:?}: rebuild calls nest too deeply")));
        }
        let Value::Call { func, args, .. } = self.pickle.get(id) else {
            return Ok(None);
        };
        self.rebuild(*func, *args, name, depth)
    }

    fn rebuild(&mut self, func: Id, args: Id, name: &str, depth: usize) -> Result<Option<Tensor>> {
        let Some((module, fname)) = self.pickle.global_name(func) else {
            return Ok(None);
        };
        let pickle = self.pickle;
        let Some(args) = pickle.sequence(args) else {
            return Err(self.fail(format!(
                "tensor {name:?}: {module}.{fname} without an argument tuple"
            )));
        };
        let arg = |i: usize| -> Result<Id> {
            args.get(i).copied().ok_or_else(|| {
                Error::checkpoint(
                    self.path,
                    format!("tensor {name:?}: {module}.{fname} has too few arguments"),
                )
            })
        };
        match (module, fname) {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
                let dtype = if fname == "_rebuild_tensor_v3" {
                    let dtype_id = arg(6)?;
                    Some(self.dtype_global(dtype_id, name)?)
                } else {
                    None
                };
                let requires_grad = match fname {
                    "_rebuild_tensor" => false,
                    _ => self.pickle.get(arg(4)?) == &Value::Bool(true),
                };
                let (storage, storage_dtype) = self.storage(arg(0)?, dtype, name)?;
                let storage_offset = self.int(arg(1)?, name, "storage offset")?;
                let shape = self.ints(arg(2)?, name, "size")?;
                let stride = self.ints(arg(3)?, name, "stride")?;
                let tensor = Tensor {
                    name: name.to_owned(),
                    dtype: storage_dtype,
                    shape,
                    stride,
                    storage,
                    storage_offset,
                    requires_grad,
                    is_parameter: false,
                };
                self.check_bounds(&tensor)?;
                Ok(Some(tensor))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                let data = arg(0)?;
                let requires_grad = self.pickle.get(arg(1)?) == &Value::Bool(true);
                let inner = self.tensor_at(data, name, depth + 1)?;
                let Some(mut tensor) = inner else {
                    return Err(self.not_a_tensor(data, name));
                };
                tensor.is_parameter = true;
                tensor.requires_grad = requires_grad;
                Ok(Some(tensor))
            }
            ("torch._tensor", "_rebuild_from_type_v2") => {
                // (func, new_type, args, state): `func(*args)` viewed as `new_type`.
                let new_type = arg(1)?;
                let is_parameter = match self.pickle.global_name(new_type) {
                    Some(("torch._tensor", "Tensor") | ("torch", "Tensor")) => false,
                    Some(("torch.nn.parameter", "Parameter")) => true,
                    _ => return Err(self.not_a_tensor(new_type, name)),
                };
                let inner = self.rebuild(arg(0)?, arg(2)?, name, depth + 1)?;
                let Some(mut tensor) = inner else {
                    return Err(self.not_a_tensor(arg(0)?, name));
                };
                tensor.is_parameter |= is_parameter;
                Ok(Some(tensor))
            }
            _ => Ok(None),
        }
    }

    /// The error for `id` found where tensor `name` should be: unsafe when it names code.
    pub fn not_a_tensor(&self, id: Id, name: &str) -> Error {
        match self.foreign_name(id) {
            Some(global) if is_unsupported_tensor_kind(&global) => self.fail(format!(
                "{name:?} is a tensor kind clipfast does not read ({global}: quantized, sparse, \
                 meta or nested tensors are not supported)"
            )),
            Some(global) => Error::unsafe_global(
                self.path,
                format!(
                    "{name:?} is {global} (a global outside the allow-list) where a tensor should \
                     be; clipfast never imports or calls it. Load the file with \
                     weights_only=False (torch's unpickler) only if you trust it"
                ),
            ),
            None => self.fail(format!("{name:?} is {}, not a tensor", self.describe(id))),
        }
    }

    fn int(&self, id: Id, name: &str, what: &str) -> Result<i64> {
        match self.pickle.as_int(id) {
            Some(v) if v >= 0 => Ok(v),
            _ => Err(self.fail(format!("tensor {name:?}: {what} is not a non-negative int"))),
        }
    }

    fn ints(&self, id: Id, name: &str, what: &str) -> Result<Vec<i64>> {
        let Some(items) = self.pickle.sequence(id) else {
            return Err(self.fail(format!("tensor {name:?}: {what} is not a tuple")));
        };
        items.iter().map(|&i| self.int(i, name, what)).collect()
    }

    fn dtype_global(&self, id: Id, name: &str) -> Result<Dtype> {
        match self.pickle.global_name(id) {
            Some(("torch", dtype)) => Dtype::from_torch_name(dtype).ok_or_else(|| {
                self.fail(format!("tensor {name:?}: unsupported dtype torch.{dtype}"))
            }),
            _ => Err(self.not_a_tensor(id, name)),
        }
    }

    /// Resolves a persistent id `('storage', type, key, location, numel)` to a storage index
    /// and the element type of the tensor (`dtype` overrides an untyped storage's bytes).
    fn storage(&mut self, id: Id, dtype: Option<Dtype>, name: &str) -> Result<(usize, Dtype)> {
        let pickle = self.pickle;
        let Value::PersistentId(pid) = pickle.get(id) else {
            return Err(match self.foreign_name(id) {
                Some(_) => self.not_a_tensor(id, name),
                None => self.fail(format!("tensor {name:?}: storage is {}", self.describe(id))),
            });
        };
        let fields = pickle.sequence(*pid).unwrap_or(&[]);
        let bad = || {
            Error::checkpoint(
                self.path,
                format!("tensor {name:?}: malformed storage reference"),
            )
        };
        if fields.len() != 5 || pickle.as_str(fields[0]) != Some("storage") {
            return Err(bad());
        }
        let typed = match pickle.global_name(fields[1]) {
            Some(("torch" | "torch.storage", "UntypedStorage")) => Dtype::U8,
            Some(("torch" | "torch.cuda", storage)) => Dtype::from_storage_name(storage)
                .ok_or_else(|| {
                    self.fail(format!(
                        "tensor {name:?}: unsupported storage type {storage}"
                    ))
                })?,
            _ => return Err(self.not_a_tensor(fields[1], name)),
        };
        let key = pickle.as_str(fields[2]).ok_or_else(bad)?;
        let numel = self.int(fields[4], name, "storage size")?;
        let nbytes = (numel as u64)
            .checked_mul(typed.itemsize() as u64)
            .ok_or_else(|| self.fail(format!("tensor {name:?}: storage size overflows")))?;
        let dtype = dtype.unwrap_or(typed);
        if let Some(&index) = self.by_key.get(key) {
            let storage = &self.storages[index];
            if storage.dtype != dtype && !storage.bytes.is_empty() {
                return Err(self.fail(format!(
                    "tensor {name:?}: storage {key} is viewed as both {} and {} (not supported)",
                    storage.dtype.torch_name(),
                    dtype.torch_name()
                )));
            }
            return Ok((index, storage.dtype));
        }
        let record = format!("{}data/{key}", self.root);
        let Some(entry) = self.archive.get(&record) else {
            return Err(self.fail(format!("tensor {name:?}: record {record} is missing")));
        };
        if entry.method != Method::Stored {
            return Err(self.fail(format!(
                "record {record} is compressed; torch stores tensor data uncompressed"
            )));
        }
        if nbytes > entry.data.len() as u64 {
            return Err(self.fail(format!(
                "record {record} holds {} bytes, the tensor's storage needs {nbytes} (truncated?)",
                entry.data.len()
            )));
        }
        let start = entry.data.start;
        let index = self.storages.len();
        self.storages.push(Storage {
            key: format!("data/{key}"),
            dtype,
            bytes: start..start + nbytes as usize,
        });
        self.by_key.insert(key.to_owned(), index);
        Ok((index, dtype))
    }

    /// The view must lie inside its storage, as `Tensor.set_` requires.
    fn check_bounds(&self, t: &Tensor) -> Result<()> {
        if t.shape.len() != t.stride.len() {
            return Err(self.fail(format!(
                "tensor {:?}: size and stride differ in length",
                t.name
            )));
        }
        let storage = &self.storages[t.storage];
        let capacity = (storage.bytes.len() / t.dtype.itemsize()) as i128;
        if t.shape.contains(&0) {
            return Ok(());
        }
        let mut last = i128::from(t.storage_offset);
        for (&n, &s) in t.shape.iter().zip(&t.stride) {
            last += i128::from(n - 1) * i128::from(s);
        }
        if last >= capacity || last > i128::from(i64::MAX) {
            return Err(self.fail(format!(
                "tensor {:?}: view (offset {}, size {:?}, stride {:?}) exceeds its storage {} of {} elements",
                t.name, t.storage_offset, t.shape, t.stride, storage.key, capacity
            )));
        }
        Ok(())
    }

    /// The state dict of a `torch.save` pickle: the root dict of tensors, or the one under
    /// "state_dict" / "model" (training checkpoints), with every value a tensor.
    pub fn state_dict(&mut self) -> Result<Vec<Tensor>> {
        let pickle = self.pickle;
        let mut items = self.root_items(pickle.root)?;
        for _ in 0..MAX_DEPTH {
            let mut wrapped = None;
            for key in ["state_dict", "model"] {
                let Some(&(_, v)) = items.iter().find(|(k, _)| pickle.as_str(*k) == Some(key))
                else {
                    continue;
                };
                if let Some(inner) = self.dict_items(v) {
                    wrapped = Some(inner);
                    break;
                }
                if let Some(global) = self.foreign_name(v) {
                    // The weights are inside an object of the training framework's own class.
                    return Err(Error::unsafe_global(
                        self.path,
                        format!(
                            "{key:?} is {global} (a global outside the allow-list) where a dict \
                             of tensors should be; clipfast never imports or calls it. Load the \
                             file with weights_only=False (torch's unpickler) only if you trust it"
                        ),
                    ));
                }
            }
            match wrapped {
                Some(inner) => items = inner,
                None => break,
            }
        }
        let mut tensors = Vec::with_capacity(items.len());
        for (k, v) in items {
            let Some(key) = pickle.as_str(k) else {
                return Err(self.fail(format!("state dict key is {}, not a str", self.describe(k))));
            };
            match self.tensor(v, key)? {
                Some(t) => tensors.push(t),
                None => return Err(self.not_a_tensor(v, key)),
            }
        }
        Ok(tensors)
    }

    fn root_items(&self, root: Id) -> Result<Vec<(Id, Id)>> {
        if let Some(items) = self.dict_items(root) {
            return Ok(items);
        }
        Err(match self.foreign_name(root) {
            Some(global) => Error::unsafe_global(
                self.path,
                format!(
                    "the file holds {global} (a pickled object, e.g. a whole model), not a dict of \
                     tensors; clipfast never imports or calls it. Save model.state_dict() instead"
                ),
            ),
            None => self.fail(format!(
                "the file holds {}, not a dict of tensors",
                self.describe(root)
            )),
        })
    }
}

/// A dict key as Python compares it (strings by value, borrowed from the pickle).
#[derive(Debug, PartialEq, Eq, Hash)]
enum DictKey<'p> {
    Str(&'p str),
    Int(i64),
    Other(Id),
}
