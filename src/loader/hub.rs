//! Hugging Face Hub downloads through hf-hub, into the standard cache (`HF_HOME`), with
//! `HF_TOKEN` for gated repos and `HF_HUB_OFFLINE=1` to use only what is cached.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::LoadError;

const OFFLINE_HINT: &str = "offline alternatives: pass a local .gguf file or a Hugging Face model folder \
     to --model, or set HF_HUB_OFFLINE=1 to use files already in the Hugging Face cache";

/// Downloads (or finds in the cache) the files a model folder needs; returns the snapshot dir.
pub(super) fn fetch(repo_id: &str, revision: Option<&str>) -> Result<PathBuf, LoadError> {
    let revision = revision.unwrap_or("main").to_string();
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.clone());
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    let get: Box<dyn Fn(&str) -> Result<PathBuf, String>> = if offline {
        let cache = Cache::from_env().repo(repo);
        Box::new(move |file| cache.get(file).ok_or_else(|| format!("`{file}` is not in the Hugging Face cache")))
    } else {
        // from_env honours HF_HOME and HF_ENDPOINT; HF_TOKEN takes precedence over the token file.
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| Cache::from_env().token());
        let api = ApiBuilder::from_env()
            .with_token(token)
            .with_progress(true)
            .build()
            .map_err(|e| LoadError::Hub(format!("cannot set up the Hugging Face Hub client: {e}")))?;
        let repo = api.repo(repo);
        Box::new(move |file| repo.get(file).map_err(|e| e.to_string()))
    };
    let fail = |file: &str, e: String| {
        LoadError::Hub(format!("cannot fetch `{file}` of {repo_id}@{revision} from the Hugging Face Hub ({e}); {OFFLINE_HINT}"))
    };
    let config = get("config.json").map_err(|e| fail("config.json", e))?;
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
