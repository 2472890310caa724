//! The operator subcommands: each returns whether it succeeded (the exit code) and prints
//! a report people can read; progress and logs go to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sqlx::{Connection, PgConnection};

use crate::audit;
use crate::config::{ExportArgs, RebuildArgs, VerifyArgs};
use crate::db;
use crate::projections::{self, rebuild, Definition};

/// `rebuild-projections`: exit 0 after a swap whose balance check held (differences in
/// the live tables are then repaired, and listed), or after a clean `--verify-only`.
pub async fn rebuild_projections(args: RebuildArgs) -> anyhow::Result<bool> {
    let defs: Vec<&'static Definition> = if args.projections.is_empty() {
        projections::DEFINITIONS.iter().collect()
    } else {
        args.projections
            .iter()
            .map(|n| {
                Definition::find(n).with_context(|| {
                    let names: Vec<_> = projections::DEFINITIONS.iter().map(|d| d.name).collect();
                    format!("no projection `{n}` (there are: {})", names.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let pool = db::connect(&args.db, 3).await?;
    let mut lock = pool.acquire().await?;
    let got = sqlx::query_scalar!("SELECT pg_try_advisory_lock($1)", rebuild::STARTUP_LOCK)
        .fetch_one(&mut *lock)
        .await?;
    if got != Some(true) {
        anyhow::bail!("another rebuild is running (or a service is starting up); try again");
    }
    let mode = if args.verify_only {
        rebuild::Mode::VerifyOnly
    } else {
        rebuild::Mode::Swap
    };
    let report =
        rebuild::rebuild(&pool, &defs, mode, true, &rebuild::Progress::for_stderr()).await?;
    drop(lock); // the session ends with the pool; the lock with it
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "replayed {} events and journal entries up to position {} in {:.1} s ({:.0}/s)",
        report.replayed,
        report.position,
        report.seconds,
        report.replayed as f64 / report.seconds.max(1e-9)
    )?;
    for t in &report.tables {
        match (&t.live_digest, t.identical()) {
            (None, _) => writeln!(
                out,
                "  {:<24} live table missing; rebuilt {}",
                t.table, t.rebuilt_digest
            )?,
            (Some(d), true) => writeln!(out, "  {:<24} identical  md5 {d}", t.table)?,
            (Some(d), false) => {
                writeln!(
                    out,
                    "  {:<24} DIFFERS    live md5 {d}, rebuilt md5 {}",
                    t.table, t.rebuilt_digest
                )?;
                for k in &t.keys {
                    writeln!(out, "      key {k}")?;
                }
                if t.more {
                    writeln!(out, "      … and more")?;
                }
            }
        }
    }
    if defs.iter().any(|d| d.source == projections::Source::Log) {
        if report.balance_mismatches.is_empty() {
            writeln!(
                out,
                "balances: equal to an independent aggregate over the log ({} accounts)",
                report.balance_accounts
            )?;
        } else {
            writeln!(
                out,
                "balances: the REBUILT balances disagree with the log's aggregate:"
            )?;
            for m in &report.balance_mismatches {
                writeln!(out, "  {m}")?;
            }
        }
    }
    let names: Vec<_> = defs.iter().map(|d| d.name).collect();
    let ok = if report.swapped {
        let repaired = report.tables.iter().filter(|t| !t.identical()).count();
        writeln!(
            out,
            "swapped in: {} ({repaired} tables repaired)",
            names.join(", ")
        )?;
        true
    } else if args.verify_only {
        writeln!(
            out,
            "verify only: nothing changed; the live tables {}",
            if report.clean() {
                "match the log"
            } else {
                "DIFFER from the log"
            }
        )?;
        report.clean()
    } else {
        writeln!(
            out,
            "nothing swapped: the rebuild did not pass its balance check"
        )?;
        false
    };
    Ok(ok)
}

/// `audit-export`.
pub async fn audit_export(args: ExportArgs) -> anyhow::Result<bool> {
    let mut conn = PgConnection::connect(&args.db.database_url)
        .await
        .context("cannot reach the database")?;
    let written = match &args.out {
        Some(path) => {
            let partial = partial_path(path);
            let written = export_to(&mut conn, &args, &partial, path).await;
            if written.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            written?
        }
        None => {
            let mut w = std::io::BufWriter::new(std::io::stdout().lock());
            audit::export(&mut conn, args.format, args.from, args.to, &mut w).await?
        }
    };
    tracing::info!(events = written, "audit export written");
    Ok(true)
}

/// Where `--out PATH` is written until it is complete: beside it (a rename within one
/// directory is atomic), hidden, named for this process.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// The export written to `partial`, synced, then renamed to `path` (and the directory
/// synced): `path` is the whole export or untouched, whenever the process dies.
async fn export_to(
    conn: &mut PgConnection,
    args: &ExportArgs,
    partial: &Path,
    path: &Path,
) -> anyhow::Result<u64> {
    let file = std::fs::File::create(partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let written = audit::export(conn, args.format, args.from, args.to, &mut w).await?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", partial.display()))?;
    std::fs::rename(partial, path)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
    Ok(written)
}

/// `verify-log`: exit 0 only when every check holds.
pub async fn verify_log(args: VerifyArgs) -> anyhow::Result<bool> {
    let (what, verified) = match &args.file {
        Some(path) => (
            path.display().to_string(),
            audit::verify_file(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => {
            let url = args
                .database_url
                .as_deref()
                .context("set DATABASE_URL (or --database-url), or give --file")?;
            let mut conn = PgConnection::connect(url)
                .await
                .context("cannot reach the database")?;
            (
                "the database's log".to_string(),
                audit::verify_db(&mut conn, args.from).await?,
            )
        }
    };
    let range = match (verified.first, verified.last) {
        (Some(a), Some(b)) => format!("positions {a}..{b}"),
        _ => "no events".into(),
    };
    match &verified.bad {
        None => {
            println!("ok: {what}: {} events checked ({range}): hash chain intact, positions gapless, ids unique", verified.checked);
            Ok(true)
        }
        Some(bad) => {
            println!(
                "FAILED: {what}: {bad} ({} events before it checked)",
                verified.checked
            );
            Ok(false)
        }
    }
}
