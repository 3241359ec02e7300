//! Coalescing of queued work into batches with a bounded number in flight: the loop both the
//! leader's proposer (writes into one Raft entry) and a follower's forwarder (writes into one
//! call to the leader) run.
//!
//! At most `inflight` batches are being handled at a time; while they are, new items wait in the
//! queue and the next batch takes all of them (up to a bound). Batches thus grow with load, and
//! the per-batch cost is paid once per batch rather than once per item, while a lone item still
//! goes out at once.
//!
//! Under load a batch may also wait a little (`linger`) to be as large as the one before it: the
//! items queued at the moment a batch forms are partly a matter of luck (the writers released by
//! the last batch are still on their way back), and a batch that goes out short pays the whole
//! per-batch cost (a Raft entry: an fsync on every node and four AppendEntries; a forwarded call)
//! for fewer items. With 64 writers on a 3-node DC this made entries 24 -> 27 writes and the
//! nodes' CPU per write 0.91x (`meridian-bench catalog`). Only a batch that follows one of
//! at least `linger_from` items waits, so a lone write, a light stream of them, or the first
//! write after a quiet spell (an empty queue for a few lingers) never does.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Duration, Instant};

/// An empty queue for this many lingers ends the load a batch would linger to match.
const QUIET_LINGERS: u32 = 4;

/// How batches are formed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Batches being handled at once.
    pub(crate) inflight: usize,
    /// Most items in one batch.
    pub(crate) items: usize,
    /// Most bytes (as `size` estimates them) in one batch; a single larger item still goes alone.
    pub(crate) bytes: usize,
    /// Longest a batch waits to be as large as the one before it (zero: never).
    pub(crate) linger: Duration,
    /// Smallest previous batch after which a batch lingers.
    pub(crate) linger_from: usize,
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
    // Items in the batch before this one; zero after a quiet spell.
    let mut last = 0;
    loop {
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let first = match rx.try_recv() {
            Ok(first) => first,
            Err(_) => {
                let idle = Instant::now();
                let Some(first) = rx.recv().await else {
                    return;
                };
                if idle.elapsed() > limits.linger * QUIET_LINGERS {
                    // A quiet spell: whatever load comes next starts afresh.
                    last = 0;
                }
                first
            }
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
        if last >= limits.linger_from.max(2) && batch.len() < last && !limits.linger.is_zero() {
            let deadline = Instant::now() + limits.linger;
            while batch.len() < last.min(limits.items) && bytes < limits.bytes {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => {
                        bytes += size(&next);
                        batch.push(next);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        last = batch.len();
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

    /// One batch in flight, of at most `items`, with no bound on bytes.
    fn one_in_flight(items: usize, linger: Duration, linger_from: usize) -> Limits {
        Limits {
            inflight: 1,
            items,
            bytes: usize::MAX,
            linger,
            linger_from,
        }
    }

    #[tokio::test]
    async fn items_queued_while_a_batch_is_in_flight_go_together_in_the_next() {
        let (tx, rx) = mpsc::channel::<u32>(64);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release = Arc::new(Mutex::new(Some(release_rx)));
        let seen = sizes.clone();
        let limits = one_in_flight(10, Duration::ZERO, 0);
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

    #[tokio::test]
    async fn under_load_a_short_batch_lingers_to_match_the_one_before_it() {
        // Long enough that the test's own steps (a few milliseconds) fit well inside it, even
        // on a machine busy with the other tests.
        let linger = Duration::from_millis(300);
        let (tx, rx) = mpsc::channel::<u32>(64);
        // Each batch's size and when it formed.
        let formed = Arc::new(Mutex::new(Vec::<(usize, Instant)>::new()));
        let seen = formed.clone();
        // The first two batches stay in flight until released.
        let (release1, gate1) = oneshot::channel::<()>();
        let (release2, gate2) = oneshot::channel::<()>();
        let gates = Arc::new(Mutex::new(vec![gate2, gate1]));
        let limits = one_in_flight(100, linger, 4);
        let task = tokio::spawn(run(
            rx,
            limits,
            |_| 1,
            move |batch: Vec<u32>| {
                seen.lock()
                    .expect("formed")
                    .push((batch.len(), Instant::now()));
                let gate = gates.lock().expect("gates").pop();
                async move {
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                }
            },
        ));
        let batches = |n: usize| {
            let formed = formed.clone();
            async move {
                while formed.lock().expect("formed").len() < n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let send = |n: u32| {
            let tx = tx.clone();
            async move {
                for i in 0..n {
                    tx.send(i).await.expect("send");
                }
            }
        };
        send(1).await;
        batches(1).await;
        // Six queued behind the first go together (a batch of one does not make the next wait).
        send(6).await;
        release1.send(()).expect("release");
        batches(2).await;
        // Two queued behind a batch of six wait for more: four arrive within the linger.
        send(2).await;
        release2.send(()).expect("release");
        tokio::time::sleep(Duration::from_millis(5)).await;
        send(4).await;
        batches(3).await;
        // Three, and no more: they go when the linger runs out.
        let sent = Instant::now();
        send(3).await;
        batches(4).await;
        // Three do not make the next wait; five queued at once go at once.
        send(5).await;
        batches(5).await;
        // After a quiet spell, two go at once although the batch before had five.
        tokio::time::sleep(linger * (QUIET_LINGERS + 1)).await;
        let quiet = Instant::now();
        send(2).await;
        batches(6).await;
        drop(tx);
        task.await.expect("coalescer");
        let formed = formed.lock().expect("formed").clone();
        let sizes: Vec<usize> = formed.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, vec![1, 6, 6, 3, 5, 2]);
        assert!(formed[3].1 - sent >= linger, "the short batch lingered");
        assert!(
            formed[5].1 - quiet < linger,
            "after a quiet spell nothing lingers"
        );
    }
}
