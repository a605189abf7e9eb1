//! The layering of `src/` (ARCHITECTURE.md, "Code map"): only `src/http/`
//! and `src/startup.rs` name the HTTP module. Every other file of `src/` is
//! read, its comments and string literals set aside, and any path into
//! `crate::http` — in a `use` (grouped or not) or inline — fails the test,
//! naming the file and the line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The files that may name `crate::http`, relative to `src/`.
fn may_name_http(relative: &Path) -> bool {
    relative.starts_with("http") || relative == Path::new("startup.rs")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `text` with comments and the contents of string and char literals
/// blanked (newlines kept, so line numbers hold).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && raw_string_at(&chars, i) {
            let mut hashes = 0;
            i += 1;
            out.push(' ');
            while chars.get(i) == Some(&'#') {
                hashes += 1;
                out.push(' ');
                i += 1;
            }
            out.push(' '); // the opening quote
            i += 1;
            while i < chars.len() {
                let closes =
                    chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#'));
                if closes {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += hashes + 1;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    out.push(blank(c));
                }
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && char_literal_len(&chars, i).is_some() {
            let len = char_literal_len(&chars, i).unwrap_or(1);
            for _ in 0..len {
                out.push(' ');
            }
            i += len;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether a raw string (`r"…"`, `r#"…"#`) opens at `i` (not an
/// identifier ending in `r`).
fn raw_string_at(chars: &[char], i: usize) -> bool {
    let starts_word = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    let mut j = i + 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    starts_word && chars.get(j) == Some(&'"')
}

/// The length of a char literal at `i` (`'a'`, `'\n'`, `'\u{202E}'`), or
/// `None` for a lifetime.
fn char_literal_len(chars: &[char], i: usize) -> Option<usize> {
    if chars.get(i + 1) == Some(&'\\') {
        let end = (i + 2..chars.len().min(i + 14)).find(|&j| chars[j] == '\'')?;
        return Some(end - i + 1);
    }
    (chars.get(i + 2) == Some(&'\'')).then_some(3)
}

/// Each path a `use` tree names, its groups expanded: `crate::{a, b::c}`
/// gives `crate::a` and `crate::b::c`.
fn use_paths(tree: &str) -> Vec<String> {
    let tree: String = without_aliases(tree)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let mut paths = Vec::new();
    expand("", &tree, &mut paths);
    paths
}

/// A `use` tree without its renames: `a as b` names `a`.
fn without_aliases(tree: &str) -> String {
    let mut out = tree.to_owned();
    while let Some(k) = find_word(&out, "as") {
        let rest = &out[k + 2..];
        let spaces = rest.len() - rest.trim_start().len();
        let alias: usize = rest[spaces..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .map(char::len_utf8)
            .sum();
        out.replace_range(k..k + 2 + spaces + alias, "");
    }
    out
}

fn expand(prefix: &str, tree: &str, paths: &mut Vec<String>) {
    let Some(open) = tree.find('{') else {
        paths.push(format!("{prefix}{tree}"));
        return;
    };
    let head = &tree[..open];
    let inner = tree[open + 1..]
        .strip_suffix('}')
        .unwrap_or(&tree[open + 1..]);
    let mut depth = 0;
    let mut start = 0;
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&format!("{prefix}{head}"), &inner[start..k], paths);
                start = k + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        expand(&format!("{prefix}{head}"), &inner[start..], paths);
    }
}

/// Whether `path` (`a::b::c`) leads into the library's `http` module from
/// a file of `src/` at `depth` modules below the root: through `crate`,
/// enough `super`s, the library's name (`tollgate::`, from the binary), or
/// — in the library's root file — `self` or nothing.
fn names_http(path: &str, depth: usize, root_file: bool) -> bool {
    let segments: Vec<&str> = path.trim_start_matches("::").split("::").collect();
    let supers = segments.iter().take_while(|s| **s == "super").count();
    let from_root = match segments.first() {
        Some(&"crate") | Some(&"tollgate") => &segments[1..],
        Some(&"self") if root_file => &segments[1..],
        Some(&"super") if depth > 0 && supers >= depth => &segments[supers..],
        _ if root_file => &segments[..],
        _ => return false,
    };
    from_root.first() == Some(&"http")
}

/// The lines of `text` (a file `depth` modules below the crate root) that
/// name `crate::http`: `(line number, the line)`.
fn violations(text: &str, depth: usize, root_file: bool) -> Vec<(usize, String)> {
    let code = code_only(text);
    let lines: Vec<&str> = text.lines().collect();
    let line_of = |offset: usize| code[..offset].matches('\n').count();
    let mut found = Vec::new();
    // `use` statements, however they are grouped or wrapped.
    let mut rest = 0;
    while let Some(at) = find_word(&code[rest..], "use").map(|k| k + rest) {
        let end = code[at..].find(';').map_or(code.len(), |k| at + k);
        let tree = &code[at + 3..end];
        if use_paths(tree)
            .iter()
            .any(|path| names_http(path, depth, root_file))
        {
            found.push(line_of(at));
        }
        rest = end.min(code.len());
        if rest == at {
            break;
        }
    }
    // Inline paths: `crate::http::…`, `super::http::…` past the root,
    // `tollgate::http::…`.
    for start in ["crate", "super", "tollgate"] {
        let mut rest = 0;
        while let Some(at) = find_word(&code[rest..], start).map(|k| k + rest) {
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if names_http(&path, depth, root_file) {
                found.push(line_of(at));
            }
            // Past this whole path, so `super::super::http` is one finding.
            rest = at + path.len();
        }
    }
    found.sort_unstable();
    found.dedup();
    found
        .into_iter()
        .map(|line| (line + 1, lines.get(line).unwrap_or(&"").trim().to_owned()))
        .collect()
}

/// The first occurrence of `word` in `code` as a whole word.
fn find_word(code: &str, word: &str) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(k) = code[from..].find(word).map(|k| k + from) {
        let before = code[..k].chars().next_back().is_none_or(|c| !ident(c));
        let after = code[k + word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !ident(c));
        if before && after {
            return Some(k);
        }
        from = k + word.len();
    }
    None
}

/// Every violation under `src`: `file:line: the line`.
fn violations_in(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap_or(&file);
        if may_name_http(relative) {
            continue;
        }
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // `src/lib.rs`, `src/main.rs` are the root; `src/a.rs` and
        // `src/a/mod.rs` one below; `src/a/b.rs` two.
        let parts = relative.components().count();
        let is_mod = relative.file_name().is_some_and(|n| n == "mod.rs");
        let root_file = relative == Path::new("lib.rs");
        let depth = if root_file || relative == Path::new("main.rs") {
            0
        } else if is_mod {
            parts - 1
        } else {
            parts
        };
        for (line, code) in violations(&text, depth, root_file) {
            found.push(format!("src/{}:{line}: {code}", relative.display()));
        }
    }
    found
}

#[test]
fn only_http_and_startup_import_the_http_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations_in(&src);
    assert!(
        found.is_empty(),
        "only src/http/ and src/startup.rs may import crate::http:\n{}",
        found.join("\n")
    );
}

/// The check finds each way of naming the module, and nothing else.
#[test]
fn a_planted_import_is_found() {
    let planted = [
        "use crate::http::error::ApiError;",
        "use crate::http;",
        "pub(crate) use crate::http::views::KeyView as View;",
        "use crate::{settings::Settings, http::error::ApiError};",
        "use crate::{\n    state::AppState,\n    http::{error, views},\n};",
        "fn f() { let _ = crate::http::error::not_found_route(); }",
        "fn f() -> Option<&'static str> { crate::http::extract::CHAIN_HEADER.into() }",
        "use super::super::http::caller;",
        "use crate::http as web_api;",
        "use crate::{http as api, state};",
    ];
    for text in planted {
        let depth = if text.contains("super::super") { 2 } else { 1 };
        assert_eq!(
            violations(text, depth, false).len(),
            1,
            "not found in {text:?}"
        );
    }
    assert_eq!(violations("use http::error::ApiError;", 0, true).len(), 1);
    assert_eq!(violations("use super::http::views;", 1, false).len(), 1);
    assert_eq!(
        violations("use tollgate::http::endpoints;", 0, false).len(),
        1
    );

    let innocent = [
        "use actix_web::http::StatusCode;",
        "use actix_web::{http::header, web};",
        "fn f(h: &actix_web::http::header::HeaderMap) {}",
        "// maps them in `crate::http::error`",
        "/// see `use crate::http::error`;\nfn f() {}",
        "/* use crate::http::error; */",
        "const S: &str = \"use crate::http::x;\";",
        "const R: &str = r#\"crate::http\"#;",
        "use crate::http_client::Client;",
        "use crate::state::{AppState as httpish, KeyCreationRefused};",
        "use http::StatusCode;",
        "use super::http::views;",
        "use crate::state::AppState;\nfn f<'a>(x: &'a str) -> &'a str { x }",
    ];
    for text in innocent {
        let depth = if text.contains("super::http") { 2 } else { 1 };
        assert!(
            violations(text, depth, false).is_empty(),
            "wrongly found in {text:?}: {:?}",
            violations(text, depth, false)
        );
    }
}

/// Planted in a copy of `src/`, an import of the http module fails the
/// real check, naming its file and line.
#[test]
fn a_planted_file_fails_the_check() {
    let dir = std::env::temp_dir().join(format!("tollgate-layering-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("http")).unwrap();
    std::fs::create_dir_all(src.join("gateway")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod gateway;\npub mod http;\n").unwrap();
    std::fs::write(src.join("http/mod.rs"), "pub mod error;\n").unwrap();
    std::fs::write(src.join("startup.rs"), "use crate::http;\n").unwrap();
    std::fs::write(
        src.join("gateway/mod.rs"),
        "//! A module.\n\nuse ledger::Amount;\nuse crate::http::error::ApiError;\n",
    )
    .unwrap();
    let found = violations_in(&src);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        found,
        vec!["src/gateway/mod.rs:4: use crate::http::error::ApiError;".to_owned()]
    );
}
