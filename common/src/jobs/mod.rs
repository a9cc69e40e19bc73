//! The job kinds, and what every kind shares.
//!
//! A *job* is what the user asks for (sum this matrix, run this loop). It splits into
//! *parts*, each a self-contained [`PartTask`] plus the input bytes it reads (a block of
//! the matrix; nothing for the loop). Every mode (sequential, threaded, multi-process and
//! the pool's servers) computes a part the same way: its input, cut into chunks of at
//! most [`DATA_CHUNK_BYTES`], goes through [`compute_chunk`], and the chunk results fold
//! with [`PartResult::combine`] ([`PartComputation`] does both). Partial results of the
//! parts combine the same way into the job's result.
//!
//! Parts are idempotent: computing one twice gives the same result, so a client may
//! resend a part to another server, or to two at once.
//!
//! # Adding a kind
//!
//! A kind is one file in this folder that implements [`Kind`], plus one line in the
//! [`job_kinds!`] list at the end of this file. The list generates everything that
//! names every kind: the wire enums [`PartTask`] and [`PartResult`], the job file's
//! [`JobSpec`], the loaded [`Job`], and [`KIND_NAMES`] for error messages. Every
//! generated `match` names every kind, so nothing can be forgotten. The README's
//! "Adding a job kind" walks through a worked example.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod inputs;
pub mod rows;

pub use inputs::{JobInputs, SharedInput};

/// A part's input travels, and is computed, in chunks of at most this many bytes (a
/// multiple of 8, so chunks of 8-byte elements hold whole elements).
pub const DATA_CHUNK_BYTES: usize = 4 << 20;

/// The largest encoded result a kind may return without saying otherwise in
/// [`Kind::max_result_bytes`]: room for a few integers.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 4096;

/// A kind of job: its parameters in the job file, how it splits, the kernel that
/// computes one part, and how results combine. Implement it in a file of its own and
/// register it with one line in [`job_kinds!`].
///
/// Everything that reaches a server ([`Kind::Task`]) or comes back from one
/// ([`Kind::Output`]) is checked before use: the other side may be hostile.
pub trait Kind {
    /// The kind's name in job files (`kind = "..."`).
    const NAME: &'static str;

    /// What the kind splits over, plural, for messages ("iterations", "matrix rows").
    const UNIT: &'static str;

    /// The `[job]` table's keys besides `kind`. Parse it with
    /// `#[serde(deny_unknown_fields)]` and wrap values in [`toml::Spanned`] where an
    /// error should point at them.
    type Params: DeserializeOwned + fmt::Debug + Clone + PartialEq + Send + Sync;

    /// The job once loaded: its data in memory, or just its size.
    type Data: fmt::Debug + Send + Sync;

    /// One part's description, sent to servers and worker processes.
    type Task: Serialize + DeserializeOwned + fmt::Debug + Clone + PartialEq + Send + Sync;

    /// The result of a part, of a chunk, or of the whole job.
    type Output: Serialize
        + DeserializeOwned
        + fmt::Debug
        + fmt::Display
        + Clone
        + PartialEq
        + Send
        + Sync;

    /// Checks the parameters (a reversed range, a zero size, a matrix too large to
    /// hold). Errors without a span point at the `[job]` table.
    fn validate_params(params: &Self::Params) -> Result<(), ParamError>;

    /// The number of units the job will split into, when the parameters alone tell
    /// (they do not for a matrix read from a file): the job file then refuses more
    /// parts than that before anything is loaded.
    fn planned_units(params: &Self::Params) -> Option<u64>;

    /// Seeds that make the job's data the same on a rerun, by name, for the report.
    fn seeds(_params: &Self::Params) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Loads the job: generates its data, or reads the files it names (relative to
    /// `base`, the job file's folder).
    fn load(params: &Self::Params, base: &Path) -> Result<Self::Data, String>;

    /// The number of units the loaded job splits over; a job has at most this many
    /// parts.
    fn split_units(data: &Self::Data) -> u64;

    /// The part covering units `[range.lo, range.hi)`: its task and its input bytes (a
    /// zero-copy slice of the job's data, or empty).
    fn part(data: &Self::Data, range: PartRange) -> (Self::Task, Bytes);

    /// The inputs every part of the job reads (a program's files, a matrix every part
    /// multiplies by): shipped to each server once per job, and handed to
    /// [`compute_chunk`](Kind::compute_chunk) as [`JobInputs`]. None by default.
    fn shared_inputs(_data: &Self::Data) -> Vec<SharedInput> {
        Vec::new()
    }

    /// Checks a task received from the network; a server refuses one that fails.
    fn validate(task: &Self::Task) -> Result<(), String>;

    /// Checks that the job's shared `inputs` hold what the task reads (a matrix of the
    /// right size), once they are known: a server refuses a part that fails, so
    /// [`compute_chunk`](Kind::compute_chunk) may rely on them. Nothing by default.
    fn check_inputs(_task: &Self::Task, _inputs: &JobInputs) -> Result<(), String> {
        Ok(())
    }

    /// The input bytes the task reads, sent after it as data frames. `None` if its
    /// sizes overflow, which only a broken or hostile peer sends.
    fn input_bytes(_task: &Self::Task) -> Option<u64> {
        Some(0)
    }

    /// The work the task declares (loop iterations, matrix elements), for servers that
    /// cap it and clients that estimate how long it may take.
    fn work_items(task: &Self::Task) -> u64;

    /// Whether the task alone bounds its cost to a few microseconds on one core (a
    /// loop of a few thousand iterations), whatever its input. A server computes such
    /// a part on the connection's own task instead of handing it to a worker thread and
    /// back, two thread wake-ups that cost more than the part: the one exception to
    /// "the async runtime never computes". The default, never, is right for any kind
    /// whose cost the task does not bound (data, pixels, programs).
    fn is_tiny(_task: &Self::Task) -> bool {
        false
    }

    /// Checks that a data chunk of `len` bytes can belong to the task.
    fn check_chunk(_task: &Self::Task, _len: usize) -> Result<(), String> {
        Err(format!("a {} part takes no data", Self::NAME))
    }

    /// The largest chunk the task's input is cut into, at most [`DATA_CHUNK_BYTES`]
    /// (the default). A kernel that needs whole records in a chunk (a matrix product's
    /// rows) gives a multiple of the record's size, and refuses other chunks in
    /// [`check_chunk`](Kind::check_chunk).
    fn chunk_bytes(_task: &Self::Task) -> usize {
        DATA_CHUNK_BYTES
    }

    /// The program the task runs, if it runs one of the user's: a server refuses it
    /// unless started with `--allow-commands`, and checks it against its allowlist and
    /// output limit before anything runs. Built-in kernels run none. A part that runs
    /// a program is a process of its own in every mode, so for such a job the local
    /// "threaded" mode would be the multi-process mode again, and is not run.
    fn program(_task: &Self::Task) -> Option<Program<'_>> {
        None
    }

    /// Computes one chunk of the task's input (the whole task, on an empty chunk, for a
    /// task without input), reading the job's shared `inputs` if it has any, and
    /// checking `cancel` often enough to stop within ~100 ms.
    fn compute_chunk(
        task: &Self::Task,
        chunk: Chunk<'_>,
        inputs: &JobInputs,
        cancel: &CancelFlag,
    ) -> Result<Self::Output, Cancelled>;

    /// The user's error that `output` reports, if it reports one: a command that exited
    /// with a failure. A part with such a result is answered like any other (the server
    /// did its work), and the client stops the job and shows the message instead of
    /// asking another server. Built-in kernels never fail this way.
    fn user_error(_output: &Self::Output) -> Option<String> {
        None
    }

    /// Combines the results of two chunks of one part, or of two parts. `None` when
    /// they cannot combine (an overflow only a hostile peer can cause).
    fn combine(a: Self::Output, b: Self::Output) -> Option<Self::Output>;

    /// Whether `task` could have produced `output`: a range check against hostile
    /// peers. Results that pass it always combine.
    fn could_produce(_task: &Self::Task, _output: &Self::Output) -> bool {
        true
    }

    /// The largest encoded result the task can produce, in bytes: a client refuses a
    /// longer one before reading it.
    fn max_result_bytes(_task: &Self::Task) -> u64 {
        DEFAULT_MAX_RESULT_BYTES
    }

    /// Writes the job's result to the files its job file names (a picture), and
    /// returns their paths. The client calls it once, after every mode has run and
    /// given the same result; servers and worker processes never do. Results travel
    /// and are compared as values, and a part cannot know where the job's files go nor
    /// hold the whole result, so this is the one place a kind can turn its combined
    /// result into a file. By default a kind writes nothing.
    fn save(_data: &Self::Data, _output: &Self::Output) -> Result<Vec<PathBuf>, String> {
        Ok(Vec::new())
    }
}

/// The file a job's `output` key names, resolved against `base` (the job file's folder)
/// and opened for writing once, so that a typo or a folder that does not exist shows
/// when the job loads rather than after it ran. [`Kind::save`] writes it.
pub fn output_file(
    output: Option<&toml::Spanned<String>>,
    base: &Path,
) -> Result<Option<PathBuf>, String> {
    let Some(output) = output else {
        return Ok(None);
    };
    let path = base.join(output.get_ref());
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("output: cannot write {}: {e}", path.display()))?;
    Ok(Some(path))
}

/// Where a part sits in its job: the `index`-th of `parts`, covering units `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartRange {
    /// The part's position, from 0.
    pub index: usize,
    /// How many parts the job has.
    pub parts: usize,
    /// The first unit, included.
    pub lo: u64,
    /// The last unit, excluded.
    pub hi: u64,
}

/// A user's program a part runs, as a server checks it before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program<'a> {
    /// The program, as the command's first word gives it (`python3`, `./sim`).
    pub name: &'a str,
    /// The most standard output the part may keep.
    pub max_output_bytes: u64,
}

/// A problem with a kind's parameters, and where in the job file it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// Byte range in the job file of the value at fault; `None` for the `[job]` table.
    pub span: Option<Range<usize>>,
    /// What is wrong and what to do.
    pub message: String,
}

impl ParamError {
    /// An error pointing at a value (`span` from its [`toml::Spanned`]).
    pub fn at(span: Range<usize>, message: impl Into<String>) -> ParamError {
        ParamError {
            span: Some(span),
            message: message.into(),
        }
    }

    /// An error about the `[job]` table as a whole (a key missing).
    pub fn in_table(message: impl Into<String>) -> ParamError {
        ParamError {
            span: None,
            message: message.into(),
        }
    }
}

/// A piece of a part's input as a kernel computes it: its bytes, and where they sit in
/// the part's input. Chunks of one part may be computed in any order, or at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// How far into the part's input the chunk starts, in bytes.
    pub offset: u64,
    /// The chunk's bytes.
    pub bytes: &'a [u8],
}

impl Chunk<'_> {
    /// The one chunk of a part without input.
    pub const NONE: Chunk<'static> = Chunk {
        offset: 0,
        bytes: &[],
    };
}

/// Set when a part's result is no longer wanted (its client went away, or cancelled
/// it); kernels check it often enough to stop within about 100 ms.
#[derive(Debug, Default)]
pub struct CancelFlag(AtomicBool);

impl CancelFlag {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the kernel to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The kernel stopped because its [`CancelFlag`] was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// One part of a job: the task, the input bytes it reads, and the job's shared inputs.
#[derive(Debug, Clone)]
pub struct Part {
    /// The part's position in the job, from 0.
    pub index: usize,
    /// What to compute.
    pub task: PartTask,
    /// The input, `task.input_bytes()` long (a zero-copy slice of the job's data).
    pub input: Bytes,
    /// The inputs every part of the job reads; the same for all of them.
    pub shared: Arc<JobInputs>,
}

impl Part {
    /// The part's input cut into the chunks it travels and is computed in.
    pub fn chunks(&self) -> impl Iterator<Item = Bytes> + '_ {
        chunks_of(&self.input, self.task.chunk_bytes())
    }

    /// A part without shared inputs (those of a job that has none).
    pub fn new(index: usize, task: PartTask, input: Bytes) -> Part {
        Part {
            index,
            task,
            input,
            shared: Arc::default(),
        }
    }

    /// Computes the part in this thread, chunk by chunk, as a server would.
    pub fn compute(&self, cancel: &CancelFlag) -> Result<PartResult, Cancelled> {
        let mut computation = PartComputation::new(&self.task, &self.shared);
        if self.input.is_empty() {
            computation.add_chunk(&[], cancel)?;
        }
        for chunk in self.chunks() {
            computation.add_chunk(&chunk, cancel)?;
        }
        Ok(computation
            .finish()
            .expect("a part has at least one chunk, of its own kind")
            .0)
    }
}

/// `bytes` cut into chunks of `size` bytes (the last may be shorter), as zero-copy
/// slices: how a part's input, a shared input or a large result travels.
pub fn chunks_of(bytes: &Bytes, size: usize) -> impl Iterator<Item = Bytes> + '_ {
    assert!(size > 0, "chunks of 0 bytes");
    (0..bytes.len())
        .step_by(size)
        .map(move |start| bytes.slice(start..bytes.len().min(start + size)))
}

/// A part computed chunk by chunk, in this thread: what the local modes and the worker
/// process run, with the same fold the server applies to chunks computed on its
/// executor ([`fold_chunk_result`]).
pub struct PartComputation<'a> {
    task: &'a PartTask,
    inputs: &'a JobInputs,
    /// Where the next chunk starts in the part's input.
    offset: u64,
    partial: Option<PartResult>,
    compute: Duration,
    combine_failed: bool,
}

impl<'a> PartComputation<'a> {
    /// Starts computing `task`, which reads the job's shared `inputs`.
    pub fn new(task: &'a PartTask, inputs: &'a JobInputs) -> Self {
        PartComputation {
            task,
            inputs,
            offset: 0,
            partial: None,
            compute: Duration::ZERO,
            combine_failed: false,
        }
    }

    /// Computes the next chunk of the part's input (an empty one for a part without
    /// input) and folds it in.
    pub fn add_chunk(&mut self, bytes: &[u8], cancel: &CancelFlag) -> Result<(), Cancelled> {
        let started = Instant::now();
        let chunk = Chunk {
            offset: self.offset,
            bytes,
        };
        self.offset += bytes.len() as u64;
        let result = compute_chunk(self.task, chunk, self.inputs, cancel)?;
        self.compute += started.elapsed();
        self.combine_failed |= fold_chunk_result(&mut self.partial, result).is_err();
        Ok(())
    }

    /// The part's result and the time spent computing it; `None` if no chunk was
    /// computed or chunk results would not combine.
    pub fn finish(self) -> Option<(PartResult, Duration)> {
        if self.combine_failed {
            return None;
        }
        self.partial.map(|result| (result, self.compute))
    }
}

/// Chunk results that do not combine (of different kinds, or overflowing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("chunk results do not combine")]
pub struct NoCombination;

/// Folds one chunk result into a part's partial result: the one rule, used by every
/// mode, for how a part's chunks add up.
pub fn fold_chunk_result(
    partial: &mut Option<PartResult>,
    chunk: PartResult,
) -> Result<(), NoCombination> {
    let combined = match partial.take() {
        None => chunk,
        Some(sum) => sum.combine(chunk).ok_or(NoCombination)?,
    };
    *partial = Some(combined);
    Ok(())
}

/// Combines the results of all parts of a job, `None` for no parts or results that do
/// not combine.
pub fn combine_all(results: impl IntoIterator<Item = PartResult>) -> Option<PartResult> {
    let mut results = results.into_iter();
    let first = results.next()?;
    results.try_fold(first, PartResult::combine)
}

/// The `index`-th of `parts` near-equal sub-ranges of `[0, total)`.
fn even_range(total: u64, parts: usize, index: usize) -> (u64, u64) {
    let bound = |i: usize| ((total as u128 * i as u128) / parts as u128) as u64;
    (bound(index), bound(index + 1))
}

impl Job {
    /// Splits the job into `parts` parts of near-equal size (they differ by at most one
    /// unit), sharing one copy of the job's shared inputs. `parts` must be between 1
    /// and [`split_units`](Self::split_units).
    pub fn split(&self, parts: usize) -> Vec<Part> {
        let units = self.split_units();
        assert!(
            parts >= 1 && parts as u64 <= units,
            "invalid part count {parts}"
        );
        let shared = Arc::new(
            JobInputs::new(self.shared_inputs())
                .expect("a kind's shared inputs are checked when the job loads"),
        );
        (0..parts)
            .map(|index| {
                let (lo, hi) = even_range(units, parts, index);
                let range = PartRange {
                    index,
                    parts,
                    lo,
                    hi,
                };
                let (task, input) = self.part(range);
                Part {
                    index,
                    task,
                    input,
                    shared: Arc::clone(&shared),
                }
            })
            .collect()
    }
}

/// Generates, from the list of kinds, every type and `match` that names them all.
///
/// Each line is `Variant => module::KindType,`: `module.rs` in this folder implements
/// [`Kind`] for `KindType`. The order of the lines is the order of the variants on the
/// wire (bincode encodes a variant by its index): add new kinds at the end, never
/// between or instead of others. The number of kinds is part of
/// [`PROTOCOL_VERSION`](crate::protocol::PROTOCOL_VERSION), so adding one changes the
/// version by itself; reordering or replacing kinds needs a new
/// [`MESSAGES_REVISION`](crate::protocol::MESSAGES_REVISION).
macro_rules! job_kinds {
    ($($variant:ident => $module:ident :: $kind:ident,)+) => {
        $(pub mod $module;)+

        /// Every kind's name, in wire order, for error messages.
        pub const KIND_NAMES: &[&str] = &[$(<$module::$kind as Kind>::NAME,)+];

        /// What one part asks to compute. Sent to servers and worker processes.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum PartTask {
            $(
                #[doc = concat!("A part of a `", stringify!($module), "` job.")]
                $variant(<$module::$kind as Kind>::Task),
            )+
        }

        /// The result of a part, of a chunk, or of a whole job.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum PartResult {
            $(
                #[doc = concat!("The result of a `", stringify!($module), "` job or part.")]
                $variant(<$module::$kind as Kind>::Output),
            )+
        }

        /// A job as the job file describes it, before its data is loaded.
        // One per job file, so a kind with many keys may make it large.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum JobSpec {
            $(
                #[doc = concat!("A `", stringify!($module), "` job's parameters.")]
                $variant(<$module::$kind as Kind>::Params),
            )+
        }

        /// A job ready to split: its parameters and, for data jobs, its data in memory.
        #[derive(Debug)]
        pub enum Job {
            $(
                #[doc = concat!("A loaded `", stringify!($module), "` job.")]
                $variant(<$module::$kind as Kind>::Data),
            )+
        }

        impl PartTask {
            /// The kind's name, as in job files.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(PartTask::$variant(_) => <$module::$kind as Kind>::NAME,)+
                }
            }

            /// See [`Kind::validate`].
            pub fn validate(&self) -> Result<(), String> {
                match self {
                    $(PartTask::$variant(task) => <$module::$kind as Kind>::validate(task),)+
                }
            }

            /// See [`Kind::input_bytes`].
            pub fn input_bytes(&self) -> Option<u64> {
                match self {
                    $(PartTask::$variant(task) => <$module::$kind as Kind>::input_bytes(task),)+
                }
            }

            /// See [`Kind::work_items`].
            pub fn work_items(&self) -> u64 {
                match self {
                    $(PartTask::$variant(task) => <$module::$kind as Kind>::work_items(task),)+
                }
            }

            /// See [`Kind::is_tiny`].
            pub fn is_tiny(&self) -> bool {
                match self {
                    $(PartTask::$variant(task) => <$module::$kind as Kind>::is_tiny(task),)+
                }
            }

            /// See [`Kind::check_chunk`].
            pub fn check_chunk(&self, len: usize) -> Result<(), String> {
                match self {
                    $(PartTask::$variant(task) => <$module::$kind as Kind>::check_chunk(task, len),)+
                }
            }

            /// See [`Kind::chunk_bytes`].
            pub fn chunk_bytes(&self) -> usize {
                match self {
                    $(PartTask::$variant(task) => <$module::$kind as Kind>::chunk_bytes(task),)+
                }
            }

            /// See [`Kind::check_inputs`].
            pub fn check_inputs(&self, inputs: &JobInputs) -> Result<(), String> {
                match self {
                    $(PartTask::$variant(task) => <$module::$kind as Kind>::check_inputs(task, inputs),)+
                }
            }

            /// Whether this task could have produced `result`: the same kind, and
            /// within [`Kind::could_produce`]'s range.
            pub fn could_produce(&self, result: &PartResult) -> bool {
                match self {
                    $(PartTask::$variant(task) => {
                        let PartResult::$variant(output) = result else { return false };
                        <$module::$kind as Kind>::could_produce(task, output)
                    })+
                }
            }

            /// See [`Kind::max_result_bytes`].
            pub fn max_result_bytes(&self) -> u64 {
                match self {
                    $(PartTask::$variant(task) => <$module::$kind as Kind>::max_result_bytes(task),)+
                }
            }

            /// See [`Kind::program`].
            pub fn program(&self) -> Option<Program<'_>> {
                match self {
                    $(PartTask::$variant(task) => <$module::$kind as Kind>::program(task),)+
                }
            }
        }

        /// Computes one chunk of a part's input (for a part without input, the whole
        /// part on an empty chunk): the one kernel entry point of every mode.
        pub fn compute_chunk(
            task: &PartTask,
            chunk: Chunk<'_>,
            inputs: &JobInputs,
            cancel: &CancelFlag,
        ) -> Result<PartResult, Cancelled> {
            match task {
                $(PartTask::$variant(task) => {
                    <$module::$kind as Kind>::compute_chunk(task, chunk, inputs, cancel)
                        .map(PartResult::$variant)
                })+
            }
        }

        impl PartResult {
            /// Combines two results of the same kind (of two parts, or two chunks of a
            /// part). `None` when the kinds differ or the kind says they cannot
            /// combine, which only a confused or hostile peer can cause (see
            /// [`PartTask::could_produce`]).
            pub fn combine(self, other: PartResult) -> Option<PartResult> {
                match self {
                    $(PartResult::$variant(a) => {
                        let PartResult::$variant(b) = other else { return None };
                        <$module::$kind as Kind>::combine(a, b).map(PartResult::$variant)
                    })+
                }
            }
        }

        impl PartResult {
            /// See [`Kind::user_error`].
            pub fn user_error(&self) -> Option<String> {
                match self {
                    $(PartResult::$variant(output) => <$module::$kind as Kind>::user_error(output),)+
                }
            }
        }

        impl fmt::Display for PartResult {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $(PartResult::$variant(output) => output.fmt(f),)+
                }
            }
        }

        impl JobSpec {
            /// Reads the parameters of the kind named `kind` from the `[job]` table
            /// (without its `kind` key); `None` if no kind has that name.
            pub fn deserialize<'de, D: serde::Deserializer<'de>>(
                kind: &str,
                table: D,
            ) -> Option<Result<JobSpec, D::Error>> {
                $(if kind == <$module::$kind as Kind>::NAME {
                    return Some(
                        <<$module::$kind as Kind>::Params as Deserialize>::deserialize(table)
                            .map(JobSpec::$variant),
                    );
                })+
                None
            }

            /// The kind's name, as in job files.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(JobSpec::$variant(_) => <$module::$kind as Kind>::NAME,)+
                }
            }

            /// What the kind splits over, plural ("iterations").
            pub fn unit(&self) -> &'static str {
                match self {
                    $(JobSpec::$variant(_) => <$module::$kind as Kind>::UNIT,)+
                }
            }

            /// See [`Kind::validate_params`].
            pub fn validate(&self) -> Result<(), ParamError> {
                match self {
                    $(JobSpec::$variant(params) => <$module::$kind as Kind>::validate_params(params),)+
                }
            }

            /// See [`Kind::planned_units`].
            pub fn planned_units(&self) -> Option<u64> {
                match self {
                    $(JobSpec::$variant(params) => <$module::$kind as Kind>::planned_units(params),)+
                }
            }

            /// See [`Kind::seeds`].
            pub fn seeds(&self) -> Vec<(&'static str, u64)> {
                match self {
                    $(JobSpec::$variant(params) => <$module::$kind as Kind>::seeds(params),)+
                }
            }

            /// See [`Kind::load`].
            pub fn load(&self, base: &Path) -> Result<Job, String> {
                match self {
                    $(JobSpec::$variant(params) => {
                        <$module::$kind as Kind>::load(params, base).map(Job::$variant)
                    })+
                }
            }
        }

        impl Job {
            /// The kind's name, as in job files.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Job::$variant(_) => <$module::$kind as Kind>::NAME,)+
                }
            }

            /// What the kind splits over, plural ("iterations").
            pub fn unit(&self) -> &'static str {
                match self {
                    $(Job::$variant(_) => <$module::$kind as Kind>::UNIT,)+
                }
            }

            /// The number of units the job splits over (iterations, matrix rows); a job
            /// cannot have more parts than this.
            pub fn split_units(&self) -> u64 {
                match self {
                    $(Job::$variant(data) => <$module::$kind as Kind>::split_units(data),)+
                }
            }

            /// See [`Kind::save`]; fails if `result` is of another kind.
            pub fn save(&self, result: &PartResult) -> Result<Vec<PathBuf>, String> {
                match self {
                    $(Job::$variant(data) => {
                        let PartResult::$variant(output) = result else {
                            return Err(format!("a result of another kind than this {} job", self.kind()));
                        };
                        <$module::$kind as Kind>::save(data, output)
                    })+
                }
            }

            /// The part at `range`: its task and input.
            fn part(&self, range: PartRange) -> (PartTask, Bytes) {
                match self {
                    $(Job::$variant(data) => {
                        let (task, input) = <$module::$kind as Kind>::part(data, range);
                        (PartTask::$variant(task), input)
                    })+
                }
            }

            /// See [`Kind::shared_inputs`].
            pub fn shared_inputs(&self) -> Vec<SharedInput> {
                match self {
                    $(Job::$variant(data) => <$module::$kind as Kind>::shared_inputs(data),)+
                }
            }

        }
    };
}

job_kinds! {
    Loop => loop_sum::LoopSum,
    MatrixSum => matrix_sum::MatrixSum,
    SumOfSquares => sum_of_squares::SumOfSquares,
    Primes => primes::Primes,
    Mandelbrot => mandelbrot::Mandelbrot,
    Command => command::CommandKind,
    Matmul => matmul::Matmul,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::loop_sum::LoopPart;
    use crate::jobs::matrix_sum::{Element, Matrix, MatrixPart, MatrixTotal};

    #[test]
    fn results_out_of_a_part_s_reach_are_caught() {
        let block = PartTask::MatrixSum(MatrixPart {
            first_row: 0,
            rows: 2,
            cols: 3,
            element: Element::I64,
        });
        assert!(
            block.could_produce(&PartResult::MatrixSum(MatrixTotal::Integer(
                6 * i64::MAX as i128
            )))
        );
        assert!(
            block.could_produce(&PartResult::MatrixSum(MatrixTotal::Integer(
                6 * i64::MIN as i128
            )))
        );
        assert!(
            !block.could_produce(&PartResult::MatrixSum(MatrixTotal::Integer(
                6 * i64::MAX as i128 + 1
            )))
        );
        assert!(!block.could_produce(&PartResult::MatrixSum(MatrixTotal::Integer(i128::MAX))));
        assert!(!block.could_produce(&PartResult::Loop(1)));
        assert_eq!(
            PartResult::MatrixSum(MatrixTotal::Integer(i128::MAX))
                .combine(PartResult::MatrixSum(MatrixTotal::Integer(1))),
            None
        );
        assert_eq!(
            PartResult::Loop(1).combine(PartResult::MatrixSum(MatrixTotal::Integer(1))),
            None
        );
        assert!(!PartTask::Loop(LoopPart { lo: 0, hi: 1 })
            .could_produce(&PartResult::MatrixSum(MatrixTotal::Integer(0))));
    }

    #[test]
    fn ranges_cover_everything_once() {
        for total in [1u64, 7, 1000, u64::MAX] {
            for parts in [1usize, 2, 3, 7] {
                if parts as u64 > total {
                    continue;
                }
                let mut next = 0;
                for i in 0..parts {
                    let (lo, hi) = even_range(total, parts, i);
                    assert_eq!(lo, next);
                    assert!(hi > lo);
                    next = hi;
                }
                assert_eq!(next, total);
            }
        }
    }

    fn split_results(job: &Job, parts: usize) -> Option<PartResult> {
        combine_all(
            job.split(parts)
                .iter()
                .map(|p| p.compute(&CancelFlag::new()).unwrap()),
        )
    }

    #[test]
    fn loop_result_does_not_depend_on_the_split() {
        let job = Job::Loop(1000);
        for parts in [1, 2, 3, 7, 1000] {
            assert_eq!(
                split_results(&job, parts),
                Some(PartResult::Loop(4839925025133175650))
            );
        }
    }

    #[test]
    fn matrix_result_does_not_depend_on_the_split() {
        for element in [Element::I64, Element::F64] {
            let job = Job::MatrixSum(Matrix::generate(301, 7, 5, element));
            let whole = split_results(&job, 1);
            for parts in [2, 3, 7, 301] {
                assert_eq!(split_results(&job, parts), whole, "{element}");
            }
        }
    }

    #[test]
    fn kind_names_are_listed_in_wire_order_once_each() {
        assert_eq!(KIND_NAMES[..2], ["loop", "matrix-sum"]);
        let mut names = KIND_NAMES.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KIND_NAMES.len());
    }

    #[test]
    fn chunk_results_of_different_kinds_do_not_fold() {
        let mut partial = Some(PartResult::Loop(1));
        assert_eq!(
            fold_chunk_result(&mut partial, PartResult::MatrixSum(MatrixTotal::Integer(1))),
            Err(NoCombination)
        );
        let mut partial = None;
        fold_chunk_result(&mut partial, PartResult::Loop(2)).unwrap();
        fold_chunk_result(&mut partial, PartResult::Loop(3)).unwrap();
        assert_eq!(partial, Some(PartResult::Loop(5)));
    }
}
