//! The bounded pool of OS threads where kernels run.
//!
//! The async runtime only moves bytes; anything that computes is handed to this pool,
//! whose size is the server's `--workers`. Work beyond that waits in a queue, in the
//! order it was submitted. A kernel that panics is caught: its caller gets an error and
//! the thread lives on.

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use tokio::sync::oneshot;

type Work = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of worker threads running submitted closures.
pub struct Executor {
    queue: Mutex<Option<mpsc::Sender<Work>>>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    workers: usize,
    busy: Arc<AtomicUsize>,
}

/// Calls its callback with [`WorkLost`] unless the work's result was handed to it.
struct Report<T, D: FnOnce(Result<T, WorkLost>)>(Option<D>, PhantomData<fn(T)>);

impl<T, D: FnOnce(Result<T, WorkLost>)> Drop for Report<T, D> {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(Err(WorkLost));
        }
    }
}

/// The work did not run to completion: it panicked, or the executor was shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the work was lost: it panicked or the executor stopped")]
pub struct WorkLost;

impl Executor {
    /// Starts `workers` threads (at least one).
    pub fn new(workers: usize) -> Executor {
        let workers = workers.max(1);
        let (sender, receiver) = mpsc::channel::<Work>();
        let receiver = Arc::new(Mutex::new(receiver));
        let busy = Arc::new(AtomicUsize::new(0));
        let threads = (0..workers)
            .map(|i| {
                let receiver = Arc::clone(&receiver);
                let busy = Arc::clone(&busy);
                thread::Builder::new()
                    .name(format!("pool-worker-{i}"))
                    .spawn(move || loop {
                        // The lock is held only while waiting for the next item.
                        let next = receiver.lock().expect("queue lock poisoned").recv();
                        let Ok(work) = next else { return };
                        busy.fetch_add(1, Ordering::Relaxed);
                        // A panic drops the reply channel, which the submitter sees as WorkLost.
                        let _ = catch_unwind(AssertUnwindSafe(work));
                        busy.fetch_sub(1, Ordering::Relaxed);
                    })
                    .expect("cannot start a worker thread")
            })
            .collect();
        Executor {
            queue: Mutex::new(Some(sender)),
            threads: Mutex::new(threads),
            workers,
            busy,
        }
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Number of threads computing right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Queues `work` and returns a future of its result.
    pub fn run<T, F>(
        &self,
        work: F,
    ) -> impl std::future::Future<Output = Result<T, WorkLost>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        self.submit(work, move |outcome| {
            let _ = reply.send(outcome);
        });
        async move { result.await.unwrap_or(Err(WorkLost)) }
    }

    /// Queues `work`, and calls `done` with its result on the worker thread that ran
    /// it; with [`WorkLost`] (at once, or when the executor stops) if it never runs to
    /// completion. For callers without an async runtime.
    pub fn submit<T, F, D>(&self, work: F, done: D)
    where
        T: 'static,
        F: FnOnce() -> T + Send + 'static,
        D: FnOnce(Result<T, WorkLost>) + Send + 'static,
    {
        let mut report = Report(Some(done), PhantomData);
        let item: Work = Box::new(move || {
            let result = work();
            if let Some(done) = report.0.take() {
                done(Ok(result));
            }
        });
        // A closure that is never run (no queue, or a panic inside it) drops its
        // `Report`, which reports the loss.
        if let Some(queue) = &*self.queue.lock().expect("queue lock poisoned") {
            let _ = queue.send(item);
        }
    }

    /// Lets queued work finish, then stops the threads. Blocks; call from a blocking
    /// context.
    pub fn shutdown(&self) {
        self.queue.lock().expect("queue lock poisoned").take();
        for thread in self
            .threads
            .lock()
            .expect("threads lock poisoned")
            .drain(..)
        {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_and_survives_a_panic() {
        let executor = Executor::new(2);
        assert_eq!(executor.run(|| 6 * 7).await, Ok(42));
        assert_eq!(
            executor.run(|| -> u8 { panic!("kernel bug") }).await,
            Err(WorkLost)
        );
        assert_eq!(executor.run(|| "still here").await, Ok("still here"));
        executor.shutdown();
        assert_eq!(executor.run(|| 1).await, Err(WorkLost));
    }
}
