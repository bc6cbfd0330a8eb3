//! `kombu transports`: what this binary can talk to.

use std::io::Write as _;

use serde_json::{json, Map, Value as Json};

use crate::cli::TransportsArgs;
use crate::error::{stdout_error, CliResult};
use crate::output::table;

/// Runs `kombu transports`.
pub(crate) fn run(args: &TransportsArgs) -> CliResult {
    let transports = kombu::transports();
    let mut lines = Vec::new();
    if args.json {
        let array: Vec<Json> = transports
            .iter()
            .map(|t| {
                let capabilities: Map<String, Json> = t
                    .capabilities
                    .rows()
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), Json::String(value)))
                    .collect();
                json!({
                    "name": t.name,
                    "schemes": t.schemes,
                    "kombu_feature": t.kombu_feature,
                    "description": t.description,
                    "capabilities": capabilities,
                })
            })
            .collect();
        lines.push(Json::Array(array).to_string());
    } else {
        let mut rows = vec![["transport", "URL schemes", "feature", "description"]
            .map(str::to_owned)
            .to_vec()];
        rows.extend(transports.iter().map(|t| {
            let schemes: Vec<String> = t.schemes.iter().map(|s| format!("{s}://")).collect();
            vec![
                t.name.to_owned(),
                schemes.join(" "),
                t.kombu_feature.unwrap_or("-").to_owned(),
                t.description.to_owned(),
            ]
        }));
        lines.extend(table(&rows));
        lines.push(String::new());
        // One column per transport, one row per capability, so transports compare at a glance.
        let mut header = vec!["capability".to_owned()];
        header.extend(transports.iter().map(|t| t.name.to_owned()));
        let columns: Vec<Vec<(&'static str, String)>> =
            transports.iter().map(|t| t.capabilities.rows()).collect();
        let mut rows = vec![header];
        let names = columns
            .first()
            .map(|c| c.iter().map(|(n, _)| *n).collect::<Vec<_>>());
        for (i, name) in names.unwrap_or_default().into_iter().enumerate() {
            let mut row = vec![name.to_owned()];
            row.extend(
                columns
                    .iter()
                    .map(|c| c.get(i).map(|(_, v)| v.clone()).unwrap_or_default()),
            );
            rows.push(row);
        }
        lines.extend(table(&rows));
    }
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}").map_err(stdout_error)?;
    }
    Ok(())
}
