//! `--model ORG/NAME[@REVISION]` and `ORG/NAME:FILE.gguf` against a small hub started by each test:
//! an HTTP server on 127.0.0.1 serving fixture repositories in the hub's URL layout
//! (`/{org}/{name}/resolve/{revision}/{file}`, with the `etag`, `x-repo-commit`, `content-range`
//! and range answers hf-hub reads), found through `HF_ENDPOINT`, with the cache in a temporary
//! `HF_HOME`. No internet is used.
//!
//! Covered: a safetensors repository (single file and sharded) downloaded and loaded, a revision,
//! a GGUF file by name, a 404 and a gated 401 (errors naming repository, file and status), the
//! token sent as `Authorization: Bearer`, `HF_HUB_OFFLINE` (cache only, no request, a clear refusal
//! for what is not cached), an interrupted and a corrupted download (an error, and no part of the
//! file left in the cache), and a local path winning over a hub id.
#![cfg(feature = "hub")]

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evop-model/tests/fixtures").join(name)
}

/// How the server answers a download of one file (the one-byte metadata request is always
/// answered properly).
#[derive(Clone, Copy, PartialEq)]
enum Serve {
    Whole,
    /// The headers announce every byte, half are sent, then the connection is closed.
    HalfThenClose,
    /// Every byte, one of them changed.
    Corrupted,
}

#[derive(Clone)]
struct HubFile {
    bytes: Vec<u8>,
    etag: String,
    serve: Serve,
}

/// One revision of a repository.
#[derive(Clone, Default)]
struct Revision {
    commit: String,
    files: HashMap<String, HubFile>,
}

#[derive(Default)]
struct State {
    /// (repo, revision) -> files.
    repos: HashMap<(String, String), Revision>,
    /// repo -> the token it needs.
    gated: HashMap<String, String>,
    /// Every request: (path, Authorization header, Range header).
    log: Vec<(String, Option<String>, Option<String>)>,
}

struct FakeHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl FakeHub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = answer(stream, &state);
                });
            }
        });
        FakeHub { endpoint, state }
    }

    /// Adds `files` as the revision `revision` (commit `commit`) of `repo`; LFS-like files (weights,
    /// GGUF) get their sha256 as etag, others a git-like 40-digit one.
    fn add(&self, repo: &str, revision: &str, commit: &str, files: &[(&str, Vec<u8>)]) {
        let mut rev = Revision { commit: commit.to_string(), files: HashMap::new() };
        for (name, bytes) in files {
            let lfs = name.ends_with(".safetensors") || name.ends_with(".gguf");
            let etag = if lfs { sha256_hex(bytes) } else { sha256_hex(bytes)[..40].to_string() };
            rev.files.insert(name.to_string(), HubFile { bytes: bytes.clone(), etag, serve: Serve::Whole });
        }
        self.state.lock().unwrap().repos.insert((repo.to_string(), revision.to_string()), rev);
    }

    fn set_serve(&self, repo: &str, revision: &str, file: &str, serve: Serve) {
        let mut s = self.state.lock().unwrap();
        s.repos.get_mut(&(repo.to_string(), revision.to_string())).unwrap().files.get_mut(file).unwrap().serve = serve;
    }

    fn gate(&self, repo: &str, token: &str) {
        self.state.lock().unwrap().gated.insert(repo.to_string(), token.to_string());
    }

    fn requests(&self) -> Vec<(String, Option<String>, Option<String>)> {
        self.state.lock().unwrap().log.clone()
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn answer(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let (auth, range) = (headers.get("authorization").cloned(), headers.get("range").cloned());
    state.lock().unwrap().log.push((path.clone(), auth.clone(), range.clone()));
    let json = |code: &str, message: &str| {
        vec![("X-Error-Code".to_string(), code.to_string()), ("X-Error-Message".to_string(), message.to_string()), ("Content-Length".to_string(), "0".to_string())]
    };
    // /{org}/{name}/resolve/{revision}/{file...}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() != 5 || parts[2] != "resolve" {
        return respond(&mut stream, "404 Not Found", &json("RepositoryNotFound", "no such page"), b"");
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let revision = parts[3].replace("%2F", "/");
    let file = parts[4].to_string();
    let (found, gated) = {
        let s = state.lock().unwrap();
        (s.repos.get(&(repo.clone(), revision.clone())).map(|r| (r.commit.clone(), r.files.get(&file).cloned())), s.gated.get(&repo).cloned())
    };
    if let Some(token) = gated {
        if auth.as_deref() != Some(&format!("Bearer {token}")) {
            return respond(&mut stream, "401 Unauthorized", &json("GatedRepo", &format!("Access to model {repo} is restricted.")), b"");
        }
    }
    let Some((commit, Some(f))) = found else {
        return respond(&mut stream, "404 Not Found", &json("EntryNotFound", &format!("{file} does not exist on \"{revision}\"")), b"");
    };
    let total = f.bytes.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() { total - 1 } else { b.parse::<usize>().unwrap().min(total - 1) };
            (a, b)
        }
        None => (0, total - 1),
    };
    let metadata = range.as_deref() == Some("bytes=0-0");
    let mut body = f.bytes[start..=end].to_vec();
    if !metadata && f.serve == Serve::Corrupted {
        let mid = body.len() / 2;
        body[mid] ^= 0x55;
    }
    let mut h = vec![
        ("ETag".to_string(), format!("\"{}\"", f.etag)),
        ("X-Repo-Commit".to_string(), commit),
        ("Content-Length".to_string(), body.len().to_string()),
    ];
    let status = if range.is_some() {
        h.push(("Content-Range".to_string(), format!("bytes {start}-{end}/{total}")));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    if !metadata && f.serve == Serve::HalfThenClose {
        let half = body.len() / 2;
        let _ = respond(&mut stream, status, &h, &body[..half]);
        return stream.shutdown(std::net::Shutdown::Both);
    }
    respond(&mut stream, status, &h, &body)
}

/// `evop ARGS` with the hub at `endpoint` and the cache in `home`; nothing of the caller's hub
/// settings or proxies leaks in.
fn evop(endpoint: &str, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_evop"));
    c.args(args).env("HF_ENDPOINT", endpoint).env("HF_HOME", home).env("RUST_BACKTRACE", "0");
    for v in ["HF_TOKEN", "HF_HUB_OFFLINE", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        c.env_remove(v);
    }
    c
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run evop");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked"), "{cmd:?} panicked:\n{text}");
    (out.status.success(), text)
}

fn expect_ok(cmd: &mut Command) -> String {
    let (ok, text) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

fn expect_error(cmd: &mut Command, needles: &[&str]) -> String {
    let (ok, text) = run(cmd);
    assert!(!ok, "{cmd:?} succeeded:\n{text}");
    for n in needles {
        assert!(text.contains(n), "{cmd:?}: expected `{n}` in:\n{text}");
    }
    text
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// The Llama fixture as a hub repository's files.
fn llama_files() -> Vec<(&'static str, Vec<u8>)> {
    let d = fixture("llama");
    vec![("config.json", read(&d, "config.json")), ("tokenizer.json", read(&d, "tokenizer.json")), ("model.safetensors", read(&d, "model.safetensors"))]
}

const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn safetensors_repository_is_downloaded_cached_and_loaded() {
    let hub = FakeHub::start();
    hub.add("org/tiny", "main", COMMIT_A, &llama_files());
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let out = tmp.path().join("pruned");
    expect_ok(&mut evop(&hub.endpoint, &home, &["apply", "--model", "org/tiny", "--skip", "1", "--out", out.to_str().unwrap()]));
    let repo = home.join("hub/models--org--tiny");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), COMMIT_A);
    let snap = repo.join("snapshots").join(COMMIT_A);
    for (name, bytes) in llama_files() {
        assert_eq!(std::fs::read(snap.join(name)).unwrap(), bytes, "{name}");
    }
    // The pruned model is the fixture's with one block fewer.
    let cfg: serde_json::Value = serde_json::from_slice(&read(&out, "config.json")).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 3);
    assert_eq!(cfg["evop"]["source"], snap.display().to_string());
    // The pruned model equals the one made from the local fixture.
    let local = tmp.path().join("local");
    expect_ok(&mut evop(&hub.endpoint, &home, &["apply", "--model", fixture("llama").to_str().unwrap(), "--skip", "1", "--out", local.to_str().unwrap()]));
    assert_eq!(read(&out, "model.safetensors"), read(&local, "model.safetensors"));

    // A second use reads the cache: no request, even with the hub gone.
    let before = hub.requests().len();
    let again = tmp.path().join("again");
    expect_ok(&mut evop("http://127.0.0.1:9", &home, &["apply", "--model", "org/tiny", "--skip", "2", "--out", again.to_str().unwrap()]));
    assert_eq!(hub.requests().len(), before);
}

#[test]
fn sharded_repository_and_revision() {
    let hub = FakeHub::start();
    // main: one file; v1: the same weights in two shards with an index.
    hub.add("org/tiny", "main", COMMIT_A, &llama_files());
    let tensors = candle_core::safetensors::load(fixture("llama").join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (mut first, mut second) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (name, t) in tensors {
        let shard = if name.contains("layers.0.") || name.contains("layers.1.") || name.contains("embed") { 1 } else { 2 };
        weight_map.insert(name.clone(), format!("model-0000{shard}-of-00002.safetensors").into());
        if shard == 1 { first.insert(name, t) } else { second.insert(name, t) };
    }
    let (p1, p2) = (tmp.path().join("s1"), tmp.path().join("s2"));
    candle_core::safetensors::save(&first, &p1).unwrap();
    candle_core::safetensors::save(&second, &p2).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map }).to_string().into_bytes();
    let d = fixture("llama");
    hub.add("org/tiny", "v1", COMMIT_B, &[
        ("config.json", read(&d, "config.json")),
        ("tokenizer.json", read(&d, "tokenizer.json")),
        ("model.safetensors.index.json", index),
        ("model-00001-of-00002.safetensors", std::fs::read(&p1).unwrap()),
        ("model-00002-of-00002.safetensors", std::fs::read(&p2).unwrap()),
    ]);
    let home = tmp.path().join("hf");
    let out = tmp.path().join("from-v1");
    expect_ok(&mut evop(&hub.endpoint, &home, &["apply", "--model", "org/tiny@v1", "--skip", "1", "--out", out.to_str().unwrap()]));
    let repo = home.join("hub/models--org--tiny");
    assert_eq!(std::fs::read_to_string(repo.join("refs/v1")).unwrap(), COMMIT_B);
    assert!(!repo.join("refs/main").exists(), "only the revision asked for is fetched");
    assert!(repo.join("snapshots").join(COMMIT_B).join("model-00002-of-00002.safetensors").exists());
    let requests = hub.requests();
    assert!(requests.iter().all(|(p, _, _)| p.starts_with("/org/tiny/resolve/v1/")), "{requests:?}");
    // The sharded weights load to the same model as the single file.
    let local = tmp.path().join("local");
    expect_ok(&mut evop(&hub.endpoint, &home, &["apply", "--model", fixture("llama").to_str().unwrap(), "--skip", "1", "--out", local.to_str().unwrap()]));
    assert_eq!(read(&out, "model.safetensors"), read(&local, "model.safetensors"));
    // Cached and sharded: no request the second time (not even for `model.safetensors`).
    let n = hub.requests().len();
    expect_ok(&mut evop(&hub.endpoint, &home, &["apply", "--model", "org/tiny@v1", "--skip", "2", "--out", tmp.path().join("again").to_str().unwrap()]));
    assert_eq!(hub.requests().len(), n);
}

/// A 2-block `llama` GGUF with F32 tensors (enough for `evop apply` to write a pruned GGUF).
fn tiny_gguf() -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let tensors: Vec<(String, u64)> =
        [("token_embd.weight", 12), ("blk.0.attn_norm.weight", 4), ("blk.1.attn_norm.weight", 4), ("output_norm.weight", 4)]
            .iter()
            .map(|(n, len)| (n.to_string(), *len))
            .collect();
    let mut h = b"GGUF".to_vec();
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&2u64.to_le_bytes());
    put_str(&mut h, "general.architecture");
    h.extend_from_slice(&8u32.to_le_bytes());
    put_str(&mut h, "llama");
    put_str(&mut h, "llama.block_count");
    h.extend_from_slice(&4u32.to_le_bytes());
    h.extend_from_slice(&2u32.to_le_bytes());
    let mut data = Vec::new();
    for (i, (name, len)) in tensors.iter().enumerate() {
        put_str(&mut h, name);
        let dims: Vec<u64> = if *len == 12 { vec![4, 3] } else { vec![4] };
        h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| h.extend_from_slice(&d.to_le_bytes()));
        h.extend_from_slice(&0u32.to_le_bytes()); // F32
        h.extend_from_slice(&(data.len() as u64).to_le_bytes());
        (0..*len).for_each(|k| data.extend_from_slice(&(100.0 * i as f32 + k as f32).to_le_bytes()));
        data.resize(data.len().div_ceil(32) * 32, 0);
    }
    h.resize(h.len().div_ceil(32) * 32, 0);
    h.extend_from_slice(&data);
    h
}

#[test]
fn gguf_file_by_name() {
    let hub = FakeHub::start();
    hub.add("org/tiny-GGUF", "main", COMMIT_A, &[("tiny.Q8_0.gguf", tiny_gguf()), ("README.md", b"a GGUF repository".to_vec())]);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let out = tmp.path().join("pruned.gguf");
    expect_ok(&mut evop(&hub.endpoint, &home, &["apply", "--model", "org/tiny-GGUF:tiny.Q8_0.gguf", "--skip", "0", "--out", out.to_str().unwrap()]));
    let cached = home.join("hub/models--org--tiny-GGUF/snapshots").join(COMMIT_A).join("tiny.Q8_0.gguf");
    assert_eq!(std::fs::read(&cached).unwrap(), tiny_gguf());
    let content = candle_core::quantized::gguf_file::Content::read(&mut std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(content.metadata["llama.block_count"].to_u32().unwrap(), 1);
    assert!(content.tensor_infos.contains_key("blk.0.attn_norm.weight") && !content.tensor_infos.contains_key("blk.1.attn_norm.weight"));
    // Only the named file was fetched.
    assert!(hub.requests().iter().all(|(p, _, _)| p.ends_with("/tiny.Q8_0.gguf")), "{:?}", hub.requests());

    // A GGUF repository without the file named, or without safetensors weights.
    let home2 = tmp.path().join("hf2");
    expect_error(
        &mut evop(&hub.endpoint, &home2, &["generate", "--model", "org/tiny-GGUF:tiny.Q4_0.gguf"]),
        &["org/tiny-GGUF", "tiny.Q4_0.gguf", "HTTP 404"],
    );
}

#[test]
fn missing_repository_or_file_is_a_404_naming_both() {
    let hub = FakeHub::start();
    hub.add("org/tiny", "main", COMMIT_A, &llama_files());
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let text = expect_error(
        &mut evop(&hub.endpoint, &home, &["generate", "--model", "org/nosuch"]),
        &["`org/nosuch` is not a local file or directory", "org/nosuch (revision main)", "config.json", "HTTP 404", &hub.endpoint],
    );
    assert!(!text.contains("HF_TOKEN"), "{text}");
    expect_error(&mut evop(&hub.endpoint, &home, &["generate", "--model", "org/tiny@v9"]), &["org/tiny (revision v9)", "config.json", "HTTP 404"]);
    // Config but no weights.
    hub.add("org/config-only", "main", COMMIT_A, &[("config.json", read(&fixture("llama"), "config.json"))]);
    expect_error(
        &mut evop(&hub.endpoint, &home, &["generate", "--model", "org/config-only"]),
        &["org/config-only", "neither model.safetensors nor model.safetensors.index.json", "org/config-only:FILE.gguf"],
    );
    // Nothing of the failed files is cached.
    let blobs = home.join("hub/models--org--nosuch/blobs");
    assert!(files_under(&blobs).iter().all(|f| f.ends_with(".lock")), "{:?}", files_under(&blobs));
}

#[test]
fn gated_repository_needs_the_token_sent_as_bearer() {
    let hub = FakeHub::start();
    hub.add("org/gated", "main", COMMIT_A, &llama_files());
    hub.gate("org/gated", "hf_secret");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let out = tmp.path().join("pruned");
    let args = ["apply", "--model", "org/gated", "--skip", "1", "--out", out.to_str().unwrap()];
    expect_error(&mut evop(&hub.endpoint, &home, &args), &["org/gated", "config.json", "HTTP 401", "gated", "HF_TOKEN"]);
    assert!(!out.exists());
    expect_error(&mut evop(&hub.endpoint, &home, &args).env("HF_TOKEN", "hf_wrong"), &["HTTP 401", "token (HF_TOKEN) was not accepted"]);
    expect_ok(evop(&hub.endpoint, &home, &args).env("HF_TOKEN", "hf_secret"));
    let sent: Vec<Option<String>> = hub.requests().into_iter().map(|(_, auth, _)| auth).collect();
    assert!(sent.contains(&None) && sent.last() == Some(&Some("Bearer hf_secret".to_string())), "{sent:?}");
    // The token file of HF_HOME is used when HF_TOKEN is not set.
    let home2 = tmp.path().join("hf2");
    std::fs::create_dir_all(&home2).unwrap();
    std::fs::write(home2.join("token"), "hf_secret\n").unwrap();
    expect_ok(&mut evop(&hub.endpoint, &home2, &["apply", "--model", "org/gated", "--skip", "2", "--out", tmp.path().join("p2").to_str().unwrap()]));
}

#[test]
fn offline_mode_uses_the_cache_only() {
    let hub = FakeHub::start();
    hub.add("org/tiny", "main", COMMIT_A, &llama_files());
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    // Nothing cached: refused without a request, naming the repository, the file and the cache.
    let out = tmp.path().join("a");
    let offline = |args: &[&str]| {
        let mut c = evop(&hub.endpoint, &home, args);
        c.env("HF_HUB_OFFLINE", "1");
        c
    };
    expect_error(
        &mut offline(&["apply", "--model", "org/tiny", "--skip", "1", "--out", out.to_str().unwrap()]),
        &["org/tiny (revision main)", "config.json", "not in the cache", "HF_HUB_OFFLINE"],
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    // Downloaded once, then offline: the cache, and still no request.
    expect_ok(&mut evop(&hub.endpoint, &home, &["apply", "--model", "org/tiny", "--skip", "1", "--out", out.to_str().unwrap()]));
    let n = hub.requests().len();
    expect_ok(&mut offline(&["apply", "--model", "org/tiny", "--skip", "2", "--out", tmp.path().join("b").to_str().unwrap()]));
    // A revision not cached is refused offline.
    expect_error(&mut offline(&["generate", "--model", "org/tiny@v1"]), &["org/tiny (revision v1)", "config.json", "HF_HUB_OFFLINE"]);
    // A commit hash is found offline whichever ref fetched it.
    let by_commit = format!("org/tiny@{COMMIT_A}");
    expect_ok(&mut offline(&["apply", "--model", &by_commit, "--skip", "0", "--out", tmp.path().join("c").to_str().unwrap()]));
    assert_eq!(hub.requests().len(), n, "offline runs made requests");
}

#[test]
fn interrupted_or_corrupted_download_leaves_nothing_in_the_cache() {
    let hub = FakeHub::start();
    hub.add("org/tiny", "main", COMMIT_A, &llama_files());
    hub.set_serve("org/tiny", "main", "model.safetensors", Serve::HalfThenClose);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let out = tmp.path().join("a");
    let args = ["apply", "--model", "org/tiny", "--skip", "1", "--out", out.to_str().unwrap()];
    expect_error(&mut evop(&hub.endpoint, &home, &args), &["org/tiny (revision main)", "model.safetensors", "broke off"]);
    let repo = home.join("hub/models--org--tiny");
    let leftovers = |dir: &Path| -> Vec<String> {
        files_under(&dir.join("blobs"))
            .into_iter()
            .filter(|f| !f.ends_with(".lock"))
            .filter(|f| !llama_files().iter().any(|(n, b)| *n != "model.safetensors" && std::fs::read(dir.join("blobs").join(f)).ok().as_ref() == Some(b)))
            .collect()
    };
    assert_eq!(leftovers(&repo), Vec::<String>::new(), "part of the weights was left in the cache");
    assert!(!repo.join("snapshots").join(COMMIT_A).join("model.safetensors").exists());
    assert!(!out.exists());

    // A changed byte: refused by its sha256 (the etag), and removed.
    hub.set_serve("org/tiny", "main", "model.safetensors", Serve::Corrupted);
    expect_error(&mut evop(&hub.endpoint, &home, &args), &["model.safetensors", "sha256", "removed from the cache"]);
    assert_eq!(leftovers(&repo), Vec::<String>::new(), "the corrupted weights were left in the cache");
    assert!(!repo.join("snapshots").join(COMMIT_A).join("model.safetensors").exists());

    // Served whole again: the next run downloads and works.
    hub.set_serve("org/tiny", "main", "model.safetensors", Serve::Whole);
    expect_ok(&mut evop(&hub.endpoint, &home, &args));
    assert_eq!(std::fs::read(repo.join("snapshots").join(COMMIT_A).join("model.safetensors")).unwrap(), llama_files()[2].1);
}

#[test]
fn an_existing_local_path_wins_over_a_hub_id() {
    let hub = FakeHub::start();
    hub.add("org/tiny", "main", COMMIT_A, &llama_files());
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("org/tiny");
    std::fs::create_dir_all(&local).unwrap();
    for (name, bytes) in llama_files() {
        std::fs::write(local.join(name), bytes).unwrap();
    }
    let home = tmp.path().join("hf");
    let out = tmp.path().join("out");
    expect_ok(evop(&hub.endpoint, &home, &["apply", "--model", "org/tiny", "--skip", "1", "--out", out.to_str().unwrap()]).current_dir(tmp.path()));
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    let cfg: serde_json::Value = serde_json::from_slice(&read(&out, "config.json")).unwrap();
    assert_eq!(cfg["evop"]["source"], "org/tiny");
}
