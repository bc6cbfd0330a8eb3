//! Tests that the files naming transports (and the MSRV) agree: the transport table of
//! `lib.rs` against the descriptors, Cargo.toml, README.md and the xtask; one `rust-version`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{transport_table, TableEntry};

fn workspace_file(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
}

fn sorted<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = items.into_iter().collect();
    v.sort_unstable();
    v
}

/// The lines of one `[section]` of a TOML file (up to the next section header).
fn toml_section<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// `name = ["a", "b"]` lines of the `[features]` section (each on one line in this file).
fn cargo_features(manifest: &str) -> Vec<(String, Vec<String>)> {
    toml_section(manifest, "[features]")
        .into_iter()
        .map(|line| {
            let (name, list) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not a feature line: {line}"));
            let list = list.trim();
            assert!(
                list.starts_with('[') && list.ends_with(']'),
                "feature lists of crates/kombu/Cargo.toml stay on one line: {line}"
            );
            let values = list[1..list.len() - 1]
                .split(',')
                .map(|v| v.trim().trim_matches('"').to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            (name.trim().to_owned(), values)
        })
        .collect()
}

/// The optional dependencies of the `[dependencies]` section.
fn optional_dependencies(manifest: &str) -> Vec<String> {
    toml_section(manifest, "[dependencies]")
        .into_iter()
        .filter(|l| l.contains("optional = true"))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim().to_owned()))
        .collect()
}

/// The rows of README's `## Transports` table, as cells.
fn readme_transport_rows(readme: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim() != "## Transports")
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let header = cells(lines.next().unwrap_or_default());
    let rows = lines.skip(1).map(cells).collect();
    (header, rows)
}

/// The first `code` span of a Markdown cell.
fn first_code(cell: &str) -> Option<&str> {
    cell.split('`').nth(1)
}

/// The `(name, crate_name)` of each backend in `BACKENDS` in `xtask/src/backends.rs`.
fn xtask_backends(source: &str) -> Vec<(String, String)> {
    let start = source
        .find("static BACKENDS")
        .unwrap_or_else(|| panic!("xtask/src/backends.rs has no BACKENDS"));
    let list = &source[start..];
    let list = &list[..list.find("\n];").unwrap_or(list.len())];
    let field = |line: &str, key: &str| {
        line.trim()
            .strip_prefix(key)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_owned)
    };
    let names = list.lines().filter_map(|l| field(l, "name: \""));
    let crates = list.lines().filter_map(|l| field(l, "crate_name: \""));
    names.zip(crates).collect()
}

#[test]
fn registered_transports_are_the_enabled_entries_of_the_table() {
    let registered: Vec<&str> = sorted(super::transports().iter().map(|d| d.name));
    let enabled: Vec<&str> = sorted(
        transport_table()
            .iter()
            .filter_map(|e| e.descriptor)
            .map(|d| d.name),
    );
    assert_eq!(registered, enabled);
}

/// Whether the table's feature `name` is on in this build.
fn cfg_feature(name: &str) -> bool {
    transport_table()
        .iter()
        .find(|e| e.feature == name)
        .unwrap_or_else(|| panic!("no feature {name:?} in the transport table"))
        .descriptor
        .is_some()
}

#[test]
fn declared_aliases_resolve_and_nothing_else() {
    super::install_default_transports();
    let lookup = kombu_core::registry::lookup;
    if cfg!(feature = "redis") {
        for scheme in ["redis", "rediss", "redis+socket", "socket", "redis+unix"] {
            assert_eq!(lookup(scheme).map(|d| d.name).ok(), Some("redis"), "{scheme}");
        }
    }
    let err = lookup("redis+foo").unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::UnknownTransport);
    if cfg!(feature = "amqp-amiquip") {
        assert_eq!(lookup("amqp+amiquip").map(|d| d.name).ok(), Some("amqp-amiquip"));
        assert_eq!(
            lookup("pyamqp+amiquip").map(|d| d.name).ok(),
            Some("amqp-amiquip")
        );
    } else {
        let err = lookup("amqp+amiquip").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::UnknownTransport);
        assert!(err.to_string().contains("`amqp-amiquip` feature"), "{err}");
    }
    if cfg!(feature = "zookeeper") {
        assert_eq!(lookup("zookeeper").map(|d| d.name).ok(), Some("zookeeper"));
    }
    if cfg!(feature = "sqs") {
        assert_eq!(lookup("sqs").map(|d| d.name).ok(), Some("sqs"));
    }
    if cfg!(feature = "mongodb") {
        for scheme in ["mongodb", "mongodb+srv", "srv"] {
            assert_eq!(lookup(scheme).map(|d| d.name).ok(), Some("mongodb"), "{scheme}");
        }
    }
    for (scheme, feature) in [
        ("sqla+sqlite", "sqlite"),
        ("redis", "redis"),
        ("amqps", "amqp"),
        ("zookeeper", "zookeeper"),
        ("sqs", "sqs"),
        ("mongodb", "mongodb"),
        ("srv", "mongodb"),
    ] {
        if !cfg_feature(feature) {
            let err = lookup(scheme).unwrap_err();
            assert!(err.to_string().contains(&format!("`{feature}` feature")), "{err}");
        }
    }
}

/// One test, with every feature on, that fails when the descriptors, the facade's Cargo
/// features, `full`, `install_default_transports`, README's transport table and the xtask's
/// backend list disagree.
#[test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "needs every transport: run with --all-features"
)]
fn transport_table_agrees() {
    let table = transport_table();
    let manifest = workspace_file("crates/kombu/Cargo.toml");
    let features = cargo_features(&manifest);
    let feature = |name: &str| features.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let full = feature("full").unwrap_or_else(|| panic!("no `full` feature"));

    let mut names = BTreeSet::new();
    let mut schemes = BTreeSet::new();
    for entry in &table {
        let TableEntry {
            krate,
            crate_feature,
            feature: name,
            ..
        } = entry;
        // The descriptor: compiled in (every feature is on), naming this feature, declaring
        // exactly the table's schemes.
        let descriptor = entry
            .descriptor
            .unwrap_or_else(|| panic!("{name}: not compiled in although `full` is on"));
        assert_eq!(descriptor.kombu_feature, Some(*name), "{entry:?}");
        assert_eq!(
            sorted(descriptor.schemes.iter().copied()),
            sorted(entry.schemes.iter().copied())
        );
        assert!(
            names.insert(descriptor.name),
            "two descriptors named {}",
            descriptor.name
        );
        for scheme in descriptor.schemes {
            assert_eq!(*scheme, scheme.to_ascii_lowercase(), "schemes are lower case");
            assert!(schemes.insert(*scheme), "two descriptors serve {scheme}");
        }
        // Cargo.toml: the feature exists, is in `full`, and the crate's feature enables it.
        let enables = feature(name).unwrap_or_else(|| panic!("Cargo.toml has no feature `{name}`"));
        assert!(full.iter().any(|f| f == name), "`full` lacks `{name}`");
        let dependency = krate.replace('_', "-");
        let crate_enables = feature(crate_feature).unwrap_or_else(|| panic!("no feature `{crate_feature}`"));
        assert!(
            crate_enables.contains(&format!("dep:{dependency}")),
            "feature `{crate_feature}` must enable dep:{dependency}"
        );
        assert!(
            name == crate_feature || enables.iter().any(|f| f == crate_feature),
            "feature `{name}` must enable `{crate_feature}`"
        );
    }

    // Every transport crate the facade can depend on is in the table.
    let crates: BTreeSet<String> = table.iter().map(|e| e.krate.replace('_', "-")).collect();
    for dependency in optional_dependencies(&manifest) {
        if dependency.starts_with("kombu-") {
            assert!(
                crates.contains(&dependency),
                "{dependency} is not in the transport table"
            );
        }
    }

    // Everything registered in this (full) build is in the table, and the reverse.
    let registered: BTreeSet<&str> = super::transports().iter().map(|d| d.name).collect();
    assert_eq!(registered, names, "registered transports vs the table");

    // README: one row per descriptor, by its feature; `(default)` exactly on default features.
    let readme = workspace_file("README.md");
    let (header, rows) = readme_transport_rows(&readme);
    let column = header
        .iter()
        .position(|h| h == "`kombu` feature")
        .unwrap_or_else(|| panic!("README's transport table has no `kombu` feature column: {header:?}"));
    let defaults = feature("default").cloned().unwrap_or_default();
    let mut documented = Vec::new();
    for row in &rows {
        let cell = &row[column];
        let name = first_code(cell).unwrap_or_else(|| panic!("README row without a feature: {row:?}"));
        assert!(
            table.iter().any(|e| e.feature == name),
            "README's row for `{name}` names no transport of the table (planned transports \
             are listed below the table, not in it): {row:?}"
        );
        assert_eq!(
            cell.contains("(default)"),
            defaults.iter().any(|d| d == name),
            "README marks `(default)` on default features only: {row:?}"
        );
        documented.push(name);
    }
    assert_eq!(
        sorted(documented),
        sorted(table.iter().map(|e| e.feature)),
        "README's transport table: one row per transport"
    );

    // xtask: the test matrix runs every transport.
    // Other rows are third-party examples (the toy transport): crates the facade does not use.
    let backends = xtask_backends(&workspace_file("xtask/src/backends.rs"));
    let facade_manifest = workspace_file("crates/kombu/Cargo.toml");
    let (ours, third_party): (Vec<_>, Vec<_>) = backends
        .iter()
        .partition(|(name, _)| names.contains(name.as_str()));
    assert_eq!(
        ours.iter()
            .map(|(name, _)| name.as_str())
            .collect::<BTreeSet<_>>(),
        names,
        "xtask/src/backends.rs BACKENDS vs the transports"
    );
    for (name, crate_name) in third_party {
        assert!(
            !facade_manifest.contains(&format!("{crate_name} =")),
            "backend {name}: {crate_name} is a dependency of the facade but not in its transport table"
        );
    }
}

/// One MSRV: the workspace's `rust-version`, inherited by every package and stated in README.
#[test]
fn one_msrv_for_every_crate_and_the_readme() {
    let root = workspace_file("Cargo.toml");
    let msrv = toml_section(&root, "[workspace.package]")
        .into_iter()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("the workspace has no rust-version"));
    let crates = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut manifests: Vec<String> = std::fs::read_dir(&crates)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", crates.display()))
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .map(|entry| format!("crates/{}/Cargo.toml", entry.file_name().to_string_lossy()))
        .collect();
    manifests.push("xtask/Cargo.toml".into());
    for manifest in manifests {
        let text = workspace_file(&manifest);
        assert!(
            toml_section(&text, "[package]").contains(&"rust-version.workspace = true"),
            "{manifest} must inherit the workspace's rust-version"
        );
    }
    assert!(
        workspace_file("README.md").contains(&format!("stable ≥ {msrv}")),
        "README must state the MSRV {msrv}"
    );
}
