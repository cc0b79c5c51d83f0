//! A GGUF model split into parts as llama.cpp's `gguf-split` splits it (`<name>-0000k-of-0000n.gguf`,
//! the metadata in the first part, `split.*` keys in each) loads from any part and gives the
//! logits of the whole file; a missing or mislabelled part is a load error that names it.

mod common;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use common::{quantized_model, test_gguf};
use qwen_serve::generate::score;
use qwen_serve::loader::{self, LoadOptions};

/// Writes the test GGUF as `parts` files in `dir`; `no_of(k)` is what part `k` says it is.
fn split(dir: &Path, parts: usize, no_of: impl Fn(usize) -> u16) -> Vec<PathBuf> {
    split_counted(dir, parts, parts as u16, no_of)
}

/// As [`split`], each part saying the model has `count` parts.
fn split_counted(dir: &Path, parts: usize, count: u16, no_of: impl Fn(usize) -> u16) -> Vec<PathBuf> {
    let mut reader = BufReader::new(File::open(test_gguf()).unwrap());
    let content = Content::read(&mut reader).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(&str, QTensor)> = names.iter().map(|n| (n.as_str(), content.tensor(&mut reader, n, &Device::Cpu).unwrap())).collect();
    let per_part = tensors.len().div_ceil(parts);
    let count = Value::U16(count);
    let total = Value::I32(tensors.len() as i32);
    (0..parts)
        .map(|k| {
            let path = dir.join(format!("model-{:05}-of-{parts:05}.gguf", k + 1));
            let no = Value::U16(no_of(k));
            let mut metadata: Vec<(&str, &Value)> = vec![("split.no", &no), ("split.count", &count)];
            if k == 0 {
                metadata.push(("split.tensors.count", &total));
                metadata.extend(content.metadata.iter().map(|(key, v)| (key.as_str(), v)));
            }
            let chunk: Vec<(&str, &QTensor)> = tensors.iter().skip(k * per_part).take(per_part).map(|(n, t)| (*n, t)).collect();
            gguf_file::write(&mut File::create(&path).unwrap(), &metadata, &chunk).unwrap();
            path
        })
        .collect()
}

#[test]
fn a_split_gguf_loads_from_any_part_with_the_whole_files_logits() {
    let whole = quantized_model();
    let ids = whole.tokenizer.encode("fn main() {\n    println!(\"split\");\n}").unwrap();
    let want = score(whole.model.as_ref(), &ids).unwrap().to_vec2::<f32>().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let parts = split(dir.path(), 3, |k| k as u16);
    for part in [&parts[0], &parts[2]] {
        let loaded = loader::load(part.to_str().unwrap(), &LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", part.display()));
        assert_eq!(loaded.tokenizer.encode("fn main() {\n    println!(\"split\");\n}").unwrap(), ids);
        let got = score(loaded.model.as_ref(), &ids).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got, want, "{}: the same tensors give the same bits", part.display());
        assert_eq!(loaded.chat_template.is_some(), whole.chat_template.is_some());
        assert_eq!(loaded.name, "model.gguf", "served under the model's name, not a part's");
    }

    // llama.cpp's merge leaves `split.count` 0 in the merged file: one file.
    let merged_dir = tempfile::tempdir().unwrap();
    let merged = split_counted(merged_dir.path(), 1, 0, |_| 0);
    let loaded = loader::load(merged[0].to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(score(loaded.model.as_ref(), &ids).unwrap().to_vec2::<f32>().unwrap(), want);

    // A missing part is named.
    std::fs::remove_file(&parts[1]).unwrap();
    let err = loader::load(parts[0].to_str().unwrap(), &LoadOptions::default()).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("part 2 of 3") && err.contains("model-00002-of-00003.gguf") && err.contains("missing"), "{err}");

    // A part that says it is another one.
    let dir = tempfile::tempdir().unwrap();
    let parts = split(dir.path(), 2, |_| 0);
    let err = loader::load(parts[0].to_str().unwrap(), &LoadOptions::default()).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("model-00002-of-00002.gguf") && err.contains("says it is part 1 of 2; expected part 2 of 2"), "{err}");

    // A part under another name cannot find the rest.
    let renamed = dir.path().join("renamed.gguf");
    std::fs::rename(&parts[0], &renamed).unwrap();
    let err = loader::load(renamed.to_str().unwrap(), &LoadOptions::default()).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("split in 2") && err.contains("cannot be found"), "{err}");
}
