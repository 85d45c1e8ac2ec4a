//! What `torch.save` puts in a pickle besides plain data: storages named by persistent id
//! and the two rebuild calls (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`);
//! any other callable is refused by name.

use super::{malformed, PickleError, StorageDtype, TensorRef, Value};

/// `('storage', torch.HalfStorage, '0', 'cpu', numel)` -> a storage reference.
pub(super) fn persistent_load(pid: Value, pos: usize) -> Result<Value, PickleError> {
    let items = match pid {
        Value::Tuple(items) => items,
        other => {
            return Err(malformed(
                pos,
                &format!("persistent id is a {}", other.describe()),
            ))
        }
    };
    match items.as_slice() {
        [Value::Str(kind), Value::Global(ty), Value::Str(key), _location, _numel]
            if kind == "storage" =>
        {
            let dtype = match ty.as_str() {
                "torch.FloatStorage" => StorageDtype::F32,
                "torch.HalfStorage" => StorageDtype::F16,
                "torch.BFloat16Storage" => StorageDtype::BF16,
                "torch.DoubleStorage" => StorageDtype::F64,
                "torch.LongStorage" => StorageDtype::I64,
                "torch.IntStorage" => StorageDtype::I32,
                "torch.ShortStorage" => StorageDtype::I16,
                "torch.CharStorage" => StorageDtype::I8,
                "torch.ByteStorage" => StorageDtype::U8,
                "torch.BoolStorage" => StorageDtype::Bool,
                other => return Err(PickleError::Storage(other.to_string())),
            };
            Ok(Value::Storage {
                key: key.clone(),
                dtype,
            })
        }
        _ => Err(malformed(pos, "persistent id is not a storage tuple")),
    }
}

fn ints(v: &Value, pos: usize, what: &str) -> Result<Vec<u64>, PickleError> {
    match v {
        Value::Tuple(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) if *n >= 0 => Ok(*n as u64),
                _ => Err(malformed(pos, &format!("{what} holds a non-integer"))),
            })
            .collect(),
        _ => Err(malformed(pos, &format!("{what} is not a tuple"))),
    }
}

pub(super) fn reduce(func: Value, args: Value, pos: usize) -> Result<Value, PickleError> {
    let name = match func {
        Value::Global(name) => name,
        other => {
            return Err(malformed(
                pos,
                &format!("REDUCE calls a {}", other.describe()),
            ))
        }
    };
    let args = match args {
        Value::Tuple(a) => a,
        other => {
            return Err(malformed(
                pos,
                &format!("REDUCE arguments are a {}", other.describe()),
            ))
        }
    };
    match name.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            if args.len() < 4 {
                return Err(malformed(pos, "_rebuild_tensor_v2 needs 4+ arguments"));
            }
            let (key, dtype) = match &args[0] {
                Value::Storage { key, dtype } => (key.clone(), *dtype),
                other => {
                    return Err(malformed(
                        pos,
                        &format!("_rebuild_tensor_v2 storage is a {}", other.describe()),
                    ))
                }
            };
            let storage_offset = match args[1] {
                Value::Int(n) if n >= 0 => n as u64,
                _ => return Err(malformed(pos, "bad storage offset")),
            };
            let shape = ints(&args[2], pos, "size")?;
            let stride = ints(&args[3], pos, "stride")?;
            if shape.len() != stride.len() {
                return Err(malformed(pos, "size and stride differ in rank"));
            }
            Ok(Value::Tensor(TensorRef {
                storage_key: key,
                dtype,
                storage_offset,
                shape,
                stride,
            }))
        }
        "torch._utils._rebuild_parameter" => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err(malformed(pos, "_rebuild_parameter without a tensor")),
        },
        other => Err(PickleError::Global(other.to_string())),
    }
}
