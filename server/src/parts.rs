//! The parts of one connection, as a state machine without I/O.
//!
//! The connection task feeds this table what happens (a part requested, a data chunk
//! arrived, a chunk computed, a cancel) and carries out the [`Action`]s it returns
//! (hand a chunk to the executor, send a reply). Every rule about parts lives here,
//! where unit tests reach it without a socket:
//!
//! * each part is answered exactly once: with its result, or with one failure (refused,
//!   failed, cancelled), whatever happens to its other chunks afterwards;
//! * a part answered early (refused or failed while its input still arrives) drains
//!   the rest of its input silently, so the byte stream stays in step;
//! * a cancelled part's kernels are told to stop, which frees their workers, and the
//!   other parts are untouched;
//! * every chunk is checked against what its task declared before it is computed.
//!
//! A part lives in the table from its request until it is answered, its input has all
//! arrived, and none of its chunks is still computing.
//!
//! The job's shared inputs ([`Request::Share`](pool_common::protocol::Request::Share))
//! arrive before the connection's first part, which fixes them: every part computed on
//! the connection reads the same [`JobInputs`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pool_common::jobs::inputs::check_input_name;
use pool_common::jobs::{
    fold_chunk_result, CancelFlag, Cancelled, JobInputs, PartResult, PartTask, SharedInput,
};
use pool_common::protocol::{ErrorCode, RemoteError};
use pool_common::wire::IncomingInput;

/// What a connection accepts of one part; from the server's flags.
#[derive(Debug, Clone, Copy)]
pub struct PartLimits {
    /// Input bytes one part may ship, and the job's shared inputs in all
    /// (`--max-part-bytes`).
    pub max_part_bytes: u64,
    /// Work items one part may declare (`--max-part-work`).
    pub max_part_work: u64,
    /// Parts in the table at once (`--max-parts-per-connection`).
    pub max_parts: usize,
    /// Input the whole server buffers at once (`--max-buffer-memory`): the job's shared
    /// inputs, which a connection keeps for its life, must fit in it.
    pub max_buffer_memory: u64,
}

/// What the connection must do after an event.
#[derive(Debug)]
pub enum Action {
    /// Compute a chunk of a part on the executor, then report it with
    /// [`PartTable::computed`].
    Compute {
        /// The part.
        part_id: u64,
        /// Its task.
        task: Arc<PartTask>,
        /// Where the chunk starts in the part's input, in bytes.
        offset: u64,
        /// The chunk (empty for a part without input).
        chunk: Bytes,
        /// Set when the part is no longer wanted; the kernel checks it.
        cancel: Arc<CancelFlag>,
        /// The job's shared inputs.
        inputs: Arc<JobInputs>,
    },
    /// Send the part's result.
    Done {
        /// The part.
        part_id: u64,
        /// Its result, every chunk folded in.
        result: PartResult,
        /// Executor time spent on its chunks.
        compute: Duration,
    },
    /// Send the part's one failure.
    Failed {
        /// The part.
        part_id: u64,
        /// Why.
        error: RemoteError,
    },
}

/// A frame that breaks the protocol: the connection must end, saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

/// How a chunk computation ended on the executor.
#[derive(Debug)]
pub enum ChunkOutcome {
    /// It computed this.
    Computed(PartResult),
    /// The kernel saw the part's cancel flag and stopped.
    Cancelled,
    /// The kernel panicked, or the executor stopped.
    Lost,
}

impl From<Result<PartResult, Cancelled>> for ChunkOutcome {
    fn from(result: Result<PartResult, Cancelled>) -> Self {
        match result {
            Ok(result) => ChunkOutcome::Computed(result),
            Err(Cancelled) => ChunkOutcome::Cancelled,
        }
    }
}

/// One part accepted on this connection and not yet gone.
struct Entry {
    task: Arc<PartTask>,
    input: IncomingInput,
    /// Whether the part ships input: its chunk computations then hold data, and count
    /// against the connection's read-ahead.
    has_input: bool,
    /// Chunk computations handed out and not yet reported.
    computing: usize,
    partial: Option<PartResult>,
    compute: Duration,
    cancel: Arc<CancelFlag>,
    /// Whether the part's one reply has been sent (its result, or a failure).
    answered: bool,
}

impl Entry {
    fn is_finished(&self) -> bool {
        self.input.is_complete() && self.computing == 0
    }
}

/// The job's shared inputs on a connection.
enum Shares {
    /// No part has come yet: the inputs received so far, and the one arriving.
    Arriving {
        complete: Vec<SharedInput>,
        arriving: Option<ArrivingShare>,
        total_bytes: u64,
        /// Why the server will not keep them (over its size limit): every part is then
        /// refused with this.
        refusal: Option<RemoteError>,
    },
    /// The first part fixed them.
    Fixed(Arc<JobInputs>),
    /// The first part found them over the limit; every part is refused with this.
    Refused(RemoteError),
}

/// A shared input whose data is still arriving.
struct ArrivingShare {
    input_id: u64,
    name: String,
    executable: bool,
    remaining: u64,
    /// The content so far; nothing is kept of a share that will be refused.
    content: Option<BytesMut>,
}

/// The parts of one connection. See the module documentation.
pub struct PartTable {
    limits: PartLimits,
    shares: Shares,
    parts: HashMap<u64, Entry>,
    /// Entries not yet answered.
    unanswered: usize,
    /// Chunk computations holding input bytes, handed out and not yet reported: the
    /// connection stops reading while there are many, so its memory stays bounded.
    data_chunks_computing: usize,
}

impl PartTable {
    /// An empty table.
    pub fn new(limits: PartLimits) -> PartTable {
        PartTable {
            limits,
            shares: Shares::Arriving {
                complete: Vec::new(),
                arriving: None,
                total_bytes: 0,
                refusal: None,
            },
            parts: HashMap::new(),
            unanswered: 0,
            data_chunks_computing: 0,
        }
    }

    /// Parts in the table (answered ones still draining input or computing included).
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Parts accepted and not yet answered.
    pub fn unanswered(&self) -> usize {
        self.unanswered
    }

    /// Chunk computations with input bytes handed out and not yet reported.
    pub fn data_chunks_computing(&self) -> usize {
        self.data_chunks_computing
    }

    /// One of the job's shared inputs was announced; its data follows. Returns whether
    /// its content is kept (`bytes` of memory for the connection's life) rather than
    /// drained because the job's shared inputs are refused.
    pub fn share(
        &mut self,
        input_id: u64,
        name: String,
        bytes: u64,
        executable: bool,
    ) -> Result<bool, Violation> {
        let Shares::Arriving {
            complete,
            arriving,
            total_bytes,
            refusal,
        } = &mut self.shares
        else {
            return Err(Violation(
                "a shared input after the connection's first part (shares come first)".into(),
            ));
        };
        if arriving.is_some() {
            return Err(Violation(
                "a shared input announced before the previous one's data ended".into(),
            ));
        }
        check_input_name(&name).map_err(|e| Violation(format!("shared input: {e}")))?;
        *total_bytes = total_bytes.saturating_add(bytes);
        let limits = [
            (self.limits.max_part_bytes, "--max-part-bytes"),
            (self.limits.max_buffer_memory, "--max-buffer-memory"),
        ];
        if refusal.is_none() {
            *refusal = limits
                .into_iter()
                .find(|&(limit, _)| *total_bytes > limit)
                .map(|(limit, flag)| {
                    RemoteError::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "the job's shared inputs ship {total_bytes} bytes or more, over \
                             this server's limit of {limit} (raise pool-server {flag})"
                        ),
                    )
                });
        }
        let kept = refusal.is_none();
        let share = ArrivingShare {
            input_id,
            name,
            executable,
            remaining: bytes,
            content: kept.then(|| BytesMut::with_capacity(bytes as usize)),
        };
        if bytes == 0 {
            complete.extend(share.finish());
        } else {
            *arriving = Some(share);
        }
        Ok(kept)
    }

    /// The job's shared inputs, fixed by the first part: those received, or the reason
    /// every part is refused.
    fn fix_shares(&mut self) -> Result<Result<Arc<JobInputs>, RemoteError>, Violation> {
        if let Shares::Arriving {
            complete,
            arriving,
            refusal,
            ..
        } = &mut self.shares
        {
            if arriving.is_some() {
                return Err(Violation(
                    "a part before the data of a shared input ended".into(),
                ));
            }
            self.shares = match refusal.take() {
                Some(refusal) => Shares::Refused(refusal),
                None => Shares::Fixed(Arc::new(
                    JobInputs::new(std::mem::take(complete))
                        .map_err(|e| Violation(format!("shared inputs: {e}")))?,
                )),
            };
        }
        Ok(match &self.shares {
            Shares::Fixed(inputs) => Ok(Arc::clone(inputs)),
            Shares::Refused(refusal) => Err(refusal.clone()),
            Shares::Arriving { .. } => unreachable!("fixed above"),
        })
    }

    /// A part was requested. `refusal` is a reason the server refuses every part now
    /// (it is shutting down) or this one (its program is not allowed here).
    pub fn run_part(
        &mut self,
        part_id: u64,
        task: PartTask,
        refusal: Option<RemoteError>,
    ) -> Result<Vec<Action>, Violation> {
        if self.parts.contains_key(&part_id) {
            return Err(Violation(format!("part id {part_id} is already in flight")));
        }
        let inputs = self.fix_shares()?;
        let input = IncomingInput::new(&task)
            .map_err(|reason| Violation(format!("part {part_id}: {reason}")))?;
        let refusal = refusal
            .or_else(|| inputs.as_ref().err().cloned())
            .or_else(|| self.refusal(&task, input.remaining()))
            .or_else(|| {
                let inputs = inputs.as_ref().ok()?;
                let reason = task.check_inputs(inputs).err()?;
                Some(RemoteError::new(ErrorCode::BadRequest, reason))
            });
        // A refused part with input stays in the table until its input has drained.
        // Refusals cannot fill it without bound: past twice the limit, the connection
        // ends.
        let full = self.parts.len() >= 2 * self.limits.max_parts;
        if refusal.is_some() && !input.is_complete() && full {
            return Err(Violation(format!(
                "more than {} parts in flight on one connection, and as many refused parts \
                 still sending their data (raise the server's --max-parts-per-connection)",
                self.limits.max_parts
            )));
        }
        let mut entry = Entry {
            task: Arc::new(task),
            has_input: !input.is_complete(),
            input,
            computing: 0,
            partial: None,
            compute: Duration::ZERO,
            cancel: Arc::new(CancelFlag::new()),
            answered: false,
        };
        let mut actions = Vec::new();
        match refusal {
            Some(error) => {
                entry.answered = true;
                actions.push(Action::Failed { part_id, error });
            }
            None if entry.input.is_complete() => {
                actions.push(self.compute(part_id, &mut entry, 0, Bytes::new()));
            }
            None => {}
        }
        self.unanswered += usize::from(!entry.answered);
        if !entry.is_finished() {
            self.parts.insert(part_id, entry);
        }
        Ok(actions)
    }

    /// Why the server refuses this part, if it does.
    fn refusal(&self, task: &PartTask, input_bytes: u64) -> Option<RemoteError> {
        let limits = &self.limits;
        if let Err(reason) = task.validate() {
            return Some(RemoteError::new(ErrorCode::BadRequest, reason));
        }
        if input_bytes > limits.max_part_bytes {
            return Some(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the part ships {input_bytes} bytes, over this server's limit of {} \
                     (use more parts, or raise pool-server --max-part-bytes)",
                    limits.max_part_bytes
                ),
            ));
        }
        if task.work_items() > limits.max_part_work {
            return Some(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the part declares {} work items, over this server's limit of {} \
                     (use more parts, or raise pool-server --max-part-work)",
                    task.work_items(),
                    limits.max_part_work
                ),
            ));
        }
        if self.parts.len() >= limits.max_parts {
            return Some(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "more than {} parts in flight on one connection (raise the server's --max-parts-per-connection)",
                    limits.max_parts
                ),
            ));
        }
        None
    }

    /// A chunk of a part's input, or of a shared input, arrived.
    pub fn data(&mut self, part_id: u64, chunk: Bytes) -> Result<Vec<Action>, Violation> {
        if let Shares::Arriving {
            complete,
            arriving: arriving @ Some(_),
            ..
        } = &mut self.shares
        {
            let share = arriving.as_mut().expect("matched Some");
            if share.input_id != part_id {
                return Err(Violation(format!(
                    "data for {part_id} while shared input {} still arrives",
                    share.input_id
                )));
            }
            let len = chunk.len() as u64;
            if len == 0 || len > share.remaining {
                return Err(Violation(format!(
                    "shared input {:?}: a chunk of {len} bytes with {} to come",
                    share.name, share.remaining
                )));
            }
            share.remaining -= len;
            if let Some(content) = &mut share.content {
                content.extend_from_slice(&chunk);
            }
            if share.remaining == 0 {
                complete.extend(arriving.take().expect("matched Some").finish());
            }
            return Ok(Vec::new());
        }
        let Some(mut entry) = self.parts.remove(&part_id) else {
            return Err(Violation(format!(
                "data for part {part_id}, which is not in flight"
            )));
        };
        let offset = match entry.input.accept(&entry.task, chunk.len()) {
            Ok(offset) => offset,
            Err(reason) => {
                // The connection ends; the part's kernels must not outlive it.
                entry.cancel.cancel();
                return Err(Violation(format!("part {part_id}: {reason}")));
            }
        };
        let mut actions = Vec::new();
        if !entry.answered {
            actions.push(self.compute(part_id, &mut entry, offset, chunk));
        }
        if !entry.is_finished() {
            self.parts.insert(part_id, entry);
        }
        Ok(actions)
    }

    /// A chunk computation handed out by [`Action::Compute`] ended.
    pub fn computed(
        &mut self,
        part_id: u64,
        outcome: ChunkOutcome,
        elapsed: Duration,
    ) -> Vec<Action> {
        // A part stays in the table while any of its chunks computes.
        let Some(mut entry) = self.parts.remove(&part_id) else {
            return Vec::new();
        };
        self.data_chunks_computing -= usize::from(entry.has_input);
        entry.computing -= 1;
        entry.compute += elapsed;
        let failure = match outcome {
            ChunkOutcome::Computed(result) => fold_chunk_result(&mut entry.partial, result)
                .err()
                .map(|_| {
                    RemoteError::new(
                        ErrorCode::Internal,
                        "the part's chunk results do not combine",
                    )
                }),
            ChunkOutcome::Cancelled => Some(RemoteError::new(
                ErrorCode::Cancelled,
                "the part was cancelled",
            )),
            ChunkOutcome::Lost => Some(RemoteError::new(
                ErrorCode::Internal,
                "the kernel failed (see the server log)",
            )),
        };
        let mut actions = Vec::new();
        if !entry.answered {
            if let Some(error) = failure {
                entry.answered = true;
                self.unanswered -= 1;
                entry.cancel.cancel();
                actions.push(Action::Failed { part_id, error });
            } else if entry.is_finished() {
                entry.answered = true;
                self.unanswered -= 1;
                actions.push(Action::Done {
                    part_id,
                    result: entry.partial.take().expect("a computed part has a result"),
                    compute: entry.compute,
                });
            }
        }
        if !entry.is_finished() {
            self.parts.insert(part_id, entry);
        }
        actions
    }

    /// The client withdrew a part: its kernels stop, and it is answered now with
    /// [`ErrorCode::Cancelled`] unless it was answered already. A part not in the table
    /// was answered a moment ago; the cancel crossed its reply and is ignored.
    pub fn cancel(&mut self, part_id: u64) -> Vec<Action> {
        let Some(entry) = self.parts.get_mut(&part_id) else {
            return Vec::new();
        };
        entry.cancel.cancel();
        if entry.answered {
            return Vec::new();
        }
        entry.answered = true;
        self.unanswered -= 1;
        vec![Action::Failed {
            part_id,
            error: RemoteError::new(ErrorCode::Cancelled, "the client cancelled the part"),
        }]
    }

    /// Tells every part's kernels to stop (the connection is ending).
    pub fn cancel_all(&self) {
        for entry in self.parts.values() {
            entry.cancel.cancel();
        }
    }

    /// The action computing `chunk`, which starts `offset` bytes into the part's input.
    fn compute(&mut self, part_id: u64, entry: &mut Entry, offset: u64, chunk: Bytes) -> Action {
        entry.computing += 1;
        self.data_chunks_computing += usize::from(entry.has_input);
        let Shares::Fixed(inputs) = &self.shares else {
            unreachable!("a part is computed only once the shares are fixed and kept")
        };
        Action::Compute {
            part_id,
            task: Arc::clone(&entry.task),
            offset,
            chunk,
            cancel: Arc::clone(&entry.cancel),
            inputs: Arc::clone(inputs),
        }
    }
}

impl ArrivingShare {
    /// The input, once all its data has arrived; nothing for one being refused.
    fn finish(self) -> Option<SharedInput> {
        Some(SharedInput {
            name: self.name,
            bytes: self.content?.freeze(),
            executable: self.executable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_common::jobs::loop_sum::LoopPart;
    use pool_common::jobs::matrix_sum::{Element, MatrixPart, MatrixTotal};
    use pool_common::jobs::{compute_chunk, Chunk};

    fn table() -> PartTable {
        PartTable::new(PartLimits {
            max_part_bytes: 1 << 20,
            max_part_work: u64::MAX,
            max_parts: 4,
            max_buffer_memory: 1 << 30,
        })
    }

    fn matrix(rows: u64) -> PartTask {
        PartTask::MatrixSum(MatrixPart {
            first_row: 0,
            rows,
            cols: 1,
            element: Element::I64,
        })
    }

    fn loop_part(hi: u64) -> PartTask {
        PartTask::Loop(LoopPart { lo: 0, hi })
    }

    /// Runs every Compute action as the executor would, and reports it back.
    fn execute(table: &mut PartTable, actions: Vec<Action>) -> Vec<Action> {
        let mut replies = Vec::new();
        for action in actions {
            match action {
                Action::Compute {
                    part_id,
                    task,
                    offset,
                    chunk,
                    cancel,
                    inputs,
                } => {
                    let chunk = Chunk {
                        offset,
                        bytes: &chunk,
                    };
                    let outcome = compute_chunk(&task, chunk, &inputs, &cancel).into();
                    let more = table.computed(part_id, outcome, Duration::ZERO);
                    replies.extend(execute(table, more));
                }
                reply => replies.push(reply),
            }
        }
        replies
    }

    fn eight_bytes(value: i64) -> Bytes {
        Bytes::copy_from_slice(&value.to_le_bytes())
    }

    #[test]
    fn a_part_is_computed_from_its_chunks_and_answered_once() {
        let mut table = table();
        let actions = table.run_part(1, matrix(2), None).unwrap();
        assert!(actions.is_empty(), "nothing to compute before its data");
        let first = table.data(1, eight_bytes(5)).unwrap();
        let second = table.data(1, eight_bytes(-7)).unwrap();
        let mut replies = execute(&mut table, second);
        replies.extend(execute(&mut table, first));
        assert!(matches!(
            replies.as_slice(),
            [Action::Done {
                part_id: 1,
                result: PartResult::MatrixSum(MatrixTotal::Integer(-2)),
                ..
            }]
        ));
        assert!(table.is_empty());
        assert_eq!(table.data_chunks_computing(), 0);
    }

    #[test]
    fn a_failed_chunk_answers_the_part_once_whatever_its_other_chunks_do() {
        let mut table = table();
        table.run_part(1, matrix(3), None).unwrap();
        let computes: Vec<Action> = (0..3)
            .flat_map(|v| table.data(1, eight_bytes(v)).unwrap())
            .collect();
        assert_eq!(table.data_chunks_computing(), 3);
        // The first chunk's kernel fails; the two others then see the cancel flag.
        let failed = table.computed(1, ChunkOutcome::Lost, Duration::ZERO);
        assert!(matches!(
            failed.as_slice(),
            [Action::Failed { part_id: 1, .. }]
        ));
        let mut replies = Vec::new();
        for action in computes.into_iter().skip(1) {
            let Action::Compute { cancel, .. } = action else {
                panic!("{action:?}")
            };
            assert!(cancel.is_cancelled());
            replies.extend(table.computed(1, ChunkOutcome::Cancelled, Duration::ZERO));
        }
        assert!(replies.is_empty(), "a second reply: {replies:?}");
        assert!(table.is_empty());
    }

    #[test]
    fn a_refused_part_drains_its_input_without_a_second_reply() {
        let mut table = table();
        let too_big = PartTask::MatrixSum(MatrixPart {
            first_row: 0,
            rows: 1 << 20,
            cols: 1,
            element: Element::I64,
        });
        let actions = table.run_part(7, too_big, None).unwrap();
        assert!(matches!(
            actions.as_slice(),
            [Action::Failed { part_id: 7, error }] if error.code == ErrorCode::LimitExceeded
        ));
        for _ in 0..3 {
            assert!(table.data(7, eight_bytes(1)).unwrap().is_empty());
        }
        assert_eq!(table.len(), 1, "still draining");
        assert!(table.data(8, eight_bytes(1)).is_err());
    }

    #[test]
    fn a_cancelled_part_is_answered_once_and_frees_its_worker() {
        let mut table = table();
        let actions = table.run_part(1, loop_part(u64::MAX), None).unwrap();
        let other = table.run_part(2, loop_part(1000), None).unwrap();
        let [Action::Compute { cancel, .. }] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        let cancelled = table.cancel(1);
        assert!(matches!(
            cancelled.as_slice(),
            [Action::Failed { part_id: 1, error }] if error.code == ErrorCode::Cancelled
        ));
        assert!(cancel.is_cancelled(), "the kernel is told to stop");
        assert!(table.cancel(1).is_empty(), "a second cancel sends nothing");
        // The kernel stops at once; its report sends nothing more.
        let replies = execute(&mut table, actions);
        assert!(replies.is_empty(), "{replies:?}");
        // The other part is untouched.
        let replies = execute(&mut table, other);
        assert!(matches!(
            replies.as_slice(),
            [Action::Done {
                part_id: 2,
                result: PartResult::Loop(4839925025133175650),
                ..
            }]
        ));
        assert!(table.is_empty());
        assert!(table.cancel(99).is_empty(), "unknown parts are ignored");
    }

    #[test]
    fn a_cancel_after_the_result_sends_nothing() {
        let mut table = table();
        let actions = table.run_part(3, loop_part(10), None).unwrap();
        assert_eq!(execute(&mut table, actions).len(), 1);
        assert!(table.cancel(3).is_empty());
    }

    #[test]
    fn protocol_violations_are_named() {
        let mut table = table();
        table.run_part(1, matrix(1), None).unwrap();
        assert_eq!(
            table.run_part(1, matrix(1), None).unwrap_err(),
            Violation("part id 1 is already in flight".into())
        );
        assert!(table.data(1, Bytes::from_static(&[1, 2, 3])).is_err());
        let mut table = self::table();
        table.run_part(1, matrix(1), None).unwrap();
        assert!(table
            .data(1, Bytes::from(vec![0u8; 16]))
            .unwrap_err()
            .0
            .contains("16 bytes of data where 8 remained"));
        let overflowing = PartTask::MatrixSum(MatrixPart {
            first_row: 0,
            rows: u64::MAX,
            cols: 2,
            element: Element::I64,
        });
        assert!(table.run_part(2, overflowing, None).is_err());
    }

    #[test]
    fn a_violation_stops_the_part_s_kernels() {
        let mut table = table();
        let actions = table.run_part(1, loop_part(u64::MAX), None).unwrap();
        let [Action::Compute { cancel, .. }] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert!(
            table.data(1, eight_bytes(1)).is_err(),
            "a loop takes no data"
        );
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn refused_parts_cannot_grow_the_table_without_bound() {
        let mut table = table();
        let mut id = 0;
        let outcome = loop {
            id += 1;
            match table.run_part(id, matrix(2), None) {
                Ok(_) if id < 100 => continue,
                other => break other,
            }
        };
        assert!(outcome.is_err(), "still accepting after {id} parts");
        assert_eq!(table.len(), 8, "the limit and as many draining refusals");
        assert_eq!(table.unanswered(), 4);
    }

    #[test]
    fn limits_and_shutdown_refuse_parts() {
        let mut table = table();
        for id in 0..4 {
            table.run_part(id, matrix(1), None).unwrap();
        }
        let refused = table.run_part(4, loop_part(1), None).unwrap();
        assert!(matches!(
            refused.as_slice(),
            [Action::Failed { error, .. }] if error.message.contains("--max-parts-per-connection")
        ));
        let mut table = self::table();
        let shutting_down = RemoteError::new(ErrorCode::ShuttingDown, "bye");
        let refused = table
            .run_part(1, loop_part(1), Some(shutting_down))
            .unwrap();
        assert!(matches!(
            refused.as_slice(),
            [Action::Failed { error, .. }] if error.code == ErrorCode::ShuttingDown
        ));
        assert!(table.is_empty());
        let reversed = PartTask::Loop(LoopPart { lo: 5, hi: 1 });
        let refused = table.run_part(2, reversed, None).unwrap();
        assert!(matches!(
            refused.as_slice(),
            [Action::Failed { error, .. }] if error.code == ErrorCode::BadRequest
        ));
    }

    #[test]
    fn shared_inputs_reach_every_part_of_the_connection() {
        let mut table = table();
        table.share(100, "lib/a.txt".into(), 5, false).unwrap();
        assert!(table
            .data(100, Bytes::from_static(b"hel"))
            .unwrap()
            .is_empty());
        assert!(table
            .data(100, Bytes::from_static(b"lo"))
            .unwrap()
            .is_empty());
        table.share(101, "empty".into(), 0, true).unwrap();
        for id in 0..2 {
            let actions = table.run_part(id, loop_part(1), None).unwrap();
            let [Action::Compute { inputs, .. }] = actions.as_slice() else {
                panic!("{actions:?}")
            };
            assert_eq!(inputs.get("lib/a.txt").unwrap().as_ref(), b"hello");
            assert_eq!(inputs.inputs()[1].name, "empty");
            assert!(inputs.inputs()[1].executable);
        }
    }

    #[test]
    fn shares_out_of_order_or_escaping_end_the_connection() {
        let mut table = table();
        for name in ["../x", "/etc/passwd", "a/./b", ""] {
            assert!(table.share(1, name.into(), 1, false).is_err(), "{name:?}");
        }
        table.share(1, "a".into(), 4, false).unwrap();
        assert!(
            table.share(2, "b".into(), 1, false).is_err(),
            "before a's data ended"
        );
        assert!(
            table.run_part(3, loop_part(1), None).is_err(),
            "a part before a's data"
        );
        assert!(
            table.data(1, Bytes::from_static(b"12345")).is_err(),
            "overrun"
        );

        let mut table = self::table();
        table.share(1, "a".into(), 0, false).unwrap();
        table.share(2, "a".into(), 0, false).unwrap();
        assert!(
            table.run_part(3, loop_part(1), None).is_err(),
            "a name twice"
        );

        let mut table = self::table();
        table.run_part(1, loop_part(1), None).unwrap();
        assert!(
            table.share(2, "late".into(), 0, false).is_err(),
            "after a part"
        );
    }

    #[test]
    fn shares_over_the_limit_are_drained_and_every_part_refused() {
        let mut table = table();
        let big = (1 << 20) + 1;
        assert!(
            !table.share(1, "big".into(), big, false).unwrap(),
            "drained"
        );
        let chunk = Bytes::from(vec![0u8; 1 << 20]);
        table.data(1, chunk).unwrap();
        table.data(1, Bytes::from_static(b"x")).unwrap();
        for id in 2..4 {
            let refused = table.run_part(id, loop_part(1), None).unwrap();
            assert!(matches!(
                refused.as_slice(),
                [Action::Failed { error, .. }] if error.code == ErrorCode::LimitExceeded
                    && error.message.contains("--max-part-bytes")
            ));
        }
    }

    #[test]
    fn shares_that_the_buffer_budget_cannot_hold_are_refused_naming_its_flag() {
        let mut table = PartTable::new(PartLimits {
            max_buffer_memory: 100,
            ..table().limits
        });
        assert!(table.share(1, "a".into(), 60, false).unwrap(), "kept");
        table.data(1, Bytes::from(vec![1u8; 60])).unwrap();
        assert!(!table.share(2, "b".into(), 60, false).unwrap(), "drained");
        table.data(2, Bytes::from(vec![1u8; 60])).unwrap();
        let refused = table.run_part(3, loop_part(1), None).unwrap();
        assert!(matches!(
            refused.as_slice(),
            [Action::Failed { error, .. }] if error.code == ErrorCode::LimitExceeded
                && error.message.contains("120 bytes or more")
                && error.message.contains("--max-buffer-memory")
        ));
    }
}
