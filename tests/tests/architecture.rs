//! ARCHITECTURE.md's crate table is the crate graph: every workspace crate
//! is a row, at its path, depending on exactly the workspace crates its row
//! names (normal dependencies; dev-dependencies are the tests' business).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use cnpilot_e2e::workspace_root;

type Graph = BTreeMap<String, (String, BTreeSet<String>)>;

fn documented() -> Graph {
    let text = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).unwrap();
    let start = text
        .find("<!-- crate-table")
        .expect("ARCHITECTURE.md has a crate-table marker");
    let end = text
        .find("<!-- end crate-table -->")
        .expect("and its end marker");
    let unquote = |cell: &str| cell.trim().trim_matches('`').to_string();
    let mut graph = Graph::new();
    for line in text[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        assert_eq!(cells.len(), 4, "a crate row has 4 cells: {line}");
        let deps = cells[3]
            .split(',')
            .map(unquote)
            .filter(|d| !d.is_empty() && d != "—")
            .collect();
        graph.insert(unquote(cells[0]), (unquote(cells[1]), deps));
    }
    graph
}

fn actual() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = workspace_root().canonicalize().unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let manifest = std::path::PathBuf::from(p["manifest_path"].as_str().unwrap());
            let dir = manifest.parent().unwrap().strip_prefix(&root).unwrap();
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|d| members.contains(d))
                .collect();
            (
                p["name"].as_str().unwrap().to_string(),
                (format!("{}/", dir.display()), deps),
            )
        })
        .collect()
}

#[test]
fn the_crate_table_is_the_crate_graph() {
    let (doc, real) = (documented(), actual());
    assert!(doc.len() >= 7, "the table lost rows: {doc:#?}");
    assert_eq!(doc, real, "ARCHITECTURE.md's crate table vs cargo metadata");
}
