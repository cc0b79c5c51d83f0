//! Writes a GGUF model out as a Hugging Face folder (f32 safetensors, config, tokenizer,
//! template): a safetensors copy of real weights, to compare the loading paths and
//! `--quantize` against the GGUF's own types.
//!
//!   cargo run --release --example export_hf -- MODEL.gguf OUT_DIR

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gguf, out] = args.as_slice() else {
        return Err("usage: export_hf MODEL.gguf OUT_DIR".into());
    };
    std::fs::create_dir_all(out)?;
    qwen_serve::loader::export_hf_folder(gguf.as_ref(), out.as_ref())?;
    eprintln!("wrote {out}");
    Ok(())
}
