//! Script handlers: a subscriber whose target is a command (`{"command": [path, args…]}`),
//! run once per event when the operator enables them (SCRIPT_HANDLERS). The event is in
//! the environment (`CHAINLEDGER_EVENT_NAME`/`_DATA`, and cryptoassets.core's
//! `CRYPTOASSETS_EVENT_NAME`/`_DATA` when the event is a txupdate); exit status 0
//! acknowledges it, anything else is a failure retried on the webhook schedule.
//!
//! The command runs without a shell, with an environment of its own (`PATH`, `HOME`,
//! `LANG` and the event: the service's secrets are not passed on), stdin closed, in its
//! own process group: a timeout kills the group, so a script's children go too.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Longest stderr/stdout tail kept in a failure's error.
const ERROR_TAIL: usize = 300;

/// Checks a command when a subscriber is created: a non-empty argv whose program is an
/// absolute path to an executable file.
pub fn check_command(argv: &[String]) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err("must name a program: [\"/path/to/handler\", args…]".into());
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("must not contain NUL characters".into());
    }
    let path = Path::new(program);
    if !path.is_absolute() {
        return Err(format!("{program}: the program must be an absolute path"));
    }
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!("{program}: not an executable file")),
        Err(e) => Err(format!("{program}: {e}")),
    }
}

/// Runs the command once with these environment variables; Ok when it exits 0.
pub async fn run(argv: &[String], env: &[(&str, String)], timeout: Duration) -> Result<(), String> {
    let program = argv.first().ok_or("no program")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(
            ["PATH", "HOME", "LANG"]
                .into_iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k, v))),
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => {
            if !out.stdout.is_empty() {
                tracing::debug!(program, stdout = %tail(&out.stdout), "script handler output");
            }
            Ok(())
        }
        Ok(Ok(out)) => {
            let said = if out.stderr.is_empty() {
                &out.stdout
            } else {
                &out.stderr
            };
            let mut e = format!("{program} failed: {}", out.status);
            if !said.is_empty() {
                e.push_str(": ");
                e.push_str(&tail(said));
            }
            Err(e)
        }
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Err(_) => {
            // Dropping the child killed it; its process group (what it started) goes too.
            if let Some(pid) = pid {
                // SAFETY: kill(2) with a negative pid signals that process group; no memory
                // is involved.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            Err(format!(
                "{program} timed out after {} ms and was killed",
                timeout.as_millis()
            ))
        }
    }
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| s.len() - i <= ERROR_TAIL)
        .unwrap_or(s.len());
    s[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn exit_status_environment_and_timeout() {
        let sh = |script: &str| argv(&["/bin/sh", "-c", script]);
        run(&sh("exit 0"), &[], Duration::from_secs(5))
            .await
            .unwrap();
        let e = run(&sh("echo nope >&2; exit 3"), &[], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.contains("exit status: 3") && e.contains("nope"), "{e}");
        let env = [("CHAINLEDGER_EVENT_NAME", "deposit.seen".to_string())];
        run(
            &sh("test \"$CHAINLEDGER_EVENT_NAME\" = deposit.seen"),
            &env,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        // The service's own environment is not passed on.
        std::env::set_var("CHAINLEDGER_SCRIPT_TEST_SECRET", "x");
        run(
            &sh("test -z \"$CHAINLEDGER_SCRIPT_TEST_SECRET\""),
            &[],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        // A timeout kills the script and what it started.
        let pids = std::env::temp_dir().join(format!("chainledger-script-{}", std::process::id()));
        let script = format!(
            "echo $$ > {0}; sleep 30 & echo $! >> {0}; wait",
            pids.display()
        );
        let e = run(&sh(&script), &[], Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        let pids = std::fs::read_to_string(&pids).unwrap();
        assert_eq!(pids.lines().count(), 2);
        for pid in pids.lines() {
            let stat = format!("/proc/{pid}/stat");
            let mut gone = false;
            for _ in 0..50 {
                // Gone, or a zombie waiting to be reaped: not running either way.
                gone = std::fs::read_to_string(&stat).map_or(true, |s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                });
                if gone {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(gone, "process {pid} survived the timeout");
        }
    }

    #[test]
    fn commands_are_checked() {
        assert!(check_command(&argv(&["/bin/sh", "-c", "true"])).is_ok());
        assert!(check_command(&[]).is_err());
        assert!(check_command(&argv(&["sh"]))
            .unwrap_err()
            .contains("absolute"));
        assert!(check_command(&argv(&["/etc/passwd"])).is_err());
        assert!(check_command(&argv(&["/no/such/handler"])).is_err());
    }
}
