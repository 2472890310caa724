//! Rebuild progress: an indicatif bar on a terminal, a log line every 2 s otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How progress is shown: a bar on a terminal, log lines otherwise.
pub enum Progress {
    Bar,
    Log,
}

impl Progress {
    pub fn for_stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Log
        }
    }
}

/// Progress: an indicatif bar (events replayed, rate, ETA) or a log line every 2 s.
pub(super) struct Meter {
    bar: Option<indicatif::ProgressBar>,
    log: Option<Mutex<(Instant, u64, u64)>>,
    started: Instant,
}

impl Meter {
    pub(super) fn new(progress: &Progress, total: u64) -> Meter {
        let started = Instant::now();
        match progress {
            Progress::Bar => {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} replaying [{bar:40}] {human_pos}/{human_len} events  {per_sec}  ETA {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                Meter {
                    bar: Some(bar),
                    log: None,
                    started,
                }
            }
            Progress::Log => Meter {
                bar: None,
                log: Some(Mutex::new((started, 0, total))),
                started,
            },
        }
    }

    pub(super) fn silent() -> Meter {
        Meter {
            bar: None,
            log: None,
            started: Instant::now(),
        }
    }

    pub(super) fn add(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(log) = &self.log {
            let mut l = log.lock().expect("meter");
            l.1 += n;
            if l.0.elapsed() >= Duration::from_secs(2) {
                l.0 = Instant::now();
                let rate = l.1 as f64 / self.started.elapsed().as_secs_f64();
                tracing::info!(
                    replayed = l.1,
                    total = l.2,
                    rate = rate as u64,
                    "rebuilding projections"
                );
            }
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
