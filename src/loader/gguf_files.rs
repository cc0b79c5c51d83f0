//! The file or files of one GGUF model. llama.cpp's `gguf-split` (and the Hub's larger GGUF
//! repositories, Qwen's own among them) split a model into `<name>-00001-of-0000N.gguf`, ...:
//! each part a GGUF file of its own tensors, the first holding the model's metadata, every
//! part `split.no`, `split.count` and (the first) `split.tensors.count`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use super::LoadError;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// One file's reader and its own tensors (offsets into its data section).
struct Part {
    path: PathBuf,
    reader: Mutex<BufReader<File>>,
    content: Content,
}

pub(crate) struct GgufFiles {
    /// The first part's metadata and every part's tensor infos (offsets meaningful only
    /// within their part).
    pub content: Content,
    /// The model's name: the file's, without a part's `-0000k-of-0000n`.
    pub name: String,
    parts: Vec<Part>,
    part_of: HashMap<String, usize>,
}

impl GgufFiles {
    /// `path` and, when it is one part of a split model, the other parts beside it.
    pub(crate) fn open(path: &Path) -> Result<Self, LoadError> {
        let first = read_part(path, "not a GGUF file (pass a .gguf file, a Hugging Face model folder or a Hub repo id)")?;
        // llama.cpp's merge writes `split.count` 0 into the merged file: 0 and 1 are one file.
        let count = split_field(&first.content, "split.count").map_err(|r| format(path, r))?.unwrap_or(1).max(1);
        if count > u16::MAX as usize {
            return Err(format(path, format!("`split.count` {count} is more parts than llama.cpp writes ({})", u16::MAX)));
        }
        let mut parts = if count == 1 {
            vec![first]
        } else {
            let paths = part_paths(path, count).ok_or_else(|| {
                format(path, format!("one part of a model split in {count} (`split.count`), but its name is not `<name>-<part>-of-{count:05}.gguf`, so the other parts cannot be found"))
            })?;
            let mut parts = Vec::with_capacity(count);
            for (i, p) in paths.iter().enumerate() {
                let part = if *p == first.path {
                    None
                } else if p.is_file() {
                    Some(read_part(p, "not a GGUF file")?)
                } else {
                    return Err(format(path, format!("part {} of {count}, {}, is missing", i + 1, p.display())));
                };
                parts.push(part);
            }
            let mut first = Some(first);
            parts.into_iter().map(|p| p.or_else(|| first.take()).expect("the given part is one of the paths")).collect()
        };
        for (i, part) in parts.iter().enumerate().filter(|_| count > 1) {
            let no = split_field(&part.content, "split.no").map_err(|r| format(&part.path, r))?.unwrap_or(0);
            let c = split_field(&part.content, "split.count").map_err(|r| format(&part.path, r))?.unwrap_or(1);
            if (no, c) != (i, count) {
                return Err(format(&part.path, format!("says it is part {} of {c}; expected part {} of {count}", no + 1, i + 1)));
            }
        }
        let mut part_of = HashMap::new();
        let mut tensor_infos = HashMap::new();
        for (i, part) in parts.iter().enumerate() {
            for (name, info) in &part.content.tensor_infos {
                if part_of.insert(name.clone(), i).is_some() {
                    return Err(format(&part.path, format!("tensor `{name}` is also in another part")));
                }
                tensor_infos.insert(name.clone(), TensorInfo { ggml_dtype: info.ggml_dtype, shape: info.shape.clone(), offset: info.offset });
            }
        }
        let metadata = std::mem::take(&mut parts[0].content.metadata);
        if count > 1 {
            let declared = metadata.get("split.tensors.count").and_then(as_count);
            if declared.is_some_and(|n| n != tensor_infos.len()) {
                return Err(format(path, format!("`split.tensors.count` says {} tensors, the {count} parts hold {}", declared.unwrap_or(0), tensor_infos.len())));
            }
        }
        let content = Content { magic: parts[0].content.magic, metadata, tensor_infos, tensor_data_offset: 0 };
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A part's name (checked by `part_paths` above) less its `-0000k-of-0000n`.
        let name = match file.strip_suffix(".gguf").and_then(split_part_name) {
            Some((base, ..)) if count > 1 => format!("{base}.gguf"),
            _ => file,
        };
        Ok(Self { content, name, parts, part_of })
    }

    pub(crate) fn tensor(&self, name: &str, device: &Device) -> candle_core::Result<QTensor> {
        let part = &self.parts[*self.part_of.get(name).ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{name}`")))?];
        let mut reader = part.reader.lock().unwrap_or_else(|p| p.into_inner());
        part.content.tensor(&mut *reader, name, device)
    }
}

fn format(path: &Path, reason: String) -> LoadError {
    LoadError::Format { path: path.to_path_buf(), reason }
}

fn read_part(path: &Path, not_gguf: &str) -> Result<Part, LoadError> {
    let io = |source| LoadError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut magic = [0u8; 4];
    if reader.read_exact(&mut magic).is_err() || &magic != GGUF_MAGIC {
        return Err(format(path, not_gguf.into()));
    }
    reader.rewind().map_err(io)?;
    let content = Content::read(&mut reader).map_err(|e| format(path, format!("corrupt GGUF header: {e}")))?;
    let file_len = std::fs::metadata(path).map_err(io)?.len();
    check_tensor_extents(&content, file_len).map_err(|r| format(path, r))?;
    Ok(Part { path: path.to_path_buf(), reader: Mutex::new(reader), content })
}

/// A truncated file would otherwise fail deep inside a tensor read.
fn check_tensor_extents(content: &Content, file_len: u64) -> Result<(), String> {
    for (name, info) in &content.tensor_infos {
        let numel = info.shape.elem_count() as u64;
        let bytes = numel / info.ggml_dtype.block_size() as u64 * info.ggml_dtype.type_size() as u64;
        let end = content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
        if end > file_len {
            return Err(format!("truncated: tensor `{name}` ends at byte {end}, the file has {file_len}"));
        }
    }
    Ok(())
}

fn as_count(v: &Value) -> Option<usize> {
    match *v {
        Value::U8(x) => Some(x as usize),
        Value::U16(x) => Some(x as usize),
        Value::U32(x) => Some(x as usize),
        Value::I16(x) => usize::try_from(x).ok(),
        Value::I32(x) => usize::try_from(x).ok(),
        _ => None,
    }
}

fn split_field(content: &Content, key: &str) -> Result<Option<usize>, String> {
    content.metadata.get(key).map(|v| as_count(v).ok_or(format!("`{key}` is not a count: {v:?}"))).transpose()
}

/// `(name, k, n)` of a part's file stem `<name>-<k>-of-<n>`, numbers of five digits as
/// llama.cpp writes them; `None` for any other stem.
pub(crate) fn split_part_name(stem: &str) -> Option<(&str, usize, usize)> {
    let number = |s: &str| if s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None };
    let (rest, of) = stem.rsplit_once("-of-")?;
    let (name, k) = rest.rsplit_once('-')?;
    Some((name, number(k)?, number(of)?))
}

/// Every part's path, from one part's: `<name>-<k>-of-<n>.gguf`, as llama.cpp names them.
fn part_paths(path: &Path, count: usize) -> Option<Vec<PathBuf>> {
    let (name, _, n) = split_part_name(path.file_name()?.to_str()?.strip_suffix(".gguf")?)?;
    if n != count {
        return None;
    }
    Some((1..=count).map(|k| path.with_file_name(format!("{name}-{k:05}-of-{count:05}.gguf"))).collect())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::part_paths;

    #[test]
    fn parts_are_found_by_llama_cpp_names() {
        let p = Path::new("/m/qwen2.5-7b-instruct-q4_k_m-00002-of-00003.gguf");
        let want: Vec<PathBuf> = (1..=3).map(|k| PathBuf::from(format!("/m/qwen2.5-7b-instruct-q4_k_m-0000{k}-of-00003.gguf"))).collect();
        assert_eq!(part_paths(p, 3), Some(want));
        assert_eq!(part_paths(p, 2), None, "the name's count must be split.count");
        assert_eq!(part_paths(Path::new("/m/model.gguf"), 2), None);
    }
}
