//! The server-wide budget for buffered input (`--max-buffer-memory`).
//!
//! Every byte the server holds of what its clients sent, beyond a few kilobytes per
//! connection, is charged to one [`BufferBudget`]: a data frame from the moment its
//! length prefix is read until its chunk is computed and dropped, and a job's shared
//! input for as long as its connection keeps it. A connection asks for the bytes
//! before it reads them ([`Account::claim`]); when the budget cannot give them, the
//! connection stops reading and its client waits on TCP (backpressure: nothing is
//! dropped, and what was admitted completes, freeing memory for the rest).
//!
//! When memory frees up, the waiting connection that holds the least is served first,
//! so the connections left waiting are those holding the most. A claim that does not
//! fit yet does not block smaller ones behind it: a connection whose long-held shared
//! inputs fill the budget can still have its data read while another waits for room.
//!
//! A [`Charge`] returns its bytes when dropped, so the accounting follows the data
//! wherever it goes (the executor's queue, a worker thread) without anyone
//! remembering to release it.
//!
//! A frame is read into a [`FrameBuffer`]: memory mapped from the system for frames
//! alone, recycled from one frame to the next while the server is busy, and given
//! back to the system when it is not. So the server's resident memory follows the
//! budget: a buffer allocated and freed per frame through the general allocator left
//! its freed frames resident in each thread's arena (tens of MiB beyond a 16 MiB
//! budget in the matrix test of `client/tests/hostile.rs`), and mapping a fresh one per
//! frame halved the shipping throughput (page faults on every frame). Spare buffers
//! count against the budget, and are unmapped to make room for other claims.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use memmap2::MmapMut;
use pool_common::codec::MAX_FRAME_BYTES;
use tokio::sync::oneshot;

/// The size of every [`FrameBuffer`]: the largest frame.
pub const FRAME_BUFFER_BYTES: usize = MAX_FRAME_BYTES;

/// Spare frame buffers kept while nothing is charged: enough for one client's next
/// frames, so a single stream does not map a buffer per frame.
const IDLE_SPARE_BUFFERS: usize = 2;

/// Bytes of buffered input the whole server may hold. See the module documentation.
pub struct BufferBudget {
    limit: usize,
    state: Mutex<State>,
}

struct State {
    /// Bytes charged.
    used: usize,
    /// Frame buffers not in use. `used` plus their size stays within the limit.
    spares: Vec<MmapMut>,
    waiting: Vec<Waiter>,
    next_id: u64,
}

/// A claim that has not been granted yet.
struct Waiter {
    id: u64,
    bytes: usize,
    /// What the claiming connection holds now, read when choosing whom to serve.
    held: Arc<AtomicUsize>,
    grant: oneshot::Sender<Charge>,
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<BufferBudget> {
        Arc::new(BufferBudget {
            limit,
            state: Mutex::new(State {
                used: 0,
                spares: Vec::new(),
                waiting: Vec::new(),
                next_id: 0,
            }),
        })
    }

    /// Bytes charged now, on every connection.
    pub fn used(&self) -> usize {
        self.state().used
    }

    /// The account of one new connection.
    pub fn account(self: &Arc<Self>) -> Account {
        Account {
            budget: Arc::clone(self),
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still has sound counts.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Frame buffers spare now.
    pub fn spare_buffers(&self) -> usize {
        self.state().spares.len()
    }

    /// Takes back `bytes` and, from a frame buffer, its memory, then grants every
    /// waiting claim that fits, the connection holding the least first. Charges are
    /// sent, and unmapped buffers dropped, once the lock is released: a claim dropped
    /// meanwhile drops its charge, which takes the lock to give the bytes back.
    fn settle(self: &Arc<Self>, bytes: usize, returned: Option<MmapMut>) {
        let mut grants = Vec::new();
        let mut unmapped = Vec::new();
        {
            let mut state = self.state();
            state.used -= bytes;
            state.spares.extend(returned);
            loop {
                let room = self.limit - state.used;
                let next = state
                    .waiting
                    .iter()
                    .enumerate()
                    .filter(|(_, waiter)| waiter.bytes <= room)
                    .min_by_key(|(_, waiter)| (waiter.held.load(Ordering::Relaxed), waiter.id))
                    .map(|(index, _)| index);
                let Some(index) = next else { break };
                let waiter = state.waiting.swap_remove(index);
                state.used += waiter.bytes;
                waiter.held.fetch_add(waiter.bytes, Ordering::Relaxed);
                let charge = Charge {
                    budget: Arc::clone(self),
                    held: waiter.held,
                    bytes: waiter.bytes,
                };
                grants.push((waiter.grant, charge));
            }
            let keep = if state.used == 0 {
                IDLE_SPARE_BUFFERS
            } else {
                (self.limit - state.used) / FRAME_BUFFER_BYTES
            };
            let excess = state.spares.len().saturating_sub(keep);
            unmapped.extend(state.spares.drain(..excess));
        }
        drop(unmapped);
        for (grant, charge) in grants {
            // A claim dropped in the meantime: the charge is dropped, and given back.
            let _ = grant.send(charge);
        }
    }
}

/// One connection's share of the budget: what it holds, and its claims. Clones count
/// as the same connection.
#[derive(Clone)]
pub struct Account {
    budget: Arc<BufferBudget>,
    held: Arc<AtomicUsize>,
}

impl Account {
    /// Asks for a frame's buffer: [`FRAME_BUFFER_BYTES`] of the budget, to turn into a
    /// [`FrameBuffer`] once granted.
    pub fn claim_frame(&self) -> Claim {
        self.claim(FRAME_BUFFER_BYTES)
    }

    /// Asks for `bytes` of the budget; the [`Claim`] resolves once they are granted.
    /// `bytes` must not exceed the budget's limit, or the claim never resolves.
    pub fn claim(&self, bytes: usize) -> Claim {
        let (grant, granted) = oneshot::channel();
        let id = {
            let mut state = self.budget.state();
            let id = state.next_id;
            state.next_id += 1;
            state.waiting.push(Waiter {
                id,
                bytes,
                held: Arc::clone(&self.held),
                grant,
            });
            id
        };
        self.budget.settle(0, None);
        Claim {
            budget: Arc::clone(&self.budget),
            id,
            granted,
        }
    }

    /// Bytes this connection holds now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// Bytes asked of the budget and not yet used: a future that resolves to their
/// [`Charge`]. Polling it again after another branch of a `select!` won is safe (it
/// keeps its place); dropping it withdraws the claim, or gives back what was granted.
pub struct Claim {
    budget: Arc<BufferBudget>,
    id: u64,
    granted: oneshot::Receiver<Charge>,
}

impl std::future::Future for Claim {
    type Output = Charge;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Charge> {
        match std::pin::Pin::new(&mut self.granted).poll(cx) {
            Poll::Ready(Ok(charge)) => Poll::Ready(charge),
            // The sender lives in the budget's waiting list until it is used, and the
            // list is only emptied by granting or by this claim's drop.
            Poll::Ready(Err(_)) => unreachable!("a waiting claim lost its grant"),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let id = self.id;
        self.budget.state().waiting.retain(|waiter| waiter.id != id);
        // A charge granted but not received is dropped with `granted`, and given back.
    }
}

/// Bytes of the budget in use; given back when dropped.
pub struct Charge {
    budget: Arc<BufferBudget>,
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl Charge {
    /// Gives the bytes back, with the frame buffer they paid for.
    fn release(&mut self, returned: Option<MmapMut>) {
        let bytes = std::mem::take(&mut self.bytes);
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.settle(bytes, returned);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.release(None);
        }
    }
}

/// Memory for one frame of up to [`FRAME_BUFFER_BYTES`], paid for by a frame's
/// [`Charge`]; a spare buffer again when dropped.
pub struct FrameBuffer {
    map: Option<MmapMut>,
    charge: Charge,
}

impl FrameBuffer {
    /// A buffer for the charge a [`Account::claim_frame`] was granted: a spare one, or
    /// one newly mapped.
    pub fn new(charge: Charge) -> std::io::Result<FrameBuffer> {
        debug_assert_eq!(charge.bytes, FRAME_BUFFER_BYTES);
        let spare = charge.budget.state().spares.pop();
        let map = match spare {
            Some(map) => map,
            None => MmapMut::map_anon(FRAME_BUFFER_BYTES)?,
        };
        Ok(FrameBuffer {
            map: Some(map),
            charge,
        })
    }
}

impl std::ops::Deref for FrameBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_deref().expect("mapped until dropped")
    }
}

impl std::ops::DerefMut for FrameBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().expect("mapped until dropped")
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        let map = self.map.take();
        self.charge.release(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn claims_within_the_budget_are_granted_at_once_and_given_back_on_drop() {
        let budget = BufferBudget::new(100);
        let account = budget.account();
        let a = account.claim(60).now_or_never().expect("fits");
        let b = account.claim(40).now_or_never().expect("fits");
        assert_eq!((budget.used(), account.held()), (100, 100));
        drop(a);
        drop(b);
        assert_eq!((budget.used(), account.held()), (0, 0));
    }

    #[test]
    fn a_claim_over_the_room_left_waits_until_memory_is_given_back() {
        let budget = BufferBudget::new(100);
        let (first, second) = (budget.account(), budget.account());
        let held = first.claim(80).now_or_never().unwrap();
        let mut waiting = second.claim(40);
        assert!((&mut waiting).now_or_never().is_none());
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "polled again, still waits"
        );
        drop(held);
        let charge = waiting.now_or_never().expect("granted once there is room");
        assert_eq!((budget.used(), second.held()), (40, 40));
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_connection_holding_the_least_is_served_first() {
        let budget = BufferBudget::new(100);
        let (heavy, light, filler) = (budget.account(), budget.account(), budget.account());
        let heavy_holds = heavy.claim(50).now_or_never().unwrap();
        let fill = filler.claim(50).now_or_never().unwrap();
        // Both want 40; the heavy one asked first.
        let mut heavy_waits = heavy.claim(40);
        let mut light_waits = light.claim(40);
        drop(fill);
        let light_got = (&mut light_waits).now_or_never();
        assert!(light_got.is_some(), "the light one goes first");
        assert!(
            (&mut heavy_waits).now_or_never().is_none(),
            "the heavy one waits"
        );
        drop(heavy_holds);
        assert!(heavy_waits.now_or_never().is_some());
    }

    #[test]
    fn a_large_claim_that_does_not_fit_lets_smaller_ones_pass() {
        let budget = BufferBudget::new(100);
        let (big, small) = (budget.account(), budget.account());
        let held = small.claim(50).now_or_never().unwrap();
        let mut big_waits = big.claim(90);
        let more = small
            .claim(30)
            .now_or_never()
            .expect("fits beside the big claim");
        assert!((&mut big_waits).now_or_never().is_none());
        drop((held, more));
        assert!(big_waits.now_or_never().is_some());
    }

    #[test]
    fn a_dropped_claim_gives_back_what_it_was_granted_or_leaves_the_queue() {
        let budget = BufferBudget::new(100);
        let account = budget.account();
        let held = account.claim(100).now_or_never().unwrap();
        let withdrawn = account.claim(50);
        drop(withdrawn);
        let granted_unread = account.claim(50);
        drop(held);
        // Granted as `held` went, then dropped before being read.
        assert_eq!(budget.used(), 50);
        drop(granted_unread);
        assert_eq!((budget.used(), account.held()), (0, 0));
    }

    #[test]
    fn frame_buffers_are_recycled_within_the_budget_and_unmapped_when_idle() {
        const F: usize = FRAME_BUFFER_BYTES;
        let budget = BufferBudget::new(4 * F);
        let account = budget.account();
        let frame = || FrameBuffer::new(account.claim_frame().now_or_never().unwrap()).unwrap();
        let mut buffers: Vec<FrameBuffer> = (0..4).map(|_| frame()).collect();
        buffers[0][F - 1] = 7;
        assert!(
            account.claim_frame().now_or_never().is_none(),
            "the budget is spent"
        );
        let first = buffers.remove(0);
        drop(first);
        assert_eq!((budget.spare_buffers(), budget.used()), (1, 3 * F));
        // A share claim takes the spare's room: the spare is unmapped.
        let share = account
            .claim(F)
            .now_or_never()
            .expect("the spare made room");
        assert_eq!(budget.spare_buffers(), 0);
        drop(share);
        // Once nothing is charged, only a couple of spares stay mapped.
        buffers.clear();
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.spare_buffers(), IDLE_SPARE_BUFFERS);
        let reused = frame();
        assert_eq!(
            budget.spare_buffers(),
            IDLE_SPARE_BUFFERS - 1,
            "a spare was reused"
        );
        drop(reused);
    }
}
