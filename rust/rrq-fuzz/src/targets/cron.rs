//! `cron`: schedule validation and parsing, and the tick arithmetic the cron
//! loop runs on a parsed schedule.
//!
//! The input is text: line 1 is the schedule, line 2 (optional) an IANA time
//! zone, line 3 (optional) an epoch-ms instant, 2023-11-14 when absent. The
//! next tick must be strictly after the instant, and the catch-up tick (the
//! latest at or before it) must not be after it: the cron loop relies on
//! both to move forward and never enqueue a tick early. And an accepted
//! schedule must fire: validation rejects schedules that never do.
//!
//! Found here: schedules that match no date or time (`0 0 30 2 *`,
//! `0 , L * *`) were accepted, and each tick search on one scanned day by day
//! to croner's horizon, year 5000 (about 0.25 s in an optimized build, more
//! than the 1 s limit for the two searches unoptimized); `validate_schedule`
//! now rejects them.

use arbitrary::Unstructured;
use chrono_tz::Tz;
use rrq::config::validate_schedule;
use rrq::cron::{catch_up_tick, next_tick_after, parse_schedule};

use crate::Target;

/// See the module documentation.
pub const TARGET: Target = Target {
    name: "cron",
    about: "validate_schedule, parse_schedule, next/latest/catch-up tick in a time zone",
    run,
    generate,
    dictionary: DICTIONARY,
    alloc_limit: crate::alloc::DEFAULT_LIMIT,
    seeds,
};

const DICTIONARY: &[&[u8]] = &[
    b"*",
    b"*/",
    b"/",
    b"-",
    b",",
    b"?",
    b"L",
    b"W",
    b"#",
    b"LW",
    b"5L",
    b"L-3",
    b"15W",
    b"MON",
    b"FRI",
    b"SUN",
    b"JAN",
    b"DEC",
    b"@daily",
    b"@hourly",
    b"@yearly",
    b"@reboot",
    b" ",
    b"\t",
    b"\n",
    b"0",
    b"59",
    b"60",
    b"23",
    b"31",
    b"32",
    b"12",
    b"13",
    b"7",
    b"8",
    b"1-5",
    b"2/3",
    b"*/0",
    b"Europe/Paris",
    b"America/New_York",
    b"UTC",
    b"Pacific/Apia",
    b"Asia/Kolkata",
];

/// 4500-01-01T00:00:00Z.
const YEAR_4500_MS: i64 = 79_839_129_600_000;

/// The instant when the input names none.
const DEFAULT_INSTANT: i64 = 1_700_000_000_000;

fn run(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let schedule = lines.next().unwrap_or("");
    let tz = match lines.next() {
        Some(name) => match name.trim().parse::<Tz>() {
            Ok(tz) => tz,
            Err(_) => Tz::UTC,
        },
        None => Tz::UTC,
    };
    let valid = validate_schedule(schedule).is_ok();
    let Ok(cron) = parse_schedule(schedule) else {
        return Ok(());
    };
    if !valid {
        return Err("parse_schedule accepted what validate_schedule rejected".to_owned());
    }
    let at = lines
        .next()
        .and_then(|l| l.trim().parse::<i64>().ok())
        .unwrap_or(DEFAULT_INSTANT);
    match next_tick_after(&cron, tz, at) {
        Some(next) if next <= at => {
            return Err(format!(
                "{schedule:?} in {tz}: next tick after {at} is {next}"
            ));
        }
        // Validation rejects schedules that never fire, and the calendar
        // repeats every 400 years: an accepted one fires before croner's
        // horizon (year 5000) from any instant before 4500.
        None if (0..YEAR_4500_MS).contains(&at) => {
            return Err(format!(
                "{schedule:?} in {tz} was accepted but has no tick after {at}"
            ));
        }
        _ => {}
    }
    // With an unbounded grace this is the latest tick at or before `at`.
    if let Some(tick) = catch_up_tick(&cron, tz, at, i64::MAX)
        && tick > at
    {
        return Err(format!(
            "{schedule:?} in {tz}: catch-up tick {tick} is after now {at}"
        ));
    }
    Ok(())
}

const FIELD_ATOMS: &[&str] = &[
    "*", "0", "1", "5", "7", "12", "15", "23", "29", "30", "31", "59", "60", "L", "W", "?", "MON",
    "SUN", "FEB", "DEC", "5L", "15W", "LW", "2#3", "MON#5", "L-2",
];

fn field(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let mut parts = Vec::new();
    for _ in 0..u.int_in_range(1..=3)? {
        let mut p = (*u.choose(FIELD_ATOMS)?).to_owned();
        match u.int_in_range(0..=5)? {
            0 => {
                p.push('-');
                p.push_str(u.choose(FIELD_ATOMS)?);
            }
            1 => {
                p.push('/');
                p.push_str(u.choose(&["0", "1", "2", "7", "61", "100"])?);
            }
            _ => {}
        }
        parts.push(p);
    }
    Ok(parts.join(","))
}

fn generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let n = *u.choose(&[5, 5, 6, 6, 4, 7])?;
    let fields: Vec<String> = (0..n).map(|_| field(u)).collect::<arbitrary::Result<_>>()?;
    let mut text = fields.join(" ");
    if u.ratio(1, 2)? {
        text.push('\n');
        text.push_str(u.choose(&[
            "UTC",
            "Europe/Paris",
            "America/New_York",
            "Pacific/Apia",
            "Australia/Lord_Howe",
            "Nope/Zone",
        ])?);
        if u.ratio(1, 2)? {
            text.push('\n');
            let at = if u.ratio(1, 2)? {
                super::frame::edgy_i64(u)?
            } else {
                *u.choose(&[
                    1_711_846_800_000,   // 2024-03-31 01:00 UTC: DST starts in Europe
                    253_402_300_799_000, // 9999-12-31 23:59:59 UTC
                    -62_135_596_800_000, // 0001-01-01
                    95_617_584_000_000,  // 5000-01-01
                    0,
                ])?
            };
            text.push_str(&at.to_string());
        }
    }
    Ok(text.into_bytes())
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    [
        ("every-minute", "* * * * *"),
        ("every-second", "* * * * * *"),
        ("nine-daily-seconds", "0 0 9 * * *"),
        ("weekdays", "30 8 * * MON-FRI\nEurope/Paris\n1711846800000"),
        ("step", "*/15 * * * *\nAmerica/New_York"),
        ("last-day", "0 0 L * *"),
        ("nearest-weekday", "0 12 15W * *"),
        ("nth-weekday", "0 0 * * MON#2"),
        ("leap-day", "0 0 29 2 *\nUTC\n1700000000000"),
        ("never", "0 0 30 2 *"),
        ("list-range", "0,30 9-17/2 1,15 1-6 *"),
        ("dst-gap", "30 2 * * *\nEurope/Paris\n1711846800000"),
        ("too-few-fields", "* * * *"),
        ("too-many-fields", "* * * * * * *"),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_owned(), text.as_bytes().to_vec()))
    .collect()
}
