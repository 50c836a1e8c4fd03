//! The workspace's layout rules, checked on its sources: no file imports another that imports
//! it back (through `crate::` or `super::` paths, comments aside), and the model crate has no
//! text code and writes nothing to a terminal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `file` outside comments and its `#[cfg(test)] mod tests`.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read source");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(cut) => &text[..cut],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module path of `file` under `src`: `kernels/mod.rs` and `kernels.rs` are `[kernels]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The file that defines the longest prefix of `path` (the crate root when none).
fn file_of(src: &Path, path: &[String]) -> PathBuf {
    for len in (1..=path.len()).rev() {
        let base = path[..len].iter().fold(src.to_path_buf(), |p, s| p.join(s));
        for candidate in [base.with_extension("rs"), base.join("mod.rs")] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    src.join("lib.rs")
}

/// `crate::a::b` and `super::a` paths in `code`, as module paths relative to the crate root.
fn imported_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (start, keyword) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[start + keyword.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let mut path: Vec<String> = if keyword == "super::" {
            module[..module.len().saturating_sub(1)].to_vec()
        } else {
            Vec::new()
        };
        path.extend(
            rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        out.push(path);
    }
    out
}

/// Pairs of files under `src` that import each other.
fn circles_in(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut imports: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        for path in imported_paths(&code(file), &module) {
            let target = file_of(src, &path);
            if &target != file {
                imports.entry(file.clone()).or_default().insert(target);
            }
        }
    }
    let mut circles = Vec::new();
    for (a, targets) in &imports {
        for b in targets {
            if a < b && imports.get(b).is_some_and(|t| t.contains(a)) {
                circles.push(format!("{} <-> {}", a.display(), b.display()));
            }
        }
    }
    circles
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let mut circles = Vec::new();
    for entry in std::fs::read_dir(crates_dir()).expect("crates").flatten() {
        let src = entry.path().join("src");
        if src.is_dir() {
            circles.extend(circles_in(&src));
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_circle_finder_sees_circles_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    let write = |name: &str, text: &str| {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write("lib.rs", "mod a;\nmod b;\nmod room;\n");
    write(
        "a.rs",
        "use crate::b::Thing;\n// use crate::c::Commented;\n",
    );
    write("b.rs", "use crate::a::Other;\n");
    write("c.rs", "use crate::a::Other;\n");
    write("room/mod.rs", "mod inner;\nuse self::inner::X;\n");
    write(
        "room/inner.rs",
        "use super::sibling::Y;\nuse my_crate::room::Z;\n",
    );
    write("room/sibling.rs", "use crate::room::inner::X;\n");
    let circles = circles_in(src);
    assert_eq!(circles.len(), 2, "{circles:#?}");
    assert!(
        circles
            .iter()
            .any(|c| c.contains("/a.rs") && c.contains("/b.rs"))
    );
    assert!(
        circles
            .iter()
            .any(|c| c.contains("inner.rs") && c.contains("sibling.rs"))
    );
    assert!(!circles.iter().any(|c| c.contains("c.rs")));
}

#[test]
fn the_model_crate_has_no_text_code_and_draws_nothing() {
    let src = crates_dir().join("model").join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        for text_file in ["tokenizer.rs", "chat_template.rs", "stop.rs"] {
            assert_ne!(
                name,
                text_file,
                "{} belongs in wayfinder-text",
                file.display()
            );
        }
        let code = code(&file);
        for terminal in [
            "println!",
            "eprintln!",
            "indicatif",
            "IsTerminal",
            "stderr()",
        ] {
            assert!(
                !code.contains(terminal),
                "{} writes to a terminal ({terminal})",
                file.display()
            );
        }
    }
}
