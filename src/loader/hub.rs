//! Hugging Face Hub downloads through hf-hub, into the standard cache (`HF_HOME`), with
//! `HF_TOKEN` for gated repos and `HF_HUB_OFFLINE=1` to use only what is cached.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::gguf_files::split_part_name;
use super::LoadError;

const OFFLINE_HINT: &str = "offline alternatives: pass a local .gguf file or a Hugging Face model folder \
     to --model, or set HF_HUB_OFFLINE=1 to use files already in the Hugging Face cache";

/// One repository at one revision, online or from the cache alone.
struct HubRepo {
    repo_id: String,
    revision: String,
    get: Box<dyn Fn(&str) -> Result<PathBuf, String>>,
    list: Box<dyn Fn() -> Result<Vec<String>, String>>,
}

impl HubRepo {
    fn open(repo_id: &str, revision: Option<&str>) -> Result<Self, LoadError> {
        let revision = revision.unwrap_or("main").to_string();
        let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.clone());
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
        let (get, list): (Box<dyn Fn(&str) -> Result<PathBuf, String>>, Box<dyn Fn() -> Result<Vec<String>, String>>) = if offline {
            let cache = Cache::from_env();
            let snapshots = cache.path().join(repo.folder_name());
            let refs = snapshots.join("refs").join(&revision);
            let cache = cache.repo(repo);
            let rev = revision.clone();
            (
                Box::new(move |file| cache.get(file).ok_or_else(|| format!("`{file}` is not in the Hugging Face cache"))),
                Box::new(move || {
                    // A revision is a ref (its commit in refs/) or a commit itself.
                    let commit = std::fs::read_to_string(&refs).map(|c| c.trim().to_string()).unwrap_or(rev.clone());
                    let dir = snapshots.join("snapshots").join(commit);
                    let mut files = vec![];
                    list_files(&dir, &dir, &mut files).map_err(|e| format!("the repository is not in the Hugging Face cache ({}: {e})", dir.display()))?;
                    Ok(files)
                }),
            )
        } else {
            // from_env honours HF_HOME and HF_ENDPOINT; HF_TOKEN takes precedence over the token file.
            let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| Cache::from_env().token());
            let api = ApiBuilder::from_env()
                .with_token(token)
                .with_progress(true)
                .build()
                .map_err(|e| LoadError::Hub(format!("cannot set up the Hugging Face Hub client: {e}")))?;
            let repo = std::sync::Arc::new(api.repo(repo));
            let lister = repo.clone();
            (
                Box::new(move |file| repo.get(file).map_err(|e| e.to_string())),
                Box::new(move || lister.info().map(|i| i.siblings.into_iter().map(|s| s.rfilename).collect()).map_err(|e| e.to_string())),
            )
        };
        Ok(Self { repo_id: repo_id.to_string(), revision, get, list })
    }

    fn fail(&self, file: &str, e: String) -> LoadError {
        LoadError::Hub(format!("cannot fetch `{file}` of {}@{} from the Hugging Face Hub ({e}); {OFFLINE_HINT}", self.repo_id, self.revision))
    }
}

/// Downloads (or finds in the cache) the files a model folder needs; returns the snapshot dir.
pub(super) fn fetch(repo_id: &str, revision: Option<&str>) -> Result<PathBuf, LoadError> {
    let hub = HubRepo::open(repo_id, revision)?;
    let (get, fail) = (&hub.get, |file: &str, e: String| hub.fail(file, e));
    let config = match get("config.json") {
        Ok(config) => config,
        Err(e) => {
            // A GGUF repository has no config.json: say how to pick one of its files.
            let tags = (hub.list)().map(|files| gguf_tags(&files)).unwrap_or_default();
            return Err(match tags.first() {
                Some(first) => LoadError::Hub(format!(
                    "{repo_id} holds GGUF files, not a model folder: pick one by its quantization, e.g. `{repo_id}:{first}` (available: {})",
                    tags.join(", ")
                )),
                None => fail("config.json", e),
            });
        }
    };
    get("tokenizer.json").map_err(|e| fail("tokenizer.json", e))?;
    for optional in ["tokenizer_config.json", "generation_config.json"] {
        let _ = get(optional);
    }
    match get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| fail("model.safetensors.index.json", e.to_string()))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail("model.safetensors.index.json", e.to_string()))?;
            let mut shards: Vec<String> = json["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                get(&shard).map_err(|e| fail(&shard, e))?;
            }
        }
        Err(_) => {
            get("model.safetensors").map_err(|e| fail("model.safetensors", e))?;
        }
    }
    Ok(config.parent().expect("a file in a snapshot folder").to_path_buf())
}

/// The GGUF file of `repo_id` whose name carries `tag` (a quantization, `Q4_K_M`, matched
/// case-insensitively as llama.cpp's `-hf repo:tag` matches it), every part of it when it is
/// split; returns the local path of its (first) part.
pub(super) fn fetch_gguf(repo_id: &str, tag: &str, revision: Option<&str>) -> Result<PathBuf, LoadError> {
    let hub = HubRepo::open(repo_id, revision)?;
    let files = (hub.list)().map_err(|e| hub.fail(&format!("the file list (for `:{tag}`)"), e))?;
    let chosen = choose_gguf(&files, tag).map_err(|e| LoadError::Hub(format!("{repo_id}@{}: {e}", hub.revision)))?;
    let mut first = None;
    for file in &chosen {
        let path = (hub.get)(file).map_err(|e| hub.fail(file, e))?;
        first.get_or_insert(path);
    }
    Ok(first.expect("choose_gguf returns at least one file"))
}

/// Every file under `dir`, as paths relative to `root` with `/` separators.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            list_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// The model GGUF files of a listing (projectors for images left out).
fn gguf_files(files: &[String]) -> impl Iterator<Item = &String> {
    files.iter().filter(|f| f.to_ascii_lowercase().ends_with(".gguf") && !f.to_ascii_lowercase().contains("mmproj"))
}

/// A file's name without its folder, its `-0000k-of-0000n` part suffix and `.gguf`.
fn model_name(file: &str) -> &str {
    let name = file.rsplit('/').next().unwrap_or(file);
    let stem = &name[..name.len() - ".gguf".len()];
    split_part_name(stem).map_or(stem, |(base, ..)| base)
}

/// The quantization names the GGUF files of a listing carry (the last `-` or `.` separated
/// field of each model name, upper-cased), sorted.
fn gguf_tags(files: &[String]) -> Vec<String> {
    let mut tags: Vec<String> = gguf_files(files).map(|f| model_name(f).rsplit(['-', '.']).next().unwrap_or("").to_ascii_uppercase()).filter(|t| !t.is_empty()).collect();
    tags.sort();
    tags.dedup();
    tags
}

/// The files of the one model whose name carries `tag` as a whole field, its parts in order.
fn choose_gguf(files: &[String], tag: &str) -> Result<Vec<String>, String> {
    let want = tag.to_ascii_lowercase();
    let carries = |name: &str| {
        let name = name.to_ascii_lowercase();
        name.match_indices(&want).any(|(i, m)| {
            let field = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            field(name[..i].chars().next_back()) && field(name[i + m.len()..].chars().next())
        })
    };
    let mut models: Vec<(String, Vec<String>)> = vec![];
    for file in gguf_files(files).filter(|f| !want.is_empty() && carries(model_name(f))) {
        let key = format!("{}/{}", file.rsplit_once('/').map_or("", |(dir, _)| dir), model_name(file));
        match models.iter_mut().find(|(k, _)| *k == key) {
            Some((_, parts)) => parts.push(file.clone()),
            None => models.push((key, vec![file.clone()])),
        }
    }
    match models.len() {
        1 => {
            let mut parts = models.remove(0).1;
            parts.sort();
            Ok(parts)
        }
        0 => Err(format!("no GGUF file for `{tag}`; available: {}", gguf_tags(files).join(", "))),
        _ => Err(format!("`{tag}` matches more than one model: {}", models.iter().map(|(_, p)| p[0].as_str()).collect::<Vec<_>>().join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::{choose_gguf, gguf_tags};

    fn listing(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Qwen's own GGUF repositories: one file per quantization, or parts of one.
    #[test]
    fn a_tag_picks_one_model_and_all_its_parts() {
        let files = listing(&[
            ".gitattributes",
            "README.md",
            "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf",
            "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
            "qwen2.5-7b-instruct-q4_k_s.gguf",
            "qwen2.5-7b-instruct-q8_0.gguf",
            "Q6_K/qwen2.5-7b-instruct-Q6_K-00001-of-00001.gguf",
            "mmproj-qwen2.5-f16.gguf",
        ]);
        assert_eq!(choose_gguf(&files, "Q4_K_M").unwrap(), ["qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf"]);
        assert_eq!(choose_gguf(&files, "q8_0").unwrap(), ["qwen2.5-7b-instruct-q8_0.gguf"]);
        assert_eq!(choose_gguf(&files, "q6_k").unwrap(), ["Q6_K/qwen2.5-7b-instruct-Q6_K-00001-of-00001.gguf"]);
        // A tag is a whole field: Q4_K is not Q4_K_M or Q4_K_S.
        let e = choose_gguf(&files, "Q4_K").unwrap_err();
        assert!(e.contains("no GGUF file for `Q4_K`") && e.contains("Q4_K_M, Q4_K_S, Q6_K, Q8_0"), "{e}");
        let e = choose_gguf(&files, "instruct").unwrap_err();
        assert!(e.contains("matches more than one model"), "{e}");
        assert!(choose_gguf(&files, "").is_err());
        assert_eq!(gguf_tags(&files), ["Q4_K_M", "Q4_K_S", "Q6_K", "Q8_0"]);
    }
}
