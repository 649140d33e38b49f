//! Checks the configuration reference, docs/configuration.md, against the variable registry
//! (`kinesis_common::config`), so the documentation cannot drift from the code:
//!
//! - every variable a service reads has a row in the table of its section (`## Both services`,
//!   `## Producer`, `## Consumer`), and the row's default is the registry's;
//! - every row names only variables the services read, or standard names the AWS SDK and the
//!   log filter read (`STANDARD_VARS`), so a renamed or removed variable cannot stay documented.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kinesis_common::config::vars::{
    VarSpec, CONSUMER_VARS, PRODUCER_VARS, SHARED_VARS, STANDARD_VARS,
};

const REFERENCE: &str = "docs/configuration.md";

/// One table row of the reference: the variable names of its first cell and its default cell.
struct Row {
    names: Vec<String>,
    default: String,
}

/// The table rows of each `## ` section of the reference, by section title.
fn sections() -> BTreeMap<String, Vec<Row>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REFERENCE);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut sections: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            current = Some(title.trim().to_string());
            sections.entry(title.trim().to_string()).or_default();
            continue;
        }
        let (Some(section), Some(row)) = (&current, line.strip_prefix("| `")) else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let names = cells[0]
            .split('`')
            .filter(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
            .map(str::to_string)
            .collect();
        let default = cells.get(1).copied().unwrap_or_default().to_string();
        if let Some(rows) = sections.get_mut(section) {
            rows.push(Row { names, default });
        }
    }
    sections
}

#[test]
fn every_variable_is_documented_in_its_section_with_its_default() {
    let sections = sections();
    let expected: [(&str, &[VarSpec]); 3] = [
        ("Both services", SHARED_VARS),
        ("Producer", PRODUCER_VARS),
        ("Consumer", CONSUMER_VARS),
    ];
    let mut problems = Vec::new();
    for (title, vars) in expected {
        let Some(rows) = sections.get(title) else {
            problems.push(format!("{REFERENCE} has no section \"## {title}\""));
            continue;
        };
        for var in vars {
            match rows
                .iter()
                .find(|row| row.names.iter().any(|n| n == var.name))
            {
                None => problems.push(format!(
                    "{} is not documented under \"## {title}\" of {REFERENCE}",
                    var.name
                )),
                Some(row) => {
                    if let Some(default) = var.default {
                        if !row.default.contains(&format!("`{default}`")) {
                            problems.push(format!(
                                "{}: {REFERENCE} gives the default as {:?}, the code `{default}`",
                                var.name, row.default
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reference_documents_only_variables_that_are_read() {
    let known: Vec<&str> = SHARED_VARS
        .iter()
        .chain(PRODUCER_VARS)
        .chain(CONSUMER_VARS)
        .map(|var| var.name)
        .chain(STANDARD_VARS.iter().copied())
        .collect();
    let mut rows = 0;
    let mut unknown = Vec::new();
    for (title, section) in sections() {
        for row in section {
            rows += 1;
            for name in row.names {
                if !known.contains(&name.as_str()) {
                    unknown.push(format!("{name} (under \"## {title}\")"));
                }
            }
        }
    }
    assert!(
        rows > 40,
        "only {rows} table rows found in {REFERENCE}: is it still a table?"
    );
    assert!(
        unknown.is_empty(),
        "{REFERENCE} documents variables no service reads: {}",
        unknown.join(", ")
    );
}
