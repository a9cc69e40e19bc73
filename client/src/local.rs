//! The local baselines: the same parts, computed by the same kernel, on this machine.
//!
//! * sequential: one thread, parts in order;
//! * threaded: one OS thread per part, all at once;
//! * multi-process: one child process per part, all at once. The child is this very
//!   program run as `pool-client part`; the job's shared inputs, the part's task and
//!   its data go in over its standard input and the result comes back over its
//!   standard output, in the same frames a server would receive and send.
//! * multi-process (shared memory): the same children, but the parts' data lives in a
//!   shared mapping (a memfd, [`SharedData`]), placed there once before the runs, and
//!   every child maps it and reads its block in place; only the task goes through the
//!   pipe. The pipe version copies each byte twice per run (into the pipe, and out of
//!   it into the child); this one copies nothing.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use pool_common::codec::{read_frame_blocking, write_frame_blocking, Frame};
use pool_common::jobs::{
    combine_all, CancelFlag, Cancelled, JobInputs, Part, PartComputation, PartResult, PartTask,
    SharedInput,
};
use pool_common::protocol::Request;
use pool_common::wire::{
    read_answer_blocking, result_frames, share_frames, write_part_blocking, IncomingInput,
    PartAnswer,
};

/// The combined result of some parts and how long computing them took.
#[derive(Debug, Clone)]
pub struct LocalRun {
    /// The combined result.
    pub result: PartResult,
    /// Wall-clock time for all the parts, on the client's monotonic clock.
    pub elapsed: Duration,
    /// The time each part took on its own, in part order: measured by the sequential
    /// mode, where a part has the machine to itself; empty for the other modes.
    pub part_times: Vec<Duration>,
}

/// Called once for each part computed, from whichever thread computed it (progress
/// bars count parts with it).
pub type OnPartDone<'a> = &'a (dyn Fn() + Sync);

/// Computes the parts one after another on this thread.
pub fn sequential(
    parts: &[Part],
    cancel: &CancelFlag,
    on_part_done: OnPartDone,
) -> Result<LocalRun, Cancelled> {
    let started = Instant::now();
    let mut part_times = Vec::with_capacity(parts.len());
    let results = parts
        .iter()
        .map(|part| {
            let part_started = Instant::now();
            let result = part.compute(cancel)?;
            part_times.push(part_started.elapsed());
            on_part_done();
            Ok(result)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LocalRun {
        part_times,
        ..finish(results, started)
    })
}

/// Computes each part on its own OS thread, all at once.
pub fn threaded(
    parts: &[Part],
    cancel: &CancelFlag,
    on_part_done: OnPartDone,
) -> Result<LocalRun, Cancelled> {
    let started = Instant::now();
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| {
                scope.spawn(|| {
                    let result = part.compute(cancel)?;
                    on_part_done();
                    Ok(result)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a kernel thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(finish(results, started))
}

/// How a worker process gets its part's data.
#[derive(Clone, Copy)]
pub enum DataPath<'a> {
    /// Through its standard input, in data frames.
    Pipe,
    /// In place, from the parts' data placed in shared memory (the parts must be the
    /// ones [`SharedData::place`] returned).
    SharedMemory(&'a SharedData),
}

/// Computes each part in its own child process (`exe part`), all at once, its data
/// going the way `path` says. If `cancel` is set meanwhile, the children are killed.
pub fn multi_process(
    parts: &[Part],
    exe: &Path,
    path: DataPath,
    cancel: &CancelFlag,
    on_part_done: OnPartDone,
) -> anyhow::Result<LocalRun> {
    let started = Instant::now();
    let mut children = Vec::with_capacity(parts.len());
    for index in 0..parts.len() {
        let mut command = Command::new(exe);
        command.arg("part");
        if let DataPath::SharedMemory(shared) = path {
            shared.pass_to(&mut command, index);
        }
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} as a worker process", exe.display()))?;
        children.push(child);
    }
    let children = Mutex::new(children);
    let all_answered = AtomicBool::new(false);
    // One thread per child feeds it and reads its answer, so no pipe fills up while
    // another child is being served; one more watches for cancellation.
    let results = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !all_answered.load(Ordering::Relaxed) {
                if cancel.is_cancelled() {
                    for child in children.lock().expect("children lock poisoned").iter_mut() {
                        let _ = child.kill();
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut pipes = Vec::new();
        for child in children.lock().expect("children lock poisoned").iter_mut() {
            pipes.push((
                child.stdin.take().expect("piped"),
                child.stdout.take().expect("piped"),
            ));
        }
        let handles: Vec<_> = pipes
            .into_iter()
            .zip(parts)
            .map(|((stdin, stdout), part)| {
                scope.spawn(move || -> anyhow::Result<PartResult> {
                    // Shared inputs take the ids after the part's.
                    let part_id = 0;
                    let mut input = BufWriter::new(stdin);
                    for (input_id, shared) in (1..).zip(part.shared.inputs()) {
                        for frame in share_frames(input_id, shared) {
                            write_frame_blocking(&mut input, &frame)?;
                        }
                    }
                    match path {
                        DataPath::Pipe => {
                            write_part_blocking(&mut input, part_id, &part.task, &part.input)?
                        }
                        DataPath::SharedMemory(_) => write_frame_blocking(
                            &mut input,
                            &Frame::Request(Request::RunPart {
                                part_id,
                                task: part.task.clone(),
                            }),
                        )?,
                    }
                    drop(input);
                    let answer =
                        read_answer_blocking(&mut BufReader::new(stdout), part_id, &part.task)
                            .map_err(|e| anyhow!("part {}: worker process: {e}", part.index))?;
                    match answer {
                        PartAnswer::Done(result, _) => {
                            on_part_done();
                            Ok(result)
                        }
                        PartAnswer::Failed(error) => {
                            Err(anyhow!("part {}: worker process: {error}", part.index))
                        }
                    }
                })
            })
            .collect();
        let results = handles
            .into_iter()
            .map(|h| h.join().expect("a feeder thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>();
        all_answered.store(true, Ordering::Relaxed);
        results
    });
    if cancel.is_cancelled() {
        bail!("interrupted");
    }
    for child in children.lock().expect("children lock poisoned").iter_mut() {
        let status = child.wait()?;
        if !status.success() {
            bail!("a worker process exited with {status}");
        }
    }
    Ok(finish(results?, started))
}

/// The parts' data laid end to end in a memfd: the parts' inputs are slices of its
/// mapping, and the worker processes of the shared-memory mode map it too, each
/// reading its part's block in place.
pub struct SharedData {
    file: File,
    /// Where each part's data starts.
    offsets: Vec<u64>,
}

impl SharedData {
    /// Places every part's data in a new memfd, once, and returns it with the parts
    /// re-pointed at it (their old buffers can then be freed: the data is not held
    /// twice).
    pub fn place(parts: &[Part]) -> anyhow::Result<(SharedData, Vec<Part>)> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags.
        let fd = unsafe { libc::memfd_create(c"pool-part-data".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            bail!(
                "cannot create shared memory for the parts' data: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut offsets = Vec::with_capacity(parts.len());
        let mut total = 0u64;
        for part in parts {
            offsets.push(total);
            total += part.input.len() as u64;
        }
        file.set_len(total)
            .context("cannot size the shared memory for the parts' data")?;
        // Written, not mapped and filled: the kernel copies into its pages directly,
        // without a page fault per 4 KiB on our side.
        for (part, &at) in parts.iter().zip(&offsets) {
            file.write_all_at(&part.input, at)
                .context("cannot fill the shared memory for the parts' data")?;
        }
        let placed = if total == 0 {
            Bytes::new()
        } else {
            // SAFETY: nobody writes the memfd any more: the children map it read-only.
            let mapping = unsafe { memmap2::Mmap::map(&file) }
                .context("cannot map the shared memory for the parts' data")?;
            Bytes::from_owner(mapping)
        };
        let parts = parts
            .iter()
            .zip(&offsets)
            .map(|(part, &at)| Part {
                input: placed.slice(at as usize..at as usize + part.input.len()),
                ..part.clone()
            })
            .collect();
        Ok((SharedData { file, offsets }, parts))
    }

    /// Has the worker process `command` starts for part `index` inherit the memfd, and
    /// tells it where its part's data starts.
    fn pass_to(&self, command: &mut Command, index: usize) {
        let fd = self.file.as_raw_fd();
        command.args([
            "--shared-fd",
            &fd.to_string(),
            "--shared-at",
            &self.offsets[index].to_string(),
        ]);
        // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe;
        // it keeps the memfd open across exec in this child alone.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Where a worker process finds its part's data when it is shared rather than piped
/// (`pool-client part --shared-fd FD --shared-at OFFSET`).
#[derive(Debug, Clone, Copy)]
pub struct SharedDataAt {
    /// The inherited descriptor of the parent's memfd.
    pub fd: i32,
    /// Where the part's data starts in it.
    pub offset: u64,
}

/// The body of a worker process (`pool-client part`): reads the job's shared inputs
/// and one part from standard input, computes the part chunk by chunk as the data
/// arrives (or, with `shared`, from the parent's mapping in place), writes the answer
/// to standard output.
pub fn worker_process_main(shared_data: Option<SharedDataAt>) -> anyhow::Result<()> {
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut shared = Vec::new();
    let (part_id, task) = loop {
        match read_frame_blocking(&mut input)? {
            Some(Frame::Request(Request::Share {
                input_id,
                name,
                bytes,
                executable,
            })) => shared.push(SharedInput {
                name,
                bytes: read_share_blocking(&mut input, input_id, bytes)?,
                executable,
            }),
            Some(Frame::Request(Request::RunPart { part_id, task })) => break (part_id, task),
            _ => bail!("a worker process expects a part on standard input"),
        }
    };
    let shared = JobInputs::new(shared).map_err(|e| anyhow!(e))?;
    task.validate().map_err(|e| anyhow!(e))?;
    task.check_inputs(&shared).map_err(|e| anyhow!(e))?;
    let mut incoming = IncomingInput::new(&task).map_err(|e| anyhow!(e))?;
    let cancel = CancelFlag::new();
    let mut computation = PartComputation::new(&task, &shared);
    if incoming.is_complete() {
        computation.add_chunk(&[], &cancel)?;
    }
    if let Some(at) = shared_data {
        compute_in_place(&task, at, &mut incoming, &mut computation, &cancel)?;
    }
    while !incoming.is_complete() {
        let Some(Frame::Data { bytes, .. }) = read_frame_blocking(&mut input)? else {
            bail!("the part's data ended {} bytes early", incoming.remaining());
        };
        incoming
            .accept(&task, bytes.len())
            .map_err(|e| anyhow!(e))?;
        computation.add_chunk(&bytes, &cancel)?;
    }
    let (result, compute) = computation
        .finish()
        .ok_or_else(|| anyhow!("the part's chunk results do not combine"))?;
    let mut out = std::io::stdout().lock();
    for frame in result_frames(part_id, result, compute.as_nanos() as u64)? {
        write_frame_blocking(&mut out, &frame)?;
    }
    out.flush()?;
    Ok(())
}

/// Feeds a part's data to its computation from the parent's mapping, in the chunks a
/// server would get.
fn compute_in_place(
    task: &PartTask,
    at: SharedDataAt,
    incoming: &mut IncomingInput,
    computation: &mut PartComputation,
    cancel: &CancelFlag,
) -> anyhow::Result<()> {
    let len = incoming.remaining() as usize;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the descriptor was inherited from the parent for this process alone.
    let file = unsafe { File::from_raw_fd(at.fd) };
    // SAFETY: the parent wrote the mapping before starting this process and does not
    // change it while children run.
    // Populated at once: one call maps every page, where touching them would fault
    // once per 4 KiB.
    let mapping = unsafe {
        memmap2::MmapOptions::new()
            .offset(at.offset)
            .len(len)
            .populate()
            .map(&file)
    }
    .context("cannot map the parent's shared memory")?;
    for chunk in mapping.chunks(task.chunk_bytes()) {
        incoming.accept(task, chunk.len()).map_err(|e| anyhow!(e))?;
        computation.add_chunk(chunk, cancel)?;
    }
    Ok(())
}

/// Reads the `len` bytes of shared input `input_id` from its data frames.
fn read_share_blocking(input: &mut impl Read, input_id: u64, len: u64) -> anyhow::Result<Bytes> {
    let mut content = BytesMut::new();
    while (content.len() as u64) < len {
        match read_frame_blocking(input)? {
            Some(Frame::Data { part_id, bytes })
                if part_id == input_id && content.len() as u64 + bytes.len() as u64 <= len =>
            {
                content.extend_from_slice(&bytes)
            }
            _ => bail!("shared input {input_id} ended early or overran"),
        }
    }
    Ok(content.freeze())
}

fn finish(results: Vec<PartResult>, started: Instant) -> LocalRun {
    let elapsed = started.elapsed();
    LocalRun {
        result: combine_all(results).expect("a job has at least one part of one kind"),
        elapsed,
        part_times: Vec::new(),
    }
}
