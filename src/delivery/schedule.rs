//! The retry schedule (Standard Webhooks: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
//! 14 h, 20 h, 24 h), its jitter, and `Retry-After`.

use std::time::Duration;

use chrono::{DateTime, Utc};

pub const DEFAULT: &str = "0s,5s,5m,30m,2h,5h,10h,14h,20h,24h";

/// Delays before each attempt: `delays[0]` before the first (normally 0), `delays[k]`
/// before attempt k+1. Its length is the number of attempts per event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub delays: Vec<Duration>,
}

impl Schedule {
    /// `"0s,5s,5m,30m,2h"`: numbers with a unit of ms, s, m or h.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let delays = spec
            .split(',')
            .map(str::trim)
            .map(|d| {
                parse_duration(d)
                    .ok_or_else(|| format!("`{d}` is not a delay like 500ms, 5s, 5m or 2h"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() {
            return Err("the schedule needs at least one entry".into());
        }
        Ok(Schedule { delays })
    }

    /// When attempt `failed + 1` may run after `failed` attempts at one event have failed,
    /// or `None` when the schedule is spent. Jitter of ±10% spreads a thundering herd;
    /// `retry_after` (the receiver's `Retry-After`) is a floor, capped at a day.
    pub fn next_attempt(
        &self,
        failed: usize,
        now: DateTime<Utc>,
        retry_after: Option<Duration>,
    ) -> Option<DateTime<Utc>> {
        let base = *self.delays.get(failed)?;
        let jittered = base.mul_f64(1.0 + (rand::random::<f64>() - 0.5) / 5.0);
        let floor = retry_after
            .unwrap_or_default()
            .min(Duration::from_secs(86_400));
        Some(now + jittered.max(floor))
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_and_spends_it() {
        let s = Schedule::parse(DEFAULT).unwrap();
        assert_eq!(s.delays.len(), 10);
        assert_eq!(s.delays[2], Duration::from_secs(300));
        let now = Utc::now();
        let next = s.next_attempt(1, now, None).unwrap();
        let secs = (next - now).num_milliseconds();
        assert!((4500..=5500).contains(&secs), "{secs}");
        assert_eq!(s.next_attempt(10, now, None), None);
        let floored = s
            .next_attempt(1, now, Some(Duration::from_secs(60)))
            .unwrap();
        assert_eq!((floored - now).num_seconds(), 60);
        assert!(Schedule::parse("0s,5x").unwrap_err().contains("5x"));
        assert_eq!(
            Schedule::parse("250ms").unwrap().delays,
            [Duration::from_millis(250)]
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
