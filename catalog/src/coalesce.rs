//! Coalescing of queued work into batches with a bounded number in flight: the loop both the
//! leader's proposer (writes into one Raft entry) and a follower's forwarder (writes into one
//! call to the leader) run.
//!
//! At most `inflight` batches are being handled at a time; while they are, new items wait in the
//! queue and the next batch takes all of them (up to a bound). Batches thus grow with load, and
//! the per-batch cost is paid once per batch rather than once per item, while a lone item still
//! goes out at once.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

/// How batches are formed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Batches being handled at once.
    pub(crate) inflight: usize,
    /// Most items in one batch.
    pub(crate) items: usize,
    /// Most bytes (as `size` estimates them) in one batch; a single larger item still goes alone.
    pub(crate) bytes: usize,
}

/// Takes items from `rx` in batches and hands each to `handle`, whose future runs in a task of
/// its own. Returns when `rx` is closed and empty.
pub(crate) async fn run<T, F, Fut>(
    mut rx: mpsc::Receiver<T>,
    limits: Limits,
    size: impl Fn(&T) -> usize,
    mut handle: F,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let inflight = Arc::new(Semaphore::new(limits.inflight.max(1)));
    loop {
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while batch.len() < limits.items && bytes < limits.bytes {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += size(&next);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // Handled in its own task so the next batch forms meanwhile.
        let work = handle(batch);
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn items_queued_while_a_batch_is_in_flight_go_together_in_the_next() {
        let (tx, rx) = mpsc::channel::<u32>(64);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release = Arc::new(Mutex::new(Some(release_rx)));
        let seen = sizes.clone();
        let limits = Limits {
            inflight: 1,
            items: 10,
            bytes: usize::MAX,
        };
        let task = tokio::spawn(run(
            rx,
            limits,
            |_| 1,
            move |batch: Vec<u32>| {
                seen.lock().expect("sizes").push(batch.len());
                // The first batch holds the only permit until released.
                let gate = release.lock().expect("gate").take();
                async move {
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                }
            },
        ));
        tx.send(0).await.expect("send");
        tokio::task::yield_now().await;
        while sizes.lock().expect("sizes").is_empty() {
            tokio::task::yield_now().await;
        }
        // 25 items while the first batch is in flight: the next batches take 10, 10 and 5.
        for i in 1..=25 {
            tx.send(i).await.expect("send");
        }
        release_tx.send(()).expect("release");
        drop(tx);
        task.await.expect("coalescer");
        assert_eq!(*sizes.lock().expect("sizes"), vec![1, 10, 10, 5]);
    }
}
