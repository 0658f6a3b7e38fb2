//! Models from the Hugging Face hub. `--model ORG/NAME[@REVISION]` fetches a safetensors model
//! (`config.json`, `tokenizer.json` when the repository has one, and `model.safetensors` or
//! `model.safetensors.index.json` with its shards) and returns its snapshot directory;
//! `--model ORG/NAME[@REVISION]:FILE` (a GGUF file, e.g. `Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf`)
//! fetches that one file and returns its path. Downloads go through the hf-hub crate (feature
//! `hub`) into its cache, `$HF_HOME/hub` (default `~/.cache/huggingface/hub`, the layout Python's
//! huggingface_hub shares); a file already in the cache is used without any request.
//!
//! Environment: `HF_ENDPOINT` (default `https://huggingface.co`); `HF_TOKEN` (else the token
//! file `$HF_HOME/token`), sent as `Authorization: Bearer`; `HF_HUB_OFFLINE=1` reads the cache
//! only and never opens a connection.
//!
//! hf-hub writes a download to `blobs/<etag>.part` and renames it when the transfer has ended; the
//! `.part` file of a failed transfer is removed here, so the cache never holds part of a file, and
//! a file whose etag is a sha256 (LFS files: the weights) is checked against it before it is used.
//! Errors name the repository, the revision, the file and the HTTP status.
use anyhow::Result;
use std::path::PathBuf;

/// A model on the hub: `ORG/NAME[@REVISION][:FILE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: Option<String>,
    pub file: Option<String>,
}

impl HubId {
    /// The revision asked for (`main` by default).
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (revision {})", self.repo, self.revision())
    }
}

/// A hub repository name part: letters, digits, `-`, `_`, `.`, not starting or ending with `-` or
/// `.`, without `--` or `..`, at most 96 characters (the hub's rules).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

/// Parses `ORG/NAME[@REVISION][:FILE]`; `None` when `s` is not of that form (a path such as
/// `./x`, `/x/y` or `a/b/c` never is).
pub fn parse(s: &str) -> Option<HubId> {
    let (head, file) = match s.split_once(':') {
        Some((h, f)) => (h, Some(f)),
        None => (s, None),
    };
    let (repo, revision) = match head.split_once('@') {
        Some((r, v)) => (r, Some(v)),
        None => (head, None),
    };
    let (org, name) = repo.split_once('/')?;
    if !valid_name(org) || !valid_name(name) {
        return None;
    }
    if let Some(rev) = revision {
        let bad = rev.is_empty() || rev.contains("..") || rev.starts_with('/') || rev.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\');
        if bad {
            return None;
        }
    }
    if let Some(f) = file {
        let bad = f.is_empty() || f.contains('\\') || f.split('/').any(|c| c.is_empty() || c == "." || c == "..");
        if bad {
            return None;
        }
    }
    Some(HubId { repo: repo.to_string(), revision: revision.map(String::from), file: file.map(String::from) })
}

/// Whether `HF_HUB_OFFLINE` asks for the cache only (`1`, `true`, `yes`, `on`, any case).
#[cfg_attr(not(feature = "hub"), allow(dead_code))]
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// The local path of a hub model: its snapshot directory, or the file `FILE` names.
#[cfg(feature = "hub")]
pub fn resolve(id: &HubId) -> Result<PathBuf> {
    fetch::Hub::new(id)?.resolve()
}

#[cfg(not(feature = "hub"))]
pub fn resolve(id: &HubId) -> Result<PathBuf> {
    anyhow::bail!("{id}: this evop was built without the `hub` feature (on by default), so it cannot fetch models from the Hugging Face hub; rebuild with `--features hub`, or give a local path")
}

#[cfg(feature = "hub")]
mod fetch {
    use super::{offline, HubId};
    use anyhow::{anyhow, bail, Context, Result};
    use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
    use hf_hub::{Cache, Repo, RepoType};
    use sha2::{Digest, Sha256};
    use std::collections::BTreeSet;
    use std::io::IsTerminal;
    use std::path::{Path, PathBuf};

    const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

    pub struct Hub {
        id: HubId,
        cache: Cache,
        repo: Repo,
        endpoint: String,
        /// `None` offline.
        api: Option<Api>,
        token_set: bool,
    }

    impl Hub {
        pub fn new(id: &HubId) -> Result<Self> {
            let cache = Cache::from_env();
            let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision().to_string());
            let endpoint = std::env::var("HF_ENDPOINT")
                .ok()
                .map(|e| e.trim().trim_end_matches('/').to_string())
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
            let token = std::env::var("HF_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).or_else(|| cache.token());
            let token_set = token.is_some();
            let api = if offline() {
                None
            } else {
                let api = ApiBuilder::from_cache(cache.clone())
                    .with_endpoint(endpoint.clone())
                    .with_token(token)
                    .with_progress(std::io::stderr().is_terminal())
                    .build()
                    .map_err(|e| anyhow!("{id}: cannot set up the hub client: {e}"))?;
                Some(api)
            };
            Ok(Self { id: id.clone(), cache, repo, endpoint, api, token_set })
        }

        /// `cache/models--ORG--NAME`.
        fn repo_dir(&self) -> PathBuf {
            self.cache.path().join(self.repo.folder_name())
        }

        /// The cached copy of `file` at the revision, if any (no request).
        fn cached(&self, file: &str) -> Option<PathBuf> {
            self.cache.repo(self.repo.clone()).get(file).or_else(|| {
                // A commit hash as the revision: its snapshot, whichever ref downloaded it.
                let rev = self.id.revision();
                let commit = rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit());
                let p = self.repo_dir().join("snapshots").join(rev).join(file);
                (commit && p.exists()).then_some(p)
            })
        }

        /// `file` from the cache, or downloaded; `Ok(None)` when `optional` and the repository has
        /// no such file (HTTP 404; offline: not in the cache).
        fn get(&self, file: &str, optional: bool) -> Result<Option<PathBuf>> {
            if let Some(p) = self.cached(file) {
                return Ok(Some(p));
            }
            let Some(api) = &self.api else {
                if optional {
                    return Ok(None);
                }
                bail!(
                    "{}: {file} is not in the cache {} and HF_HUB_OFFLINE is set, so the network is not used; run once without HF_HUB_OFFLINE to download it",
                    self.id,
                    self.repo_dir().display()
                );
            };
            let blobs = self.repo_dir().join("blobs");
            let before = temporary_files(&blobs);
            eprintln!("evop: fetching {file} of {} from {}", self.id, self.endpoint);
            match api.repo(self.repo.clone()).download(file) {
                Ok(path) => {
                    self.verify(file, &path)?;
                    Ok(Some(path))
                }
                Err(e) => {
                    // A failed transfer leaves `<etag>.part` (and its lock): remove what this call
                    // created, unless another process holds the lock.
                    if !matches!(e, ApiError::LockAcquisition(_)) {
                        for p in temporary_files(&blobs).difference(&before) {
                            let _ = std::fs::remove_file(p);
                        }
                    }
                    match status(&e) {
                        Some(404) if optional => Ok(None),
                        _ => Err(self.describe(file, e)),
                    }
                }
            }
        }

        fn url(&self, file: &str) -> String {
            format!("{}/{}/resolve/{}/{file}", self.endpoint, self.id.repo, self.id.revision().replace('/', "%2F"))
        }

        /// The error of a failed download, naming the repository, revision, file and HTTP status.
        fn describe(&self, file: &str, e: ApiError) -> anyhow::Error {
            let (id, url) = (&self.id, self.url(file));
            match e {
                ApiError::RequestError(err) => match *err {
                    ureq::Error::Status(code, response) => {
                        let said = response.header("x-error-message").map_or(String::new(), |m| format!(" ({m})"));
                        let reason = response.status_text().to_string();
                        let hint = match code {
                            401 if self.token_set => "the repository is gated or private, or does not exist, and the token (HF_TOKEN) was not accepted for it: check the token and that its account has access".to_string(),
                            401 => "the repository is gated or private, or does not exist: set HF_TOKEN to an access token of an account that may read it (https://huggingface.co/settings/tokens)".to_string(),
                            403 => "the token's account has no access to this repository (a gated model: accept its conditions on its page first)".to_string(),
                            404 => format!("the repository has no {file} at revision {}", id.revision()),
                            429 => "too many requests; try again later (a token, HF_TOKEN, raises the limit)".to_string(),
                            500.. => "the hub failed; try again later".to_string(),
                            _ => String::new(),
                        };
                        let hint = if hint.is_empty() { hint } else { format!(": {hint}") };
                        anyhow!("{id}: {file}: HTTP {code} {reason} from {url}{said}{hint}")
                    }
                    // The transport error names the URL.
                    ureq::Error::Transport(t) => anyhow!(
                        "{id}: {file}: cannot download: {t}; check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache only"
                    ),
                },
                ApiError::IoError(io) => anyhow!(
                    "{id}: {file}: the download from {url} broke off ({io}); nothing of it was kept in the cache {}, run again to retry",
                    self.repo_dir().display()
                ),
                ApiError::MissingHeader(h) => {
                    anyhow!("{id}: {file}: the answer from {url} has no `{h}` header: is HF_ENDPOINT ({}) a Hugging Face hub?", self.endpoint)
                }
                other => anyhow!("{id}: {file}: {url}: {other}"),
            }
        }

        /// Checks a fresh download whose etag (its blob's name) is a sha256, as the hub gives LFS
        /// files, against its content; a mismatch removes the blob and its snapshot link.
        fn verify(&self, file: &str, pointer: &Path) -> Result<()> {
            let blob = std::fs::canonicalize(pointer).with_context(|| format!("{}: {file}: reading {}", self.id, pointer.display()))?;
            let etag = blob.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            if etag.len() != 64 || !etag.chars().all(|c| c.is_ascii_hexdigit()) {
                return Ok(());
            }
            let mut hasher = Sha256::new();
            let mut f = std::fs::File::open(&blob).with_context(|| format!("{}: {file}: reading {}", self.id, blob.display()))?;
            std::io::copy(&mut f, &mut hasher).with_context(|| format!("{}: {file}: reading {}", self.id, blob.display()))?;
            let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if got != etag {
                let _ = std::fs::remove_file(pointer);
                let _ = std::fs::remove_file(&blob);
                bail!(
                    "{}: {file}: the downloaded file's sha256 is {got}, but the hub gives {etag} ({}); it was removed from the cache, run again to retry",
                    self.id,
                    self.url(file)
                );
            }
            Ok(())
        }

        pub fn resolve(&self) -> Result<PathBuf> {
            if let Some(file) = &self.id.file {
                return Ok(self.get(file, false)?.expect("a required file or an error"));
            }
            let config = self.get("config.json", false)?.expect("a required file or an error");
            let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut files = vec![config];
            // Weights: a single file or a sharded index; the cache is asked first for both, so a
            // cached sharded model needs no request.
            let single = "model.safetensors";
            let index_name = "model.safetensors.index.json";
            let index = if let Some(p) = self.cached(single) {
                files.push(p);
                None
            } else if let Some(p) = self.cached(index_name) {
                Some(p)
            } else if let Some(p) = self.get(single, true)? {
                files.push(p);
                None
            } else {
                Some(self.get(index_name, true)?.ok_or_else(|| {
                    anyhow!(
                        "{}: neither {single} nor {index_name} is in the repository{}; for a GGUF repository name the file: {}:FILE.gguf",
                        self.id,
                        if self.api.is_none() { " cache (HF_HUB_OFFLINE is set)" } else { "" },
                        self.id.repo
                    )
                })?)
            };
            if let Some(index) = index {
                for shard in shards(&index)? {
                    files.push(self.get(&shard, false)?.expect("a required file or an error"));
                }
                files.push(index);
            }
            if let Some(tok) = self.get("tokenizer.json", true)? {
                files.push(tok);
            }
            // Every file of one snapshot: a revision that moved to another commit between two
            // requests would mix two versions of the model.
            if let Some(stray) = files.iter().find(|f| f.parent() != Some(dir.as_path())) {
                bail!(
                    "{}: {} and {} belong to different commits (the revision moved during the download); run again",
                    self.id,
                    dir.display(),
                    stray.display()
                );
            }
            Ok(dir)
        }
    }

    /// The HTTP status of a failed request, if it got one.
    fn status(e: &ApiError) -> Option<u16> {
        match e {
            ApiError::RequestError(err) => match err.as_ref() {
                ureq::Error::Status(code, _) => Some(*code),
                ureq::Error::Transport(_) => None,
            },
            _ => None,
        }
    }

    /// The `.part` and `.lock` files in a repository's `blobs/` folder.
    fn temporary_files(blobs: &Path) -> BTreeSet<PathBuf> {
        std::fs::read_dir(blobs)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "part" || x == "lock"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The shard files a `model.safetensors.index.json` names (its `weight_map` values), each a
    /// plain file name of the repository.
    fn shards(index: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{}: no `weight_map` object", index.display()))?;
        let mut names = BTreeSet::new();
        for (tensor, file) in map {
            let f = file.as_str().ok_or_else(|| anyhow!("{}: weight_map[{tensor:?}] is not a string", index.display()))?;
            if f.is_empty() || f.starts_with('/') || f.contains('\\') || f.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                bail!("{}: weight_map[{tensor:?}] = {f:?} is not a file of the repository", index.display());
            }
            names.insert(f.to_string());
        }
        if names.is_empty() {
            bail!("{}: `weight_map` is empty", index.display());
        }
        Ok(names.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse_and_paths_do_not() {
        let id = parse("Qwen/Qwen2.5-0.5B").unwrap();
        assert_eq!((id.repo.as_str(), id.revision(), id.file.as_deref()), ("Qwen/Qwen2.5-0.5B", "main", None));
        let id = parse("org/name@v1.0").unwrap();
        assert_eq!((id.repo.as_str(), id.revision.as_deref()), ("org/name", Some("v1.0")));
        let id = parse("org/name-GGUF@refs/pr/1:sub/model.Q4_K_M.gguf").unwrap();
        assert_eq!((id.revision(), id.file.as_deref()), ("refs/pr/1", Some("sub/model.Q4_K_M.gguf")));
        assert_eq!(parse("org/name:model.gguf").unwrap().file.as_deref(), Some("model.gguf"));
        for not_an_id in [
            "model.gguf", "/abs/model", "./org/name", "../org/name", "a/b/c", "org/", "/name", "org/na me", "org/-name",
            "org/name.", "org/na--me", "org/name@", "org/name:", "org/name:../x.gguf", "org/name:/x.gguf", "org/name@..:x",
            "synthetic:tiny", "C:/models/x", "~/models/x", "qwen2.5-coder-0.5b",
        ] {
            assert_eq!(parse(not_an_id), None, "{not_an_id}");
        }
    }
}
