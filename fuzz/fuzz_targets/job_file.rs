//! Fuzzes the job file parser, `pool_common::jobfile::parse`, with arbitrary text.
//!
//! It must never panic, and its errors must point inside the text: a location's line is
//! at most the number of lines + 1 (the line after a final newline, where "missing
//! field" errors may point), and its column at most that line's length + 1. Its error
//! message must display. A job file it accepts must hold the promises the client relies
//! on (at least one part, parameters its kind accepts, no more parts than the job
//! splits into, well-formed server addresses).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pool_common::jobfile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_an_absolute_servers_file(text) {
        // `servers_file` is read during parsing, relative to the job file's folder. That
        // folder does not exist here, so a relative name fails to open, harmlessly; an
        // absolute one would make the fuzzer read this machine's files (/dev/zero never
        // ends, /dev/stdin blocks), which tests nothing of the parser.
        return;
    }
    let path = Path::new("no-such-folder-pool-fuzz/job.toml");
    match jobfile::parse(text, path) {
        Ok(file) => check_accepted(&file),
        Err(error) => {
            let shown = error.to_string();
            assert!(!error.message.is_empty(), "an empty error message: {shown}");
            if let Some(at) = error.location {
                let lines = text.lines().count();
                assert!(
                    at.line >= 1 && at.line <= lines + 1,
                    "line {} of a {lines}-line text: {shown}",
                    at.line
                );
                // Split on '\n' alone: unlike `lines()` it keeps a line's '\r', which a
                // column may point at.
                let line_len = text.split('\n').nth(at.line - 1).map_or(0, str::len);
                assert!(
                    at.column >= 1 && at.column <= line_len + 1,
                    "column {} of a {line_len}-byte line: {shown}",
                    at.column
                );
            }
        }
    }
});

/// Whether the text, read as TOML, sets `servers_file` to an absolute path.
fn names_an_absolute_servers_file(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        return false;
    };
    match table.get("servers_file") {
        Some(toml::Value::String(name)) => Path::new(name).has_root(),
        _ => false,
    }
}

fn check_accepted(file: &jobfile::JobFile) {
    assert!(file.parts >= 1, "accepted parts = 0");
    for server in &file.servers {
        assert!(
            jobfile::check_address(server).is_ok(),
            "accepted server address {server:?}"
        );
    }
    if let Some(n) = file.local_servers {
        assert!((1..=jobfile::MAX_LOCAL_SERVERS as usize).contains(&n));
    }
    let parts = file.parts as u64;
    assert!(file.job.validate().is_ok(), "accepted invalid parameters");
    if let Some(units) = file.job.planned_units() {
        assert!(units >= 1, "accepted a job of no {}", file.job.unit());
        assert!(
            parts <= units,
            "accepted {parts} parts of {units} {}",
            file.job.unit()
        );
    }
}
