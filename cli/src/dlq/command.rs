//! `backstop dlq`: the command line over the DLQ library. Each action opens
//! the DLQ, runs, and returns what to print; a listing streams to stdout.

use std::io::Write as _;

use super::{Dlq, Filter, Letter, Watch, export, table};
use crate::args::DlqAction;
use crate::error::CliError;

/// Runs one `dlq` action; returns what to print on stdout.
pub async fn run(action: &DlqAction) -> Result<String, CliError> {
    match action {
        DlqAction::List {
            target,
            filter,
            all,
            json,
        } => {
            let filter = Filter::parse(filter)?;
            let dlq = Dlq::open(target).await?;
            // Streamed to stdout from the listing on disk: memory does not
            // grow with the DLQ.
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let io = |source| CliError::Io {
                path: "stdout".into(),
                source,
            };
            if *json {
                let listing = dlq
                    .list(*all, &filter, |l| {
                        let mut json = export::LetterJson::of(l);
                        json.copies = 1; // the final count is added when printed
                        serde_json::to_string(&json).map_err(|e| io(e.into()))
                    })
                    .await?;
                listing.each(|line, copies| {
                    let line = export::with_copies(line, copies);
                    writeln!(out, "{}", table::json_safe(&line)).map_err(io)
                })?;
            } else {
                let listing = dlq.list(*all, &filter, |l| Ok(table::row(l))).await?;
                table::write_table(&listing, &mut out)?;
            }
            out.flush().map_err(io)?;
            Ok(String::new())
        }
        DlqAction::Show {
            target,
            message_id,
            json,
        } => {
            let mut found: Option<Letter> = None;
            let mut copies = 0;
            Dlq::open(target)
                .await?
                .each(
                    true,
                    |l| {
                        if l.id() == message_id {
                            found = Some(l);
                        }
                        Ok(())
                    },
                    |id| copies += u32::from(id == message_id),
                )
                .await?;
            let mut letter = found.ok_or_else(|| CliError::NotFound(message_id.clone()))?;
            letter.copies += copies;
            if *json {
                Ok(table::json_safe(
                    &serde_json::to_string_pretty(&export::LetterJson::of(&letter))
                        .unwrap_or_default(),
                ) + "\n")
            } else {
                Ok(table::render_letter(&letter))
            }
        }
        DlqAction::Export {
            target,
            filter,
            all,
            out,
        } => {
            let filter = Filter::parse(filter)?;
            let dlq = Dlq::open(target).await?;
            let mut writer = export::Writer::create(out)?;
            let mut copies = 0usize;
            dlq.each(
                *all,
                |l| {
                    if filter.matches(&l) {
                        writer.write(&l)?;
                    }
                    Ok(())
                },
                |_| copies += 1,
            )
            .await?;
            let n = writer.finish()?;
            let mut text = format!("exported {n} message(s) to {out}\n");
            if copies > 0 {
                text.push_str(&format!(
                    "skipped {copies} extra copy(ies) of letters (same message id)\n"
                ));
            }
            Ok(text)
        }
        DlqAction::Import { target, input } => {
            let report = Dlq::open(target).await?.import(input).await?;
            Ok(format!(
                "imported {} message(s) from {input}; {} already in the DLQ (skipped)\n",
                report.imported, report.present
            ))
        }
        DlqAction::Replay(args) => {
            let filter = Filter::parse(&args.filter)?;
            let report = Dlq::open(&args.target)
                .await?
                .replay(&filter, &args.into())
                .await?;
            Ok(report.render())
        }
        DlqAction::Purge {
            target,
            filter,
            all,
            yes,
        } => {
            if filter.is_empty() && !*all {
                return Err(CliError::Usage(
                    "purge needs a filter (--error, --kind, --source, --key, --id, --since, --until) or --all".into(),
                ));
            }
            if !*yes {
                return Err(CliError::Usage(
                    "purge deletes dead letters for good: add --yes to confirm (export them first if unsure)".into(),
                ));
            }
            let filter = Filter::parse(filter)?;
            let report = Dlq::open(target)
                .await?
                .purge(&filter, &Watch::default())
                .await?;
            Ok(report.render())
        }
    }
}
