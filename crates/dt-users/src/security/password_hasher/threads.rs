//! The hashing threads: a fixed set of threads fed by one channel, each keeping its argon2
//! memory from one hash to the next, at a lower scheduling priority than the request workers.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};

use argon2::{Block, Params};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::HashError;

/// The memory one hashing thread keeps between hashes.
#[derive(Debug)]
pub(super) struct Memory {
    blocks: Vec<Block>,
}

impl Memory {
    pub(super) fn new(params: &Params) -> Self {
        Self {
            blocks: vec![Block::default(); params.block_count()],
        }
    }

    /// Runs `hash` over `count` blocks: the kept ones, or (for a stored hash made with more
    /// memory than configured now, until it is upgraded) blocks allocated for this hash only,
    /// so that the memory kept never grows past the configured size.
    pub(super) fn with_blocks<T>(
        &mut self,
        count: usize,
        hash: impl FnOnce(&mut [Block]) -> T,
    ) -> T {
        match self.blocks.get_mut(..count) {
            Some(kept) => hash(kept),
            None => hash(&mut vec![Block::default(); count]),
        }
    }
}

/// How much lower than the rest of the process the hashing threads are scheduled.
const NICE_INCREMENT: i32 = 10;

/// Lowers the calling thread's priority by [`NICE_INCREMENT`] (Linux keeps a nice value per
/// thread). Failing to is harmless: the thread keeps the process's priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let thread = Some(rustix::thread::gettid());
        let lowered = getpriority_process(thread)
            .and_then(|nice| setpriority_process(thread, (nice + NICE_INCREMENT).min(19)));
        if let Err(e) = lowered {
            tracing::warn!(error = %e, "hashing thread keeps the process's priority");
        }
    }
}

type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// A fixed set of hashing threads fed by one channel. The threads end when it is dropped.
#[derive(Debug)]
pub(super) struct HashingThreads {
    jobs: mpsc::Sender<Job>,
}

impl HashingThreads {
    pub(super) fn start(count: usize, params: &Params) -> Result<Self, HashError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..count {
            let receiver = Arc::clone(&receiver);
            let mut memory = Memory::new(params);
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match receiver.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A job that panics loses its answer (its caller sees the failure),
                        // not the thread.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut memory)));
                    }
                })
                .map_err(|e| HashError::Failed(format!("starting a hashing thread: {e}")))?;
        }
        Ok(Self { jobs: sender })
    }

    /// Runs `work` on a hashing thread; `permit` is held until it is done, even if the caller
    /// stops waiting, so abandoned requests never let more work queue than there are threads.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        work: impl FnOnce(&mut Memory) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = answer.send(work(memory));
            drop(permit);
        });
        self.jobs
            .send(job)
            .map_err(|_| HashError::Failed("the hashing threads are gone".into()))?;
        answered
            .await
            .map_err(|_| HashError::Failed("a hashing thread failed".into()))?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    /// Every hash runs on one of `concurrency` threads, each reusing the same memory; a stored
    /// hash bigger than the configured memory is checked without growing what is kept.
    #[tokio::test]
    async fn hashing_threads_keep_their_memory() {
        let threads = HashingThreads::start(2, &Params::new(1024, 1, 1, None).unwrap()).unwrap();
        let permits = Arc::new(Semaphore::new(2));
        let mut seen = std::collections::HashMap::new();
        for _ in 0..40 {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let (name, kept) = threads
                .run(permit, |memory: &mut Memory| {
                    let kept = memory.blocks.as_ptr() as usize;
                    let len = memory.blocks.len();
                    memory.with_blocks(4096, |blocks| assert_eq!(blocks.len(), 4096));
                    assert_eq!(memory.blocks.len(), len);
                    Ok((std::thread::current().name().map(str::to_owned), kept))
                })
                .await
                .unwrap();
            let name = name.unwrap();
            assert!(name.starts_with("argon2-"), "{name}");
            assert_eq!(*seen.entry(name).or_insert(kept), kept);
        }
        assert!(seen.len() <= 2, "{seen:?}");
    }

    /// The hashing threads run below the priority of the thread that started them.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_at_a_lower_priority() {
        use rustix::process::getpriority_process;
        let own = getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let threads = HashingThreads::start(1, &Params::new(8, 1, 1, None).unwrap()).unwrap();
        let permits = Arc::new(Semaphore::new(1));
        let permit = permits.clone().acquire_owned().await.unwrap();
        let theirs = threads
            .run(permit, |_: &mut Memory| {
                getpriority_process(Some(rustix::thread::gettid()))
                    .map_err(|e| HashError::Failed(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(theirs, (own + NICE_INCREMENT).min(19));
    }

    /// A job that panics fails its caller and leaves the thread serving.
    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let threads = HashingThreads::start(1, &Params::new(8, 1, 1, None).unwrap()).unwrap();
        let permits = Arc::new(Semaphore::new(1));
        let permit = permits.clone().acquire_owned().await.unwrap();
        let failed = threads
            .run(permit, |_: &mut Memory| -> Result<(), HashError> {
                std::panic::panic_any("boom")
            })
            .await;
        assert!(matches!(failed, Err(HashError::Failed(_))));
        let permit = permits.clone().acquire_owned().await.unwrap();
        assert_eq!(
            threads.run(permit, |_: &mut Memory| Ok(7)).await.unwrap(),
            7
        );
    }
}
