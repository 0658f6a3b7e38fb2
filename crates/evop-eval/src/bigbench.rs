//! Loaders for BIG-bench `task.json` files (Srivastava et al. 2022, "Beyond the Imitation Game",
//! arXiv 2206.04615; github.com/google/BIG-bench, Apache-2.0), turned into multiple-choice items
//! in lm-evaluation-harness's cloze form (no answer list in the prompt; each option scored as text).
//!
//! Three layouts occur among the tasks evop uses ([`BigBenchFormat`]):
//! - **Target scores** (`goal_step_wikihow/step_inference`, `winowhy`, ...): `examples: [{input,
//!   target_scores: {option: score}}]`. Context = the file's `example_input_prefix` + `input` + its
//!   `example_output_prefix` (each only when the file sets it; BIG-bench's own defaults `"\nQ: "` /
//!   `"\nA: "` and its appended `choice:` list are for its generative prompts and are not used);
//!   options in file order; the correct options are those with the highest score, which must be > 0.
//! - **Lettered question** (`natural_instructions/subtask047_misc_answering_science_questions`):
//!   `input = "Question: <stem> (A) <opt> (B) <opt> ...?"`, `target = ["D."]`. The trailing `?` is
//!   the template's (every input ends with it), not the last option's; the markers `(A)`, `(B)`, ...
//!   are found in order (so a later `(A)` inside an option text is left alone); an option with no
//!   text (example 90 ends in a bare `(D)`) is dropped. Context =
//!   `"Question: <stem>\nAnswer:"`, options = the texts, as lm-evaluation-harness's ARC template.
//! - **WinoGrande twins** (`natural_instructions/subtask029_winogrande_full_object`):
//!   `input = "Context Word: <w>."`, `target = ["Sentence 1: <s1> \nAnswer1: <a1>. \nSentence 2: <s2>
//!   \nAnswer2: <a2>.", ...]` (one or more twin pairs; each sentence has one `_`). The first twin pair
//!   of example `e` gives items `2e` (sentence 1, gold `a1`) and `2e + 1` (sentence 2, gold `a2`),
//!   both with options `[a1, a2]` (the final `.` of an answer dropped). Each item is scored by
//!   partial evaluation as lm-evaluation-harness's `winogrande` task does: context = the sentence
//!   up to the blank with the option filled in, continuation = `" "` + the rest after the blank,
//!   stripped.
use crate::error::{EvalError, Result};
use crate::task::{McItem, McTask};
use serde_json::Value;
use std::path::Path;

/// Short names of the development tasks of ASSETS.md and their BIG-bench task paths.
pub const DEV_TASKS: [(&str, &str); 3] = [
    ("science", "natural_instructions/subtask047_misc_answering_science_questions"),
    ("winogrande", "natural_instructions/subtask029_winogrande_full_object"),
    ("step_inference", "goal_step_wikihow/step_inference"),
];

/// The BIG-bench task path of a short name from [`DEV_TASKS`]; any other name is returned as is.
pub fn resolve_task(name: &str) -> &str {
    DEV_TASKS.iter().find(|(alias, _)| *alias == name).map_or(name, |(_, path)| path)
}

/// Other BIG-bench 1.0.0 multiple-choice tasks known by their name (measured with SmolLM2, see
/// the asset notes).
pub const OTHER_TASKS: [&str; 3] = ["winowhy", "strategyqa", "social_iqa"];

/// Every task name evop knows: the short names of [`DEV_TASKS`] and [`OTHER_TASKS`].
pub fn known_task_names() -> Vec<&'static str> {
    DEV_TASKS.iter().map(|(alias, _)| *alias).chain(OTHER_TASKS).collect()
}

/// The BIG-bench task path of `name`, checked without the archive (so before any download): a
/// short name of [`DEV_TASKS`], a task of [`OTHER_TASKS`], a task path of either, or a path
/// `TASK/SUBTASK` (letters, digits, `_`, `-`, `.`). Anything else is
/// [`EvalError::UnknownTask`], which lists the known names.
pub fn task_path(name: &str) -> Result<&str> {
    let path = resolve_task(name);
    if DEV_TASKS.iter().any(|(_, p)| *p == path) || OTHER_TASKS.contains(&path) {
        return Ok(path);
    }
    let component = |c: &str| !c.is_empty() && c != "." && c != ".." && c.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
    if path.contains('/') && path.split('/').all(component) {
        return Ok(path);
    }
    Err(EvalError::UnknownTask { name: name.to_string(), known: known_task_names().join(", ") })
}

/// Which layout a `task.json` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BigBenchFormat {
    /// Detect from the first example: `target_scores` -> [`Self::TargetScores`]; a target starting
    /// with `Sentence 1:` -> [`Self::WinoGrandeTwins`]; an input with `(A)` -> [`Self::LetteredQuestion`].
    Auto,
    TargetScores,
    LetteredQuestion,
    WinoGrandeTwins,
}

/// Reads a BIG-bench `task.json` into a multiple-choice task named `name`.
pub fn load_bigbench(path: &Path, name: &str, format: BigBenchFormat) -> Result<McTask> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
    let json: Value = serde_json::from_str(&text).map_err(|source| EvalError::Json { path: path.to_path_buf(), source })?;
    parse_bigbench(&json, path, name, format)
}

/// Parses an already-read `task.json` value (`path` only names it in errors).
pub fn parse_bigbench(json: &Value, path: &Path, name: &str, format: BigBenchFormat) -> Result<McTask> {
    let field_err = |field: &str, message: String| EvalError::Field { path: path.to_path_buf(), field: field.into(), message };
    let examples = json
        .get("examples")
        .ok_or_else(|| field_err("examples", "missing".into()))?
        .as_array()
        .ok_or_else(|| field_err("examples", "not an array".into()))?;
    if examples.is_empty() {
        return Err(EvalError::EmptyTask { task: name.into() });
    }
    let format = match format {
        BigBenchFormat::Auto => detect(&examples[0]).ok_or_else(|| {
            field_err("examples[0]", "neither `target_scores`, a WinoGrande twin `target`, nor a lettered `(A)` question".into())
        })?,
        f => f,
    };
    let prefix = |key: &str| -> Result<String> {
        match json.get(key) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(field_err(key, format!("expected a string, found {other}"))),
        }
    };
    let (in_prefix, out_prefix) = (prefix("example_input_prefix")?, prefix("example_output_prefix")?);
    let mut items = Vec::new();
    for (index, ex) in examples.iter().enumerate() {
        let fail = |message: String| EvalError::Item { task: name.into(), index, message };
        let input = ex.get("input").and_then(Value::as_str).ok_or_else(|| fail("missing string field `input`".into()))?;
        match format {
            BigBenchFormat::TargetScores => {
                let scores = ex
                    .get("target_scores")
                    .and_then(Value::as_object)
                    .ok_or_else(|| fail("missing object field `target_scores`".into()))?;
                let mut options = Vec::with_capacity(scores.len());
                let mut values = Vec::with_capacity(scores.len());
                for (opt, v) in scores {
                    let v = v.as_f64().ok_or_else(|| fail(format!("target score of {opt:?} is not a number: {v}")))?;
                    options.push(opt.as_str());
                    values.push(v);
                }
                let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if best <= 0.0 {
                    return Err(fail("no option has a positive target score".into()));
                }
                let gold = (0..values.len()).filter(|&i| values[i] == best).collect();
                items.push(McItem::shared(index, &format!("{in_prefix}{input}{out_prefix}"), &options, gold));
            }
            BigBenchFormat::LetteredQuestion => {
                let target = first_target(ex).ok_or_else(|| fail("missing string array field `target`".into()))?;
                let (stem, options) = parse_lettered(input).map_err(&fail)?;
                let letter = target.trim().trim_end_matches('.').trim();
                let gold_letter = letter_index(letter)
                    .filter(|&g| g < options.len() && !options[g].is_empty())
                    .ok_or_else(|| fail(format!("target {target:?} is not one of the {} lettered options", options.len())))?;
                // Empty options (example 90 of the science task ends in a bare `(D)`) are dropped.
                let gold = options[..gold_letter].iter().filter(|o| !o.is_empty()).count();
                let opts: Vec<&str> = options.iter().filter(|o| !o.is_empty()).map(String::as_str).collect();
                items.push(McItem::shared(index, &format!("Question: {stem}\nAnswer:"), &opts, vec![gold]));
            }
            BigBenchFormat::WinoGrandeTwins => {
                let target = first_target(ex).ok_or_else(|| fail("missing string array field `target`".into()))?;
                let twins = parse_twins(target).map_err(&fail)?;
                let options = [twins[0].1.clone(), twins[1].1.clone()];
                for (k, (sentence, _)) in twins.iter().enumerate() {
                    let (contexts, rest) = partial_contexts(sentence, &options).map_err(|m| fail(format!("sentence {}: {m}", k + 1)))?;
                    items.push(McItem::partial(2 * index + k, &contexts, &rest, vec![k]));
                }
            }
            BigBenchFormat::Auto => unreachable!("resolved above"),
        }
    }
    McTask::new(name, items)
}

fn detect(ex: &Value) -> Option<BigBenchFormat> {
    if ex.get("target_scores").is_some() {
        return Some(BigBenchFormat::TargetScores);
    }
    if first_target(ex).is_some_and(|t| t.trim_start().starts_with("Sentence 1:")) {
        return Some(BigBenchFormat::WinoGrandeTwins);
    }
    if ex.get("input").and_then(Value::as_str).is_some_and(|i| i.contains("(A)")) {
        return Some(BigBenchFormat::LetteredQuestion);
    }
    None
}

fn first_target(ex: &Value) -> Option<&str> {
    match ex.get("target")? {
        Value::String(s) => Some(s),
        Value::Array(a) => a.first()?.as_str(),
        _ => None,
    }
}

fn letter_index(letter: &str) -> Option<usize> {
    let mut chars = letter.chars();
    match (chars.next(), chars.next()) {
        (Some(c @ 'A'..='Z'), None) => Some(c as usize - 'A' as usize),
        _ => None,
    }
}

/// Splits `"Question: <stem> (A) x (B) y ...?"` into the stem and the option texts (in letter
/// order; an option may be empty).
pub fn parse_lettered(input: &str) -> std::result::Result<(String, Vec<String>), String> {
    let body = input.trim().strip_suffix('?').unwrap_or(input.trim());
    let body = body.strip_prefix("Question:").unwrap_or(body);
    let mut marks = Vec::new();
    let mut from = 0;
    for letter in 'A'..='Z' {
        let mark = format!("({letter})");
        match body[from..].find(&mark) {
            Some(at) => {
                marks.push(from + at);
                from += at + mark.len();
            }
            None => break,
        }
    }
    if marks.len() < 2 {
        return Err(format!("input has {} lettered option marker(s) `(A)`, `(B)`, ...; need at least 2", marks.len()));
    }
    let stem = body[..marks[0]].trim().to_string();
    let mut options = Vec::with_capacity(marks.len());
    for (k, &m) in marks.iter().enumerate() {
        let end = marks.get(k + 1).copied().unwrap_or(body.len());
        options.push(body[m + 3..end].trim().to_string());
    }
    if stem.is_empty() {
        return Err("the question before `(A)` is empty".into());
    }
    Ok((stem, options))
}

/// Parses `"Sentence 1: s1 \nAnswer1: a1. \nSentence 2: s2 \nAnswer2: a2."` into `[(s1, a1), (s2, a2)]`.
pub fn parse_twins(target: &str) -> std::result::Result<[(String, String); 2], String> {
    let field = |text: &str, key: &str, next: Option<&str>| -> std::result::Result<String, String> {
        let start = text.find(key).ok_or_else(|| format!("target lacks `{key}`"))? + key.len();
        let end = match next {
            Some(n) => text[start..].find(n).map(|e| start + e).ok_or_else(|| format!("target lacks `{n}` after `{key}`"))?,
            None => text.len(),
        };
        Ok(text[start..end].trim().to_string())
    };
    let s1 = field(target, "Sentence 1:", Some("Answer1:"))?;
    let a1 = field(target, "Answer1:", Some("Sentence 2:"))?;
    let s2 = field(target, "Sentence 2:", Some("Answer2:"))?;
    let a2 = field(target, "Answer2:", None)?;
    let answer = |a: String| a.strip_suffix('.').map(str::trim).unwrap_or(&a).to_string();
    let (a1, a2) = (answer(a1), answer(a2));
    if a1.is_empty() || a2.is_empty() {
        return Err("an answer is empty".into());
    }
    Ok([(s1, a1), (s2, a2)])
}

/// lm-evaluation-harness's WinoGrande split: one context per option (the sentence up to the blank
/// with the option filled in) and the text after the blank, stripped.
pub fn partial_contexts(sentence: &str, options: &[String]) -> std::result::Result<(Vec<String>, String), String> {
    let blanks = sentence.matches('_').count();
    if blanks != 1 {
        return Err(format!("has {blanks} blanks `_`; exactly one is needed: {sentence:?}"));
    }
    let at = sentence.find('_').expect("one blank");
    let rest = sentence[at + 1..].trim().to_string();
    if rest.is_empty() {
        return Err(format!("nothing follows the blank to score: {sentence:?}"));
    }
    if sentence[..at].trim().is_empty() {
        return Err(format!("the blank opens the sentence, leaving no context: {sentence:?}"));
    }
    Ok((options.iter().map(|o| format!("{}{o}", &sentence[..at])).collect(), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p() -> &'static Path {
        Path::new("task.json")
    }

    #[test]
    fn task_names_are_checked_without_the_archive() {
        assert_eq!(task_path("science").unwrap(), DEV_TASKS[0].1);
        assert_eq!(task_path("goal_step_wikihow/step_inference").unwrap(), "goal_step_wikihow/step_inference");
        assert_eq!(task_path("winowhy").unwrap(), "winowhy");
        assert_eq!(task_path("logical_deduction/three_objects").unwrap(), "logical_deduction/three_objects");
        for bad in ["nosuchtask", "", "a//b", "../etc", "a/../b", "x/y z", "/abs"] {
            let err = task_path(bad).err().unwrap_or_else(|| panic!("{bad:?} accepted")).to_string();
            assert!(err.contains(&format!("`{bad}`")) && err.contains("science, winogrande, step_inference, winowhy"), "{err}");
        }
    }

    #[test]
    fn aliases_resolve_to_task_paths() {
        assert_eq!(resolve_task("winogrande"), "natural_instructions/subtask029_winogrande_full_object");
        assert_eq!(resolve_task("bbq_lite_json/x"), "bbq_lite_json/x");
    }

    #[test]
    fn lettered_questions_keep_inner_markers_and_drop_the_template_question_mark() {
        let (stem, opts) = parse_lettered(
            "Question: What happens to B?  (A) It lives with (A) (B) It moves (C) It stays?",
        )
        .unwrap();
        assert_eq!(stem, "What happens to B?");
        assert_eq!(opts, vec!["It lives with (A)", "It moves", "It stays"]);
        let (_, opts) = parse_lettered("Question: Q  (A) It decreases.(B) It increases.?").unwrap();
        assert_eq!(opts, vec!["It decreases.", "It increases."]);
        let (_, opts) = parse_lettered("Question: Q (A) up (B) down (C) same (D)?").unwrap();
        assert_eq!(opts, vec!["up", "down", "same", ""]);
        assert!(parse_lettered("Question: no options?").is_err());
    }

    #[test]
    fn lettered_task_builds_arc_style_items() {
        let j = json!({"examples": [{"input": "Question: Sky colour?  (A) green (B) blue?", "target": ["B."]}]});
        let t = parse_bigbench(&j, p(), "sci", BigBenchFormat::Auto).unwrap();
        let it = &t.items[0];
        assert_eq!(it.gold, vec![1]);
        assert_eq!(it.choices[1].context, "Question: Sky colour?\nAnswer:");
        assert_eq!(it.choices[1].continuation, " blue");
        let j = json!({"examples": [{"input": "Question: Q (A) (B) x (C) y?", "target": ["C."]}]});
        let t = parse_bigbench(&j, p(), "sci", BigBenchFormat::Auto).unwrap();
        assert_eq!(t.items[0].choices.len(), 2);
        assert_eq!((t.items[0].gold.clone(), t.items[0].choices[1].continuation.as_str()), (vec![1], " y"));
        let j = json!({"examples": [{"input": "Question: Q (A) x (B) y?", "target": ["E."]}]});
        let e = parse_bigbench(&j, p(), "sci", BigBenchFormat::Auto).unwrap_err().to_string();
        assert!(e.contains("example 0") && e.contains("\"E.\""), "{e}");
    }

    #[test]
    fn winogrande_twins_become_two_partial_items() {
        let j = json!({"examples": [{"input": "Context Word: rats.", "target": [
            "Sentence 1: The rats left the holes for the spaces since the _ were crowded. \nAnswer1: holes. \nSentence 2: The rats left the holes for the spaces since the _ were roomy. \nAnswer2: spaces."
        ]}]});
        let t = parse_bigbench(&j, p(), "wino", BigBenchFormat::Auto).unwrap();
        assert_eq!(t.len(), 2);
        let (a, b) = (&t.items[0], &t.items[1]);
        assert_eq!((a.id, b.id, a.gold.clone(), b.gold.clone()), (0, 1, vec![0], vec![1]));
        assert_eq!(a.choices[0].context, "The rats left the holes for the spaces since the holes");
        assert_eq!(a.choices[1].context, "The rats left the holes for the spaces since the spaces");
        assert_eq!(a.choices[0].continuation, " were crowded.");
        assert_eq!(b.choices[1].continuation, " were roomy.");
    }

    #[test]
    fn target_scores_use_file_prefixes_and_allow_several_golds() {
        let j = json!({"example_input_prefix": "Q: ", "example_output_prefix": "\nA:", "examples": [
            {"input": "pick", "target_scores": {"x": 0, "y": 1, "z": 1}}
        ]});
        let t = parse_bigbench(&j, p(), "ts", BigBenchFormat::Auto).unwrap();
        assert_eq!(t.items[0].gold, vec![1, 2]);
        assert_eq!(t.items[0].choices[0].context, "Q: pick\nA:");
        let j = json!({"examples": [{"input": "pick", "target_scores": {"x": 0, "y": 0}}]});
        assert!(parse_bigbench(&j, p(), "ts", BigBenchFormat::Auto).unwrap_err().to_string().contains("positive"));
    }

    #[test]
    fn malformed_files_name_the_field() {
        let e = parse_bigbench(&json!({"exampels": []}), p(), "t", BigBenchFormat::Auto).unwrap_err().to_string();
        assert!(e.contains("task.json") && e.contains("`examples`"), "{e}");
        let e = parse_bigbench(&json!({"examples": [{"input": 3}]}), p(), "t", BigBenchFormat::TargetScores)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`input`"), "{e}");
        let j = json!({"examples": [{"input": "Context Word: a.", "target": ["Sentence 1: no blank \nAnswer1: a. \nSentence 2: x _ y \nAnswer2: b."]}]});
        let e = parse_bigbench(&j, p(), "w", BigBenchFormat::Auto).unwrap_err().to_string();
        assert!(e.contains("sentence 1") && e.contains("0 blanks"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("task.json");
        std::fs::write(&bad, "{not json").unwrap();
        assert!(matches!(load_bigbench(&bad, "t", BigBenchFormat::Auto), Err(EvalError::Json { .. })));
        assert!(matches!(load_bigbench(&dir.path().join("none.json"), "t", BigBenchFormat::Auto), Err(EvalError::Io { .. })));
    }
}
