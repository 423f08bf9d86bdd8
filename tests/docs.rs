//! The reference tables in docs/ stay in step with the code: every setting the worker reads is
//! documented once (docs/configuration.md), every error code it answers is in the error table
//! (docs/operations.md) and nothing else is, the bridge's own upload failure codes are in the
//! error-class table (docs/upload.md), the metric columns are documented in order
//! (docs/metrics.md); and every page is reachable from the README with no broken link.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use powersync_supabase_worker::{config, metrics};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The rows of the markdown tables in the section headed `<heading>` (any level, up to the next
/// heading), each as its cells.
fn table_rows(page: &str, heading: &str) -> Vec<Vec<String>> {
    let text = read(page);
    let level = |l: &str| l.chars().take_while(|c| *c == '#').count();
    let mut lines = text.lines().skip_while(|l| !(l.starts_with('#') && l.trim_start_matches('#').trim() == heading));
    let own = level(lines.next().unwrap_or_else(|| panic!("{page}: no heading {heading}")));
    lines
        .take_while(|l| !(l.starts_with("#") && level(l) <= own))
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .map(split_row)
        .collect()
}

/// A table row's cells (`\|` is a literal bar inside a cell).
fn split_row(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => cells.last_mut().unwrap().push(chars.next().unwrap()),
            '|' => cells.push(String::new()),
            _ => cells.last_mut().unwrap().push(c),
        }
    }
    cells.pop();
    cells.iter().map(|c| c.trim().to_string()).collect()
}

/// The `backticked` words of a cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The string literals of the first function `fn <name>` in a source file.
fn literals_of_fn(source: &str, name: &str) -> BTreeSet<String> {
    let start = source.find(&format!("pub fn {name}(&self) -> &'static str")).unwrap_or_else(|| panic!("no fn {name}"));
    let body = &source[start..];
    let end = body.find("\n    }\n").unwrap();
    body[..end].split('"').skip(1).step_by(2).map(str::to_string).collect()
}

#[test]
fn configuration_reference_documents_every_setting_read_exactly_once() {
    let rows = table_rows("docs/configuration.md", "Settings reference");
    let documented: Vec<String> =
        rows.iter().filter_map(|r| code_spans(&r[0]).first().cloned()).filter(|n| n != "Setting").collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in &documented {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "documented more than once: {twice:?}");
    let documented: BTreeSet<&str> = counts.keys().copied().collect();
    let read: BTreeSet<&str> = config::NAMES.iter().copied().collect();
    assert_eq!(documented.difference(&read).collect::<Vec<_>>(), Vec::<&&str>::new(), "documented but never read");
    assert_eq!(read.difference(&documented).collect::<Vec<_>>(), Vec::<&&str>::new(), "read but not documented");
    for name in ["UPLOAD_DEAD_LETTER_UNCHANGED", "UPLOAD_DEAD_LETTER_TABLE", "UPLOAD_ERROR_CLASS_OVERRIDES"] {
        assert!(documented.contains(name), "{name}");
    }
}

#[test]
fn error_table_lists_exactly_the_error_codes_the_worker_answers() {
    let mut answered = literals_of_fn(&read("src/error.rs"), "code");
    answered.extend(literals_of_fn(&read("src/keys.rs"), "code"));
    assert!(answered.contains("missing_authorization") && answered.contains("private_key_empty"), "{answered:?}");
    let rows = table_rows("docs/operations.md", "Errors");
    let header = &rows[0];
    let column = header.iter().position(|c| c == "`code`").expect("a `code` column");
    let documented: BTreeSet<String> = rows[1..].iter().flat_map(|r| code_spans(&r[column])).collect();
    assert_eq!(documented, answered);
}

#[test]
fn error_class_table_lists_the_bridges_own_failure_codes() {
    // Codes the bridge makes itself (not PostgreSQL's or PostgREST's), from the upload sources
    // outside their tests: `FailedOperation::new(.., "<code>", ..)` and the few made elsewhere.
    let mut made = BTreeSet::new();
    for file in ["outcome", "delivery", "plan", "mod", "dead_letter", "filter", "row", "crud"] {
        let source = read(&format!("src/upload/{file}.rs"));
        let source = source.split("#[cfg(test)]").next().unwrap();
        for part in source.split("FailedOperation::new(").skip(1) {
            // The second argument, when it is a literal: `(index, "code", ...`.
            let Some((_, rest)) = part.split_once(',') else { continue };
            if let Some(literal) = rest.trim_start().strip_prefix('"') {
                made.insert(literal.split('"').next().unwrap().to_string());
            }
        }
        for code in [
            "network_error",
            "timeout",
            "dead_letter_failed",
            "unexpected_response",
            "rejection_not_recorded",
            "table_not_in_upload_tables",
        ] {
            if source.contains(&format!("\"{code}\"")) {
                made.insert(code.to_string());
            }
        }
    }
    for code in [
        "invalid_id",
        "too_many_requests_for_budget",
        "table_not_in_upload_tables",
        "network_error",
        "timeout",
        "dead_letter_failed",
        "unexpected_response",
    ] {
        assert!(made.contains(code), "{code} is no longer made by the bridge: update this test and the table");
    }
    let rows = table_rows("docs/upload.md", "Error classes");
    let documented: BTreeSet<String> = rows.iter().flat_map(|r| code_spans(&r[0])).collect();
    let missing: Vec<_> = made.difference(&documented).collect();
    assert!(missing.is_empty(), "bridge codes missing from docs/upload.md \"Error classes\": {missing:?}");
}

#[test]
fn metrics_table_lists_the_data_point_columns_in_order() {
    let rows = table_rows("docs/metrics.md", "Fields");
    let named = |kind: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r[0].starts_with(kind) && r[0][kind.len()..].parse::<usize>().is_ok())
            .map(|r| r[1].clone())
            .collect()
    };
    for (i, row) in rows.iter().filter(|r| r[0].starts_with("blob")).enumerate() {
        assert_eq!(row[0], format!("blob{}", i + 1));
    }
    for (i, row) in rows.iter().filter(|r| r[0].starts_with("double")).enumerate() {
        assert_eq!(row[0], format!("double{}", i + 1));
    }
    assert_eq!(named("blob"), metrics::BLOBS);
    assert_eq!(named("double"), metrics::DOUBLES);
    assert_eq!(named("index"), ["user"]);
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with('#') {
            if let Some((_, heading)) = line.split_once(' ') {
                found.insert(slug(heading));
            }
        }
    }
    for part in text.split("<a id=\"").skip(1) {
        found.insert(part.split('"').next().unwrap().to_string());
    }
    found
}

#[test]
fn every_docs_page_is_linked_from_the_readme_and_no_link_is_broken() {
    let readme = read("README.md");
    let mut pages: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    pages.sort();
    for page in &pages {
        assert!(readme.contains(&format!("]({page})")), "README does not link {page}");
    }
    pages.push("README.md".into());
    for page in &pages {
        let text = read(page);
        let dir = Path::new(page).parent().unwrap();
        for link in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            if link.starts_with("http") || link.starts_with("mailto:") || link.contains(' ') {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if file.is_empty() { PathBuf::from(page) } else { dir.join(file) };
            let full = root().join(&target);
            assert!(full.exists(), "{page}: broken link {link}");
            if !anchor.is_empty() {
                let target_text = std::fs::read_to_string(&full).unwrap();
                assert!(anchors(&target_text).contains(anchor), "{page}: no anchor #{anchor} in {}", target.display());
            }
        }
    }
}
