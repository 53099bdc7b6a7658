//! TorchScript archives: the state dict `torch.jit.load(p).state_dict()` gives.
//!
//! `data.pkl` holds the module tree as `__torch__.*` objects whose state is a dict of attribute
//! slots. Which slots are parameters and buffers (and so state) is only written in the class
//! definitions under `code/`: `__parameters__ = [...]` and `__buffers__ = [...]`. Plain tensor
//! attributes (attention masks, traced constants) are not state.
//!
//! Order, as `Module.state_dict` walks a scripted module: its parameters, then its buffers, then
//! each submodule in slot order, recursively.

use super::torch_pickle::Rebuilder;
use super::Tensor;
use crate::error::{Error, Result};
use crate::pickle::{CallKind, Id, Pickle, Value};
use crate::zip::Archive;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// How deep module trees may nest (ResNets nest about 5 levels).
const MAX_DEPTH: usize = 256;

/// What the code of one module class declares.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    pub parameters: HashSet<String>,
    pub buffers: HashSet<String>,
}

/// Module classes by qualified name (`__torch__.clip.model.CLIP`).
pub type Classes = HashMap<String, ClassInfo>;

/// True when `id` is a TorchScript object (`__torch__.*` made with NEWOBJ).
pub fn is_script_module(pickle: &Pickle, id: Id) -> bool {
    match pickle.get(id) {
        Value::Call {
            func,
            kind: CallKind::NewObj,
            ..
        } => {
            matches!(pickle.global_name(*func), Some((m, _)) if m == "__torch__" || m.starts_with("__torch__."))
        }
        _ => false,
    }
}

/// Reads the class declarations of every `code/**.py` entry (deflated; `limit` bounds the total).
pub fn read_classes(path: &Path, archive: &Archive<'_>, root: &str, limit: u64) -> Result<Classes> {
    let code = format!("{root}code/");
    let mut classes = Classes::new();
    let mut budget = limit;
    for entry in archive.entries() {
        let Some(rel) = entry.name.strip_prefix(&code) else {
            continue;
        };
        let Some(module_path) = rel.strip_suffix(".py") else {
            continue;
        };
        let text = archive
            .read(entry, budget)
            .map_err(|e| Error::checkpoint(path, format!("{}: {e}", entry.name)))?;
        budget = budget.saturating_sub(text.len() as u64);
        let module = module_path.replace('/', ".");
        let text = String::from_utf8_lossy(&text);
        parse_classes(&module, &text, &mut classes);
    }
    Ok(classes)
}

/// Collects `class Name(...):` blocks with their `__parameters__` / `__buffers__` lists.
/// Only classes that declare `__parameters__` are modules.
pub fn parse_classes(module: &str, text: &str, out: &mut Classes) {
    let mut current: Option<String> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("class ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            current = Some(format!("{module}.{name}"));
            continue;
        }
        let Some(class) = &current else { continue };
        let trimmed = line.trim_start();
        let (field, rest) = if let Some(rest) = trimmed.strip_prefix("__parameters__ = ") {
            (0, rest)
        } else if let Some(rest) = trimmed.strip_prefix("__buffers__ = ") {
            (1, rest)
        } else {
            continue;
        };
        // The list may run over several lines until its closing bracket.
        let mut list = rest.to_owned();
        while !list.contains(']') {
            match lines.next() {
                Some(more) => list.push_str(more),
                None => break,
            }
        }
        let names: HashSet<String> = quoted_names(&list).into_iter().collect();
        let info = out.entry(class.clone()).or_default();
        if field == 0 {
            info.parameters = names;
        } else {
            info.buffers = names;
        }
    }
}

/// The string literals of a Python list literal like `["weight", "bias", ]`.
fn quoted_names(list: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = list;
    while let Some(start) = rest.find(['"', '\'']) {
        let quote = rest.as_bytes()[start] as char;
        let after = &rest[start + 1..];
        let Some(end) = after.find(quote) else { break };
        names.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    names
}

/// `torch.jit.load(p).state_dict()`: names and tensors in the same order.
pub fn state_dict(rebuilder: &mut Rebuilder<'_>, classes: &Classes) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    let root = rebuilder.pickle.root;
    collect(rebuilder, classes, root, "", 0, &mut out)?;
    Ok(out)
}

fn collect(
    rb: &mut Rebuilder<'_>,
    classes: &Classes,
    module: Id,
    prefix: &str,
    depth: usize,
    out: &mut Vec<Tensor>,
) -> Result<()> {
    let path = rb.path().to_path_buf();
    if depth > MAX_DEPTH {
        return Err(Error::checkpoint(
            &path,
            "TorchScript modules nest too deeply",
        ));
    }
    let pickle = rb.pickle;
    let Value::Call { func, state, .. } = pickle.get(module) else {
        return Err(Error::checkpoint(
            &path,
            format!("module {prefix:?} is not an object"),
        ));
    };
    let Some((m, n)) = pickle.global_name(*func) else {
        return Err(Error::checkpoint(
            &path,
            format!("module {prefix:?} has no class"),
        ));
    };
    let class = format!("{m}.{n}");
    // Each visit costs its work, so that a module reached from many parents (a DAG through the
    // memo: 2^depth paths) cannot make the walk exponential.
    rb.charge(64 + prefix.len() + class.len())?;
    let Some(info) = classes.get(&class) else {
        return Err(Error::checkpoint(
            &path,
            format!("class {class} has no definition under code/ (damaged TorchScript archive)"),
        ));
    };
    let slots = match state {
        Some(state) => rb.dict_items(*state).ok_or_else(|| {
            Error::checkpoint(
                &path,
                format!("module {class}: attribute state is not a dict"),
            )
        })?,
        None => Vec::new(),
    };
    let named: Vec<(&str, Id)> = slots
        .iter()
        .filter_map(|&(k, v)| pickle.as_str(k).map(|k| (k, v)))
        .collect();
    rb.charge(16 * slots.len())?;
    for list in [&info.parameters, &info.buffers] {
        for &(slot, value) in &named {
            if !list.contains(slot) || pickle.get(value) == &Value::None {
                continue;
            }
            let name = format!("{prefix}{slot}");
            let Some(mut tensor) = rb.tensor(value, &name)? else {
                return Err(rb.not_a_tensor(value, &name));
            };
            // state_dict() detaches: plain tensors, no grad.
            tensor.is_parameter = false;
            tensor.requires_grad = false;
            out.push(tensor);
        }
    }
    for &(slot, value) in &named {
        if !is_script_module(pickle, value) {
            continue;
        }
        let is_module = match pickle.get(value) {
            Value::Call { func, .. } => pickle
                .global_name(*func)
                .is_some_and(|(m, n)| classes.contains_key(&format!("{m}.{n}"))),
            _ => false,
        };
        if is_module {
            collect(
                rb,
                classes,
                value,
                &format!("{prefix}{slot}."),
                depth + 1,
                out,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_class_declarations() {
        let code = "class Linear(Module):\n  __parameters__ = [\"weight\", \"bias\", ]\n  \
                    __buffers__ = []\n  weight : Tensor\nclass Helper(object):\n  x : int\n\
                    class Block(Module):\n  __parameters__ = []\n  __buffers__ = [\"mask\",\n    \"pos\", ]\n";
        let mut classes = Classes::new();
        parse_classes("__torch__.a.___torch_mangle_3", code, &mut classes);
        let linear = &classes["__torch__.a.___torch_mangle_3.Linear"];
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<HashSet<_>>();
        assert_eq!(linear.parameters, set(&["weight", "bias"]));
        assert!(linear.buffers.is_empty());
        assert_eq!(
            classes["__torch__.a.___torch_mangle_3.Block"].buffers,
            set(&["mask", "pos"])
        );
        assert!(!classes.contains_key("__torch__.a.___torch_mangle_3.Helper"));
    }
}
