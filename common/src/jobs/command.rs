//! The `command` job: the user's own program, run once per part.
//!
//! ```toml
//! [job]
//! kind = "command"
//! command = ["python3", "count.py", "{lo}", "{hi}"]
//! range = 1_000_000
//! files = ["count.py"]
//! combine = "sum"
//! ```
//!
//! The index space `[0, range)` splits into parts like a loop's. Each part runs the
//! command once, with `{part}`, `{parts}`, `{lo}` and `{hi}` in its words replaced by
//! the part's index, the number of parts and its range (`{{` and `}}` are literal
//! braces). The words are the program's arguments as they are: no shell ever sees them.
//!
//! The part runs in the job's work folder ([`JobInputs::work_dir`]), which holds the
//! `files` shipped with the job, as a child process in a process group of its own, with
//! standard input empty, an environment of `PATH`, `HOME` (the work folder) and
//! `POOL_PART`, `POOL_PARTS`, `POOL_LO`, `POOL_HI`, its standard output kept up to
//! `max_output_bytes` and the end of its standard error kept for error messages. When
//! the part is cancelled (its client cancels it or goes away, another server's copy
//! won, the server stops) the whole process group is killed, and it is killed again
//! when the program exits, so nothing it started in the background outlives the part.
//!
//! A program that fails (a non-zero exit, a signal, output that `combine` cannot read)
//! is the user's error, not the server's: the part's result is a [`CommandFailure`],
//! and the client stops the job and shows it instead of trying other servers.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::inputs::check_input_name;
use super::{
    output_file, CancelFlag, Cancelled, Chunk, JobInputs, Kind, ParamError, PartRange, Program,
    SharedInput,
};

/// The standard output a part keeps when the job file does not say.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// The most standard error a part keeps, from its end, for an error message.
const STDERR_TAIL_BYTES: usize = 4096;

/// The most lines of standard error an error message shows.
const STDERR_TAIL_LINES: usize = 10;

/// The most bytes of a command line an error message shows.
const SHOWN_COMMAND_BYTES: usize = 300;

/// Room a result needs besides the standard output it carries.
const RESULT_OVERHEAD_BYTES: u64 = 16 << 10;

/// How often a waiting part looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The most bytes a part's command line may have in all.
const MAX_COMMAND_BYTES: usize = 1 << 20;

/// The `command` kind.
pub struct CommandKind;

/// How the parts' standard outputs become the job's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    /// Each part prints one integer; the result is their exact sum.
    Sum,
    /// The parts' outputs, byte for byte, in part order.
    Concat,
    /// The parts' outputs in part order, each ending with a newline.
    Lines,
}

/// The `[job]` keys of a command job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The program and its arguments, with placeholders.
    pub command: Spanned<Vec<Spanned<String>>>,
    /// The index space `[0, range)` the parts split.
    pub range: Spanned<u64>,
    /// Files shipped to each server once per job, relative to the job file's folder.
    #[serde(default)]
    pub files: Vec<Spanned<String>>,
    /// How the outputs combine (default `sum`).
    pub combine: Option<Spanned<Combine>>,
    /// Where `concat` and `lines` write the combined output, relative to the job
    /// file's folder.
    pub output: Option<Spanned<String>>,
    /// The most standard output one part may print.
    pub max_output_bytes: Option<Spanned<u64>>,
}

/// A command job, loaded: its files read.
#[derive(Debug, Clone)]
pub struct CommandJob {
    /// The command's words, placeholders not yet replaced.
    pub template: Vec<String>,
    /// The size of the index space.
    pub range: u64,
    /// The files shipped with the job.
    pub files: Vec<SharedInput>,
    /// How the outputs combine.
    pub combine: Combine,
    /// Where the combined output goes, if anywhere.
    pub output: Option<PathBuf>,
    /// The most standard output one part may print.
    pub max_output_bytes: u64,
}

/// One part of a command job: the words to run and what to keep of the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandPart {
    /// The program and its arguments, placeholders replaced.
    pub argv: Vec<String>,
    /// The part's index in the job.
    pub part: u64,
    /// How many parts the job has.
    pub parts: u64,
    /// The first index of its range, included.
    pub lo: u64,
    /// The last index, excluded.
    pub hi: u64,
    /// How its output is read.
    pub combine: Combine,
    /// The most standard output it may print.
    pub max_output_bytes: u64,
}

/// What one or more parts printed, or why a part failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    /// The sum of the integers the parts printed.
    Sum(i128),
    /// The parts' outputs, in part order, each part's kept apart.
    Text(Vec<PartText>),
    /// A part's program failed.
    Failed(CommandFailure),
}

/// One part's standard output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartText {
    /// The part's index.
    pub part: u64,
    /// What it printed (with a final newline added under `combine = "lines"`).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl fmt::Debug for PartText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PartText(part {}, {} bytes)",
            self.part,
            self.bytes.len()
        )
    }
}

/// A part's program failed: which part, what ran, what went wrong, and the end of its
/// standard error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFailure {
    /// The part's index.
    pub part: u64,
    /// The command line, shortened for display.
    pub command: String,
    /// What went wrong ("exited with status 3").
    pub problem: String,
    /// The last lines of its standard error.
    pub stderr_tail: String,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "part {}: `{}` {}", self.part, self.command, self.problem)?;
        if self.stderr_tail.is_empty() {
            write!(f, " (nothing on standard error)")
        } else {
            write!(f, "; the end of its standard error:")?;
            for line in self.stderr_tail.lines() {
                write!(f, "\n    {line}")?;
            }
            Ok(())
        }
    }
}

impl CommandOutput {
    /// The whole combined text of `Text` outputs (empty for the others).
    pub fn text(&self) -> Vec<u8> {
        match self {
            CommandOutput::Text(pieces) => pieces
                .iter()
                .map(|piece| piece.bytes.as_slice())
                .collect::<Vec<_>>()
                .concat(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for CommandOutput {
    /// A sum as its number; text itself when it is short, else its size and a hash
    /// that tells two outputs apart; a failure as its message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandOutput::Sum(sum) => write!(f, "{sum}"),
            CommandOutput::Failed(failure) => failure.fmt(f),
            CommandOutput::Text(_) => {
                let text = self.text();
                let lines = text.iter().filter(|&&b| b == b'\n').count();
                match std::str::from_utf8(&text) {
                    Ok(shown) if text.len() <= 200 && !shown.trim_end().contains('\n') => {
                        write!(f, "{:?}", shown.trim_end())
                    }
                    _ => write!(
                        f,
                        "{} bytes in {lines} lines (FNV-1a {:016x})",
                        text.len(),
                        fnv1a(&text)
                    ),
                }
            }
        }
    }
}

/// The 64-bit FNV-1a hash: enough to tell two outputs apart at a glance.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Kind for CommandKind {
    const NAME: &'static str = "command";
    const UNIT: &'static str = "indices";
    type Params = CommandParams;
    type Data = CommandJob;
    type Task = CommandPart;
    type Output = CommandOutput;

    fn validate_params(params: &CommandParams) -> Result<(), ParamError> {
        let words = params.command.get_ref();
        match words.first() {
            None => {
                return Err(ParamError::at(
                    params.command.span(),
                    "command needs at least the program to run, e.g. [\"python3\", \"count.py\", \"{lo}\", \"{hi}\"]",
                ))
            }
            Some(program) if program.get_ref().is_empty() => {
                return Err(ParamError::at(program.span(), "the program's name is empty"))
            }
            Some(_) => {}
        }
        for word in words {
            let sample = PartRange {
                index: 0,
                parts: 1,
                lo: 0,
                hi: 1,
            };
            fill_placeholders(word.get_ref(), sample)
                .map_err(|e| ParamError::at(word.span(), e))?;
            if word.get_ref().contains('\0') {
                return Err(ParamError::at(
                    word.span(),
                    "a NUL byte cannot be passed to a program",
                ));
            }
        }
        if *params.range.get_ref() == 0 {
            return Err(ParamError::at(
                params.range.span(),
                "range must be at least 1",
            ));
        }
        for file in &params.files {
            check_input_name(file.get_ref()).map_err(|e| ParamError::at(file.span(), e))?;
        }
        if let Some(max) = &params.max_output_bytes {
            if *max.get_ref() == 0 {
                return Err(ParamError::at(
                    max.span(),
                    "max_output_bytes must be at least 1",
                ));
            }
        }
        if let (Some(output), Combine::Sum) = (&params.output, combine_of(params)) {
            return Err(ParamError::at(
                output.span(),
                "output is for combine = \"concat\" or \"lines\"; a sum is printed in the report",
            ));
        }
        Ok(())
    }

    fn planned_units(params: &CommandParams) -> Option<u64> {
        Some(*params.range.get_ref())
    }

    fn load(params: &CommandParams, base: &Path) -> Result<CommandJob, String> {
        let mut files = Vec::with_capacity(params.files.len());
        for name in &params.files {
            let name = name.get_ref();
            let path = base.join(name);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("files: cannot read {}: {e}", path.display()))?;
            files.push(SharedInput {
                name: name.clone(),
                bytes: Bytes::from(bytes),
                executable: is_executable(&path),
            });
        }
        JobInputs::new(files.clone()).map_err(|e| format!("files: {e}"))?;
        Ok(CommandJob {
            template: params
                .command
                .get_ref()
                .iter()
                .map(|w| w.get_ref().clone())
                .collect(),
            range: *params.range.get_ref(),
            files,
            combine: combine_of(params),
            output: output_file(params.output.as_ref(), base)?,
            max_output_bytes: params
                .max_output_bytes
                .as_ref()
                .map_or(DEFAULT_MAX_OUTPUT_BYTES, |m| *m.get_ref()),
        })
    }

    fn split_units(job: &CommandJob) -> u64 {
        job.range
    }

    fn part(job: &CommandJob, range: PartRange) -> (CommandPart, Bytes) {
        let argv = job
            .template
            .iter()
            .map(|word| fill_placeholders(word, range).expect("placeholders are checked on load"))
            .collect();
        let task = CommandPart {
            argv,
            part: range.index as u64,
            parts: range.parts as u64,
            lo: range.lo,
            hi: range.hi,
            combine: job.combine,
            max_output_bytes: job.max_output_bytes,
        };
        (task, Bytes::new())
    }

    fn shared_inputs(job: &CommandJob) -> Vec<SharedInput> {
        job.files.clone()
    }

    fn validate(task: &CommandPart) -> Result<(), String> {
        if task.argv.first().is_none_or(|program| program.is_empty()) {
            return Err("a command part without a program".into());
        }
        if task.argv.iter().any(|word| word.contains('\0')) {
            return Err("a command word with a NUL byte".into());
        }
        if task.argv.iter().map(String::len).sum::<usize>() > MAX_COMMAND_BYTES {
            return Err(format!(
                "a command line longer than {MAX_COMMAND_BYTES} bytes"
            ));
        }
        if task.lo >= task.hi || task.part >= task.parts {
            return Err("a command part with an empty range or a part index out of range".into());
        }
        if task.max_output_bytes == 0 || task.max_output_bytes > u64::MAX - RESULT_OVERHEAD_BYTES {
            return Err("a command part with an invalid output limit".into());
        }
        Ok(())
    }

    fn work_items(task: &CommandPart) -> u64 {
        task.hi - task.lo
    }

    fn program(task: &CommandPart) -> Option<Program<'_>> {
        Some(Program {
            name: &task.argv[0],
            max_output_bytes: task.max_output_bytes,
        })
    }

    fn compute_chunk(
        task: &CommandPart,
        _chunk: Chunk<'_>,
        inputs: &JobInputs,
        cancel: &CancelFlag,
    ) -> Result<CommandOutput, Cancelled> {
        run_part(task, inputs, cancel)
    }

    fn combine(a: CommandOutput, b: CommandOutput) -> Option<CommandOutput> {
        use CommandOutput::{Failed, Sum, Text};
        match (a, b) {
            // The failure of the earliest part is the one shown, whatever the order the
            // results arrive in.
            (Failed(x), Failed(y)) => Some(Failed(if x.part <= y.part { x } else { y })),
            (Failed(x), _) | (_, Failed(x)) => Some(Failed(x)),
            (Sum(x), Sum(y)) => x.checked_add(y).map(Sum),
            (Text(mut x), Text(y)) => {
                x.extend(y);
                x.sort_by_key(|piece| piece.part);
                if x.windows(2).any(|pair| pair[0].part == pair[1].part) {
                    return None;
                }
                Some(Text(x))
            }
            _ => None,
        }
    }

    fn could_produce(task: &CommandPart, output: &CommandOutput) -> bool {
        match output {
            CommandOutput::Sum(_) => task.combine == Combine::Sum,
            CommandOutput::Text(pieces) => {
                task.combine != Combine::Sum
                    && matches!(pieces.as_slice(), [piece] if piece.part == task.part
                        && piece.bytes.len() as u64 <= task.max_output_bytes + 1)
            }
            CommandOutput::Failed(failure) => failure.part == task.part,
        }
    }

    fn max_result_bytes(task: &CommandPart) -> u64 {
        task.max_output_bytes + RESULT_OVERHEAD_BYTES
    }

    fn user_error(output: &CommandOutput) -> Option<String> {
        match output {
            CommandOutput::Failed(failure) => Some(failure.to_string()),
            _ => None,
        }
    }

    fn save(job: &CommandJob, output: &CommandOutput) -> Result<Vec<PathBuf>, String> {
        let Some(path) = &job.output else {
            return Ok(Vec::new());
        };
        std::fs::write(path, output.text())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(vec![path.clone()])
    }
}

fn combine_of(params: &CommandParams) -> Combine {
    params
        .combine
        .as_ref()
        .map_or(Combine::Sum, |c| *c.get_ref())
}

/// Whether the file at `path` may be executed by its owner (always false off Unix).
fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o100 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// `word` with `{part}`, `{parts}`, `{lo}` and `{hi}` replaced, `{{` and `}}` made
/// single braces; an error names any other placeholder or a lone brace.
pub fn fill_placeholders(word: &str, range: PartRange) -> Result<String, String> {
    let mut filled = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(at) = rest.find(['{', '}']) {
        filled.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("{{") {
            filled.push('{');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("}}") {
            filled.push('}');
            rest = after;
        } else if rest.starts_with('}') {
            return Err(format!(
                "a lone `}}` in {word:?} (write `}}}}` for a brace)"
            ));
        } else {
            let end = rest.find('}').ok_or_else(|| {
                format!("an unclosed `{{` in {word:?} (write `{{{{` for a brace)")
            })?;
            let value = match &rest[1..end] {
                "part" => range.index.to_string(),
                "parts" => range.parts.to_string(),
                "lo" => range.lo.to_string(),
                "hi" => range.hi.to_string(),
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} in {word:?}: use {{part}}, {{parts}}, {{lo}} or {{hi}}"
                    ))
                }
            };
            filled.push_str(&value);
            rest = &rest[end + 1..];
        }
    }
    filled.push_str(rest);
    Ok(filled)
}

/// Runs one part's program to its end (or until cancelled) and reads its output.
fn run_part(
    task: &CommandPart,
    inputs: &JobInputs,
    cancel: &CancelFlag,
) -> Result<CommandOutput, Cancelled> {
    let fail = |problem: String, stderr_tail: String| {
        Ok(CommandOutput::Failed(CommandFailure {
            part: task.part,
            command: shown_command(&task.argv),
            problem,
            stderr_tail,
        }))
    };
    let work_dir = match inputs.work_dir() {
        Ok(dir) => dir,
        Err(e) => return fail(format!("could not run: {e}"), String::new()),
    };
    let mut child = match spawn(task, work_dir) {
        Ok(child) => child,
        Err(e) => {
            return fail(
                format!(
                    "could not start: {e} (is the program installed on this machine, or \
                     listed in `files`?)"
                ),
                String::new(),
            )
        }
    };
    let group = ProcessGroup(child.id());
    let overflowed = Arc::new(AtomicBool::new(false));
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let limit = task.max_output_bytes;
    let stdout_reader = {
        let overflowed = Arc::clone(&overflowed);
        std::thread::spawn(move || read_bounded(stdout, limit, &overflowed, group))
    };
    let stderr_reader = std::thread::spawn(move || read_tail(stderr));
    let status = wait(child, group, cancel);
    // Whatever the program left running in the background goes with it; the readers
    // then see their pipes close.
    group.kill();
    let stdout = stdout_reader.join().expect("the stdout reader panicked");
    let stderr_tail = stderr_reader.join().expect("the stderr reader panicked");
    let status = match status {
        None => return Err(Cancelled),
        Some(Err(e)) => return fail(format!("could not be waited for: {e}"), stderr_tail),
        Some(Ok(status)) => status,
    };
    if overflowed.load(Ordering::Relaxed) {
        return fail(
            format!(
                "printed more than {limit} bytes on standard output (raise max_output_bytes \
                 in the job file)"
            ),
            stderr_tail,
        );
    }
    if !status.success() {
        return fail(describe_exit(status), stderr_tail);
    }
    match task.combine {
        Combine::Sum => match std::str::from_utf8(&stdout)
            .ok()
            .and_then(|text| text.trim().parse::<i128>().ok())
        {
            Some(value) => Ok(CommandOutput::Sum(value)),
            None => fail(
                format!(
                    "printed {}, not one integer (combine = \"sum\" adds the integer each \
                     part prints)",
                    shown_output(&stdout)
                ),
                stderr_tail,
            ),
        },
        Combine::Concat | Combine::Lines => {
            let mut bytes = stdout;
            if task.combine == Combine::Lines && bytes.last().is_some_and(|&b| b != b'\n') {
                bytes.push(b'\n');
            }
            Ok(CommandOutput::Text(vec![PartText {
                part: task.part,
                bytes,
            }]))
        }
    }
}

/// Starts the part's program in the work folder, in a process group of its own.
fn spawn(task: &CommandPart, work_dir: &Path) -> std::io::Result<Child> {
    let program = &task.argv[0];
    // A program named by a relative path (`./sim`) is one of the job's files.
    let program_path = if program.contains('/') && !program.starts_with('/') {
        work_dir.join(program)
    } else {
        PathBuf::from(program)
    };
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut command = Command::new(program_path);
    command
        .args(&task.argv[1..])
        .current_dir(work_dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", work_dir)
        .env("POOL_PART", task.part.to_string())
        .env("POOL_PARTS", task.parts.to_string())
        .env("POOL_LO", task.lo.to_string())
        .env("POOL_HI", task.hi.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        // No `pre_exec` (a parent-death signal, say): it would make the standard
        // library fork the whole server instead of using posix_spawn, which measured
        // 1.83 ms a part instead of 1.20 ms for `echo 1` (pool-client, 200 parts).
    }
    command.spawn()
}

/// A part's process group: its program's PID, which leads the group.
#[derive(Debug, Clone, Copy)]
struct ProcessGroup(u32);

impl ProcessGroup {
    /// Kills every process in the group (a group already gone is fine).
    fn kill(&self) {
        #[cfg(unix)]
        // SAFETY: kill with a negative PID signals a process group; no memory involved.
        unsafe {
            libc::kill(-(self.0 as libc::pid_t), libc::SIGKILL);
        }
    }
}

/// Waits for the program to exit, killing its group if the part is cancelled; `None`
/// if cancelled. A thread of its own waits, so the exit is seen at once, and this one
/// looks at the cancel flag in between.
fn wait(
    mut child: Child,
    group: ProcessGroup,
    cancel: &CancelFlag,
) -> Option<std::io::Result<ExitStatus>> {
    let (exited, exit) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    loop {
        match exit.recv_timeout(CANCEL_POLL) {
            Ok(status) => return Some(status),
            Err(RecvTimeoutError::Timeout) if cancel.is_cancelled() => {
                group.kill();
                let _ = exit.recv();
                return None;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Some(Err(std::io::Error::other("the waiting thread stopped")))
            }
        }
    }
}

/// Reads up to `limit` bytes; past that, sets `overflowed`, kills the program's group
/// and stops reading.
fn read_bounded(
    mut from: impl Read,
    limit: u64,
    overflowed: &AtomicBool,
    group: ProcessGroup,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 64 << 10];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                if kept.len() as u64 + n as u64 > limit {
                    overflowed.store(true, Ordering::Relaxed);
                    group.kill();
                    return kept;
                }
                kept.extend_from_slice(&buffer[..n]);
            }
        }
    }
}

/// Reads everything and keeps the last lines, for an error message.
fn read_tail(mut from: impl Read) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 16 << 10];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buffer[..n]);
                if tail.len() > 2 * STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
    let start = tail.len().saturating_sub(STDERR_TAIL_BYTES);
    let text = String::from_utf8_lossy(&tail[start..]);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

/// "exited with status 3", "was killed by signal 9 (SIGKILL)".
fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGTERM => " (SIGTERM)",
                _ => "",
            };
            return format!("was killed by signal {signal}{name}");
        }
    }
    format!("ended with {status}")
}

/// The command line as a person would type it, shortened.
fn shown_command(argv: &[String]) -> String {
    let line = argv
        .iter()
        .map(|word| {
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c))
            {
                word.clone()
            } else {
                format!("{word:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    shorten(&line, SHOWN_COMMAND_BYTES)
}

/// What a program printed, quoted and shortened, for an error message.
fn shown_output(stdout: &[u8]) -> String {
    if stdout.is_empty() {
        return "nothing".into();
    }
    shorten(&format!("{:?}", String::from_utf8_lossy(stdout)), 80)
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(index: usize, parts: usize, lo: u64, hi: u64) -> PartRange {
        PartRange {
            index,
            parts,
            lo,
            hi,
        }
    }

    fn task(argv: &[&str], combine: Combine) -> CommandPart {
        CommandPart {
            argv: argv.iter().map(|w| w.to_string()).collect(),
            part: 2,
            parts: 4,
            lo: 10,
            hi: 20,
            combine,
            max_output_bytes: 1 << 20,
        }
    }

    fn run(task: &CommandPart) -> CommandOutput {
        run_part(task, &JobInputs::default(), &CancelFlag::new()).unwrap()
    }

    #[test]
    fn placeholders_are_filled_and_braces_escaped() {
        let r = range(2, 4, 10, 20);
        assert_eq!(fill_placeholders("{lo}-{hi}", r).unwrap(), "10-20");
        assert_eq!(fill_placeholders("p{part}of{parts}", r).unwrap(), "p2of4");
        assert_eq!(fill_placeholders("{{lo}}", r).unwrap(), "{lo}");
        assert_eq!(fill_placeholders("plain", r).unwrap(), "plain");
        for bad in ["{low}", "{lo", "}", "{}"] {
            assert!(fill_placeholders(bad, r).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sum_part_reads_one_integer() {
        let output = run(&task(
            &["sh", "-c", "echo $((POOL_HI - POOL_LO))"],
            Combine::Sum,
        ));
        assert_eq!(output, CommandOutput::Sum(10));
    }

    #[test]
    fn a_failing_program_is_reported_with_its_status_and_stderr() {
        let output = run(&task(
            &["sh", "-c", "echo one >&2; echo two >&2; exit 3"],
            Combine::Sum,
        ));
        let CommandOutput::Failed(failure) = &output else {
            panic!("{output:?}")
        };
        assert_eq!(failure.part, 2);
        assert_eq!(failure.problem, "exited with status 3");
        assert_eq!(failure.stderr_tail, "one\ntwo");
        let message = CommandKind::user_error(&output).unwrap();
        assert!(message.contains("part 2: `sh -c"), "{message}");
    }

    #[test]
    fn output_that_is_not_an_integer_fails_a_sum() {
        let output = run(&task(&["echo", "many words"], Combine::Sum));
        assert!(
            matches!(&output, CommandOutput::Failed(f) if f.problem.contains("not one integer")),
            "{output:?}"
        );
    }

    #[test]
    fn a_missing_program_is_a_failure_not_a_panic() {
        let output = run(&task(&["/nonexistent/program"], Combine::Sum));
        assert!(
            matches!(&output, CommandOutput::Failed(f) if f.problem.contains("could not start")),
            "{output:?}"
        );
    }

    #[test]
    fn too_much_output_stops_the_program() {
        let mut big = task(&["yes"], Combine::Concat);
        big.max_output_bytes = 1000;
        let output = run(&big);
        assert!(
            matches!(&output, CommandOutput::Failed(f) if f.problem.contains("more than 1000 bytes")),
            "{output:?}"
        );
    }

    #[test]
    fn lines_end_with_a_newline_and_combine_in_part_order() {
        let piece = |part, text: &str| {
            let mut t = task(&["printf", text], Combine::Lines);
            t.part = part;
            run(&t)
        };
        let combined = CommandKind::combine(piece(1, "b"), piece(0, "a\n")).unwrap();
        assert_eq!(combined.text(), b"a\nb\n");
        assert!(
            combined.to_string().starts_with("4 bytes in 2 lines"),
            "{combined}"
        );
        assert_eq!(piece(0, "one line\n").to_string(), "\"one line\"");
        assert!(
            CommandKind::combine(piece(0, "a"), piece(0, "a")).is_none(),
            "a part twice"
        );
    }

    #[test]
    fn the_earliest_failure_wins_whatever_the_order() {
        let failure = |part| {
            CommandOutput::Failed(CommandFailure {
                part,
                command: "x".into(),
                problem: "exited with status 1".into(),
                stderr_tail: String::new(),
            })
        };
        for (a, b) in [(failure(3), failure(1)), (failure(1), failure(3))] {
            assert_eq!(CommandKind::combine(a, b), Some(failure(1)));
        }
        assert_eq!(
            CommandKind::combine(CommandOutput::Sum(5), failure(2)),
            Some(failure(2))
        );
    }

    #[test]
    fn cancelling_kills_the_program_and_what_it_started() {
        let marker = format!("pool-cancel-test-{}", std::process::id());
        // A background shell (a grandchild) and the shell itself both carry the marker.
        let script = format!("sh -c 'sleep 1000; true {marker}' & sleep 1000; true {marker}");
        let t = task(&["sh", "-c", &script], Combine::Sum);
        let cancel = Arc::new(CancelFlag::new());
        let canceller = {
            let cancel = Arc::clone(&cancel);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                cancel.cancel();
            })
        };
        let inputs = JobInputs::default();
        assert_eq!(run_part(&t, &inputs, &cancel), Err(Cancelled));
        canceller.join().unwrap();
        assert!(
            processes_with(&marker).is_empty(),
            "left running: {:?}",
            processes_with(&marker)
        );
    }

    /// PIDs of processes whose command line mentions `marker`.
    fn processes_with(marker: &str) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
            })
            .collect()
    }
}
