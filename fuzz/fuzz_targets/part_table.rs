//! Fuzzes the server's part state machine, `pool_server::parts::PartTable`, with
//! arbitrary sequences of what a connection feeds it: shared inputs, part requests
//! (valid, refused, or of impossible sizes), data chunks for any id, chunk computations
//! ending (computed for real by the kernel, cancelled, or lost), cancels and the
//! connection's end.
//!
//! A model of each part beside the table (its task, the input sent, the chunks handed
//! out and not yet reported, whether it was answered) checks after every step that:
//!
//! * every part is answered at most once, and only a part the table accepted;
//! * a part answered (or cancelled) gets no further computation from its late chunks,
//!   and is never answered again;
//! * a result is sent only once all the part's input arrived and every chunk of it was
//!   reported, and it equals the part computed here in one go from the same input;
//! * a cancelled or failed part's kernels are told to stop, and so are all of them
//!   when the connection ends (on a protocol violation, or at the end of the input);
//! * chunks are handed out in order, inside the part's declared input, and every part
//!   reads the same shared inputs, those sent;
//! * `len()`, `unanswered()` and `data_chunks_computing()` agree with the model, and
//!   stay within the limits (`max_parts` unanswered, twice that in the table).
//!
//! No panic is allowed: libFuzzer reports one as a crash.

#![no_main]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::mandelbrot::{MandelbrotPart, Region, View};
use pool_common::jobs::matmul::MatmulPart;
use pool_common::jobs::matrix_sum::{Element, MatrixPart};
use pool_common::jobs::primes::PrimesPart;
use pool_common::jobs::sum_of_squares::SquaresPart;
use pool_common::jobs::{
    compute_chunk, CancelFlag, Chunk, JobInputs, PartComputation, PartResult, PartTask,
};
use pool_common::protocol::{ErrorCode, RemoteError};
use pool_server::parts::{Action, ChunkOutcome, PartLimits, PartTable};

/// Small limits, so they are reached, and every accepted part is cheap to compute.
const LIMITS: PartLimits = PartLimits {
    max_part_bytes: 4096,
    max_part_work: 4096,
    max_parts: 4,
    max_buffer_memory: 8192,
};

/// Ids are drawn from a few values, so parts meet their own late chunks and reuse ids.
const IDS: u8 = 6;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A shared input announced.
    Share {
        input_id: u8,
        name: u8,
        bytes: u8,
        executable: bool,
    },
    /// A part requested; `refuse` stands for the server shutting down.
    RunPart {
        part_id: u8,
        task: Task,
        refuse: bool,
    },
    /// A chunk of data with the fuzzer's bytes.
    Data { id: u8, bytes: Vec<u8> },
    /// A longer chunk of data, `len` copies of `fill`.
    DataFill { id: u8, len: u16, fill: u8 },
    /// One of the computations handed out ends.
    Complete { which: u8, outcome: Outcome },
    /// The client cancels a part.
    Cancel { part_id: u8 },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Outcome {
    /// The kernel runs for real (it may see the cancel flag and stop).
    Real,
    /// The kernel saw the cancel flag.
    Cancelled,
    /// The kernel panicked.
    Lost,
}

#[derive(Arbitrary, Debug)]
enum Task {
    Loop {
        lo: u16,
        hi: u16,
    },
    WildLoop {
        lo: u64,
        hi: u64,
    },
    Matrix {
        first_row: u8,
        rows: u8,
        cols: u8,
        f64: bool,
    },
    WildMatrix {
        first_row: u64,
        rows: u64,
        cols: u64,
    },
    Squares {
        lo: u16,
        hi: u16,
    },
    Primes {
        lo: u16,
        hi: u16,
    },
    Matmul {
        n: u8,
        first_row: u8,
        rows: u8,
        keep_rows: bool,
    },
    WildMatmul {
        n: u64,
        first_row: u64,
        rows: u64,
    },
    Mandelbrot {
        width: u8,
        height: u8,
        first_row: u8,
        rows: u8,
        max_iter: u8,
    },
}

impl Task {
    fn part_task(&self) -> PartTask {
        match *self {
            Task::Loop { lo, hi } => PartTask::Loop(LoopPart {
                lo: lo.into(),
                hi: hi.into(),
            }),
            Task::WildLoop { lo, hi } => PartTask::Loop(LoopPart { lo, hi }),
            Task::Matrix {
                first_row,
                rows,
                cols,
                f64,
            } => PartTask::MatrixSum(MatrixPart {
                first_row: first_row.into(),
                rows: rows.into(),
                cols: cols.into(),
                element: if f64 { Element::F64 } else { Element::I64 },
            }),
            Task::WildMatrix {
                first_row,
                rows,
                cols,
            } => PartTask::MatrixSum(MatrixPart {
                first_row,
                rows,
                cols,
                element: Element::I64,
            }),
            Task::Squares { lo, hi } => PartTask::SumOfSquares(SquaresPart {
                lo: lo.into(),
                hi: hi.into(),
            }),
            Task::Primes { lo, hi } => PartTask::Primes(PrimesPart {
                lo: lo.into(),
                hi: hi.into(),
            }),
            Task::Matmul {
                n,
                first_row,
                rows,
                keep_rows,
            } => PartTask::Matmul(MatmulPart {
                n: n.into(),
                first_row: first_row.into(),
                rows: rows.into(),
                keep_rows,
            }),
            Task::WildMatmul { n, first_row, rows } => PartTask::Matmul(MatmulPart {
                n,
                first_row,
                rows,
                keep_rows: false,
            }),
            Task::Mandelbrot {
                width,
                height,
                first_row,
                rows,
                max_iter,
            } => PartTask::Mandelbrot(MandelbrotPart {
                view: View {
                    region: Region {
                        x_min: -2.0,
                        x_max: 1.0,
                        y_min: -1.0,
                        y_max: 1.0,
                    },
                    width: width.into(),
                    height: height.into(),
                    max_iter: max_iter.into(),
                },
                first_row: first_row.into(),
                rows: rows.into(),
            }),
        }
    }
}

/// Names of shared inputs: the matrix product's B, ordinary ones, and refused ones.
const NAMES: [&str; 6] = ["B", "a", "lib/b.txt", "../x", "", "B"];

/// What the model knows of one part accepted by the table and not yet gone from it.
struct Model {
    task: PartTask,
    /// Its declared input size.
    input_len: u64,
    /// The input sent so far.
    received: Vec<u8>,
    answered: bool,
    /// Computations handed out and not yet reported.
    computing: usize,
    /// Its cancel flag, from its first computation.
    cancel: Option<Arc<CancelFlag>>,
    /// Whether every chunk reported so far was computed by the real kernel.
    all_real: bool,
}

impl Model {
    /// Whether the table must have let the part go.
    fn gone(&self) -> bool {
        self.answered && self.received.len() as u64 == self.input_len && self.computing == 0
    }
}

/// A computation handed out by the table, waiting for the fuzzer to end it.
struct Pending {
    part_id: u64,
    task: Arc<PartTask>,
    offset: u64,
    chunk: Bytes,
    cancel: Arc<CancelFlag>,
    inputs: Arc<JobInputs>,
}

/// A shared input whose data is still arriving.
struct ArrivingShare {
    input_id: u64,
    name: String,
    executable: bool,
    remaining: u64,
    content: Vec<u8>,
    kept: bool,
}

struct Harness {
    table: PartTable,
    parts: HashMap<u64, Model>,
    pending: Vec<Pending>,
    /// The shared inputs sent and complete, as the parts must see them.
    shares: Vec<(String, Vec<u8>, bool)>,
    arriving: Option<ArrivingShare>,
    /// Whether a share was announced over the limits: every part is then refused.
    shares_refused: bool,
    /// Whether a part was requested (shares are then fixed).
    part_requested: bool,
    /// The shared inputs every computation reads, from the first one.
    inputs: Option<Arc<JobInputs>>,
}

fuzz_target!(|ops: Vec<Op>| {
    let mut harness = Harness {
        table: PartTable::new(LIMITS),
        parts: HashMap::new(),
        pending: Vec::new(),
        shares: Vec::new(),
        arriving: None,
        shares_refused: false,
        part_requested: false,
        inputs: None,
    };
    for op in ops {
        if harness.step(op).is_err() {
            // A protocol violation: the connection ends and stops every kernel.
            harness.table.cancel_all();
            for pending in &harness.pending {
                assert!(
                    pending.cancel.is_cancelled(),
                    "a part computes after its connection ended"
                );
            }
            return;
        }
        harness.check();
    }
    // The executor finishes what it was handed; then nothing computes any more, and
    // every part whose input all arrived has been answered.
    while !harness.pending.is_empty() {
        harness.complete(0, Outcome::Real);
        harness.check();
    }
    assert_eq!(harness.table.data_chunks_computing(), 0);
    for (id, model) in &harness.parts {
        assert!(
            model.answered || (model.received.len() as u64) < model.input_len,
            "part {id} has all its input and no computation left, but no answer"
        );
    }
    harness.table.cancel_all();
});

fn id(raw: u8) -> u64 {
    u64::from(raw % IDS)
}

impl Harness {
    /// Feeds one operation; `Err` on a protocol violation (the connection ends).
    fn step(&mut self, op: Op) -> Result<(), ()> {
        match op {
            Op::Share {
                input_id,
                name,
                bytes,
                executable,
            } => self.share(
                id(input_id),
                NAMES[usize::from(name) % NAMES.len()],
                bytes.into(),
                executable,
            ),
            Op::RunPart {
                part_id,
                task,
                refuse,
            } => self.run_part(id(part_id), task.part_task(), refuse),
            Op::Data { id: raw, bytes } => self.data(id(raw), bytes),
            Op::DataFill { id: raw, len, fill } => {
                self.data(id(raw), vec![fill; usize::from(len % 2048)])
            }
            Op::Complete { which, outcome } => {
                if !self.pending.is_empty() {
                    self.complete(usize::from(which) % self.pending.len(), outcome);
                }
                Ok(())
            }
            Op::Cancel { part_id } => {
                let part_id = id(part_id);
                let actions = self.table.cancel(part_id);
                match self.parts.get(&part_id) {
                    Some(model) if !model.answered => {
                        assert!(
                            matches!(actions.as_slice(),
                                [Action::Failed { part_id: p, error }] if *p == part_id && error.code == ErrorCode::Cancelled),
                            "cancel of unanswered part {part_id}: {actions:?}"
                        );
                    }
                    _ => assert!(
                        actions.is_empty(),
                        "cancel of part {part_id} answered again: {actions:?}"
                    ),
                }
                self.apply(actions);
                if let Some(cancel) = self.parts.get(&part_id).and_then(|m| m.cancel.as_ref()) {
                    assert!(cancel.is_cancelled(), "a cancelled part's kernels go on");
                }
                Ok(())
            }
        }
    }

    fn share(&mut self, input_id: u64, name: &str, bytes: u64, executable: bool) -> Result<(), ()> {
        let result = self
            .table
            .share(input_id, name.to_string(), bytes, executable);
        let Ok(kept) = result else {
            return Err(());
        };
        assert!(!self.part_requested, "a share accepted after a part");
        assert!(
            self.arriving.is_none(),
            "a share accepted while another arrives"
        );
        if !kept {
            self.shares_refused = true;
        }
        let share = ArrivingShare {
            input_id,
            name: name.to_string(),
            executable,
            remaining: bytes,
            content: Vec::new(),
            kept,
        };
        if bytes == 0 {
            self.finish_share(share);
        } else {
            self.arriving = Some(share);
        }
        Ok(())
    }

    fn finish_share(&mut self, share: ArrivingShare) {
        if share.kept {
            self.shares
                .push((share.name, share.content, share.executable));
        }
    }

    fn run_part(&mut self, part_id: u64, task: PartTask, refuse: bool) -> Result<(), ()> {
        let refusal = refuse.then(|| RemoteError::new(ErrorCode::ShuttingDown, "stopping"));
        let in_flight = self.parts.contains_key(&part_id);
        let full_before = self.parts.len();
        let result = self.table.run_part(part_id, task.clone(), refusal);
        self.part_requested = true;
        let Ok(actions) = result else {
            return Err(());
        };
        assert!(!in_flight, "part id {part_id} accepted twice");
        assert!(
            self.arriving.is_none(),
            "a part accepted while a share arrives"
        );
        let input_len = task.input_bytes().expect("an accepted part has a size");
        let model = Model {
            task,
            input_len,
            received: Vec::new(),
            answered: false,
            computing: 0,
            cancel: None,
            all_real: true,
        };
        if refuse || self.shares_refused {
            assert!(
                matches!(actions.as_slice(), [Action::Failed { .. }]),
                "a part is accepted while every part is refused: {actions:?}"
            );
        }
        match actions.as_slice() {
            [Action::Failed { part_id: p, .. }] => assert_eq!(*p, part_id),
            [Action::Compute { part_id: p, .. }] => {
                assert_eq!(*p, part_id);
                assert_eq!(input_len, 0, "computed before its input arrived");
                assert!(
                    !refuse && !self.shares_refused,
                    "a refused part is computed"
                );
                assert!(
                    full_before < LIMITS.max_parts,
                    "a part computed over the limit"
                );
            }
            [] => {
                assert!(
                    input_len > 0,
                    "a part without input is neither computed nor refused"
                );
                assert!(
                    !refuse && !self.shares_refused,
                    "a refused part is accepted"
                );
            }
            other => panic!("run_part answered {other:?}"),
        }
        self.parts.insert(part_id, model);
        self.apply(actions);
        Ok(())
    }

    fn data(&mut self, id: u64, bytes: Vec<u8>) -> Result<(), ()> {
        let chunk = Bytes::from(bytes);
        let result = self.table.data(id, chunk.clone());
        if let Some(share) = &mut self.arriving {
            let Ok(actions) = result else {
                return Err(());
            };
            assert!(actions.is_empty(), "a share's data computes: {actions:?}");
            assert_eq!(share.input_id, id, "data for another id accepted mid-share");
            assert!(!chunk.is_empty() && chunk.len() as u64 <= share.remaining);
            share.remaining -= chunk.len() as u64;
            share.content.extend_from_slice(&chunk);
            if share.remaining == 0 {
                let share = self.arriving.take().expect("arriving");
                self.finish_share(share);
            }
            return Ok(());
        }
        let Ok(actions) = result else {
            if let Some(cancel) = self.parts.get(&id).and_then(|m| m.cancel.as_ref()) {
                assert!(
                    cancel.is_cancelled(),
                    "a part's bad chunk leaves its kernels running"
                );
            }
            return Err(());
        };
        let model = self
            .parts
            .get_mut(&id)
            .unwrap_or_else(|| panic!("data for part {id}, not in the table, accepted"));
        let offset = model.received.len() as u64;
        assert!(
            offset + chunk.len() as u64 <= model.input_len,
            "part {id} accepted {} bytes past its {} of input",
            offset + chunk.len() as u64 - model.input_len,
            model.input_len
        );
        model.received.extend_from_slice(&chunk);
        if model.answered {
            assert!(
                actions.is_empty(),
                "an answered part's late chunk: {actions:?}"
            );
        } else {
            match actions.as_slice() {
                [Action::Compute {
                    part_id,
                    offset: at,
                    chunk: handed,
                    ..
                }] => {
                    assert_eq!((*part_id, *at), (id, offset), "a chunk handed out of order");
                    assert_eq!(*handed, chunk, "a chunk handed out changed");
                }
                other => panic!("a chunk of part {id} gave {other:?}"),
            }
        }
        self.apply(actions);
        Ok(())
    }

    /// Ends pending computation `which` with `outcome`.
    fn complete(&mut self, which: usize, outcome: Outcome) {
        let p = self.pending.swap_remove(which);
        let reported = match outcome {
            Outcome::Real => compute_chunk(
                &p.task,
                Chunk {
                    offset: p.offset,
                    bytes: &p.chunk,
                },
                &p.inputs,
                &p.cancel,
            )
            .into(),
            Outcome::Cancelled => ChunkOutcome::Cancelled,
            Outcome::Lost => ChunkOutcome::Lost,
        };
        let real = matches!(reported, ChunkOutcome::Computed(_));
        let model = self
            .parts
            .get_mut(&p.part_id)
            .expect("a computing part is in the model");
        model.computing -= 1;
        model.all_real &= real;
        let was_answered = model.answered;
        let actions = self.table.computed(p.part_id, reported, Duration::ZERO);
        if was_answered {
            assert!(
                actions.is_empty(),
                "part {} answered twice: {actions:?}",
                p.part_id
            );
        } else if !real {
            assert!(
                matches!(actions.as_slice(), [Action::Failed { .. }]),
                "a chunk that failed does not fail its part: {actions:?}"
            );
            assert!(
                p.cancel.is_cancelled(),
                "a failed part's other chunks go on"
            );
        }
        self.apply(actions);
    }

    /// Checks the actions against the model and records what they hand out.
    fn apply(&mut self, actions: Vec<Action>) {
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
                    let model = self
                        .parts
                        .get_mut(&part_id)
                        .expect("computing a part not accepted");
                    assert!(!model.answered, "an answered part is computed");
                    assert_eq!(*task, model.task);
                    assert!(!cancel.is_cancelled(), "a cancelled computation handed out");
                    if let Some(flag) = &model.cancel {
                        assert!(Arc::ptr_eq(flag, &cancel), "a part with two cancel flags");
                    }
                    model.cancel = Some(Arc::clone(&cancel));
                    model.computing += 1;
                    match &self.inputs {
                        Some(first) => assert!(
                            Arc::ptr_eq(first, &inputs),
                            "parts read different shared inputs"
                        ),
                        None => {
                            let got: Vec<_> = inputs
                                .inputs()
                                .iter()
                                .map(|i| (i.name.clone(), i.bytes.to_vec(), i.executable))
                                .collect();
                            assert_eq!(got, self.shares, "the shared inputs are not those sent");
                            self.inputs = Some(Arc::clone(&inputs));
                        }
                    }
                    self.pending.push(Pending {
                        part_id,
                        task,
                        offset,
                        chunk,
                        cancel,
                        inputs,
                    });
                }
                Action::Done {
                    part_id, result, ..
                } => {
                    let model = self
                        .parts
                        .get_mut(&part_id)
                        .expect("a result for a part not accepted");
                    assert!(!model.answered, "part {part_id} answered twice");
                    model.answered = true;
                    assert_eq!(
                        model.received.len() as u64,
                        model.input_len,
                        "a result before all the input arrived"
                    );
                    assert_eq!(model.computing, 0, "a result while chunks compute");
                    assert!(model.all_real, "a result from a failed chunk");
                    let inputs = self
                        .inputs
                        .as_deref()
                        .expect("computed parts saw the inputs");
                    assert_eq!(
                        Some(result),
                        whole(&model.task, &model.received, inputs),
                        "part {part_id}'s result differs from its input computed in one go"
                    );
                }
                Action::Failed { part_id, .. } => {
                    let model = self
                        .parts
                        .get_mut(&part_id)
                        .expect("a failure for a part not accepted");
                    assert!(!model.answered, "part {part_id} answered twice");
                    model.answered = true;
                }
            }
        }
    }

    /// Checks the table's counts against the model, after the model lets go of the
    /// parts the table must have let go.
    fn check(&mut self) {
        self.parts.retain(|_, model| !model.gone());
        let unanswered = self.parts.values().filter(|m| !m.answered).count();
        let data_computing: usize = self
            .parts
            .values()
            .filter(|m| m.input_len > 0)
            .map(|m| m.computing)
            .sum();
        assert_eq!(self.table.len(), self.parts.len(), "parts in the table");
        assert_eq!(self.table.unanswered(), unanswered, "unanswered parts");
        assert_eq!(
            self.table.data_chunks_computing(),
            data_computing,
            "data chunks computing"
        );
        assert!(
            unanswered <= LIMITS.max_parts,
            "{unanswered} parts accepted"
        );
        assert!(
            self.table.len() <= 2 * LIMITS.max_parts,
            "{} parts in the table",
            self.table.len()
        );
        assert_eq!(self.table.is_empty(), self.parts.is_empty());
    }
}

/// The part computed here in one go: its whole input as one chunk.
fn whole(task: &PartTask, input: &[u8], inputs: &JobInputs) -> Option<PartResult> {
    let mut computation = PartComputation::new(task, inputs);
    computation.add_chunk(input, &CancelFlag::new()).ok()?;
    computation.finish().map(|(result, _)| result)
}
