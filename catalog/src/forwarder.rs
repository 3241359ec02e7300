//! A follower's writes on their way to the leader, forwarded in batches.
//!
//! Every write that reaches a follower is queued here for the leader's address and sent with the
//! others queued meanwhile in one `ForwardBatch` call ([`crate::coalesce`]): under load the
//! per-call cost of gRPC (a stream, its headers, a task on each side) is paid once per batch
//! instead of once per write, and the leader proposes the batch as one run. A leader that does not
//! know `ForwardBatch` (an older version during a rolling upgrade) gets each write as its own
//! `Forward` call, and is asked again with a batch a while later.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_protos::Bytes;
use meridian_protos::catalog::catalog_client::CatalogClient;
use meridian_protos::catalog::forward_reply::Result as ForwardResult;
use meridian_protos::catalog::{ForwardBatchRequest, ForwardReply, ForwardRequest};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;
use tracing::debug;

use crate::coalesce::{self, Limits};
use crate::counters::CatalogCounters;

/// Most writes in one forwarded batch (the leader accepts up to 1,024).
const MAX_BATCH_WRITES: usize = 256;
/// Most bytes of commands in one batch; a single larger command still goes alone.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Writes queued for the leader before callers wait (backpressure).
const QUEUE: usize = 4096;
/// Batches on their way at once: enough that a batch's round trip does not idle the leader,
/// few enough that writes arriving meanwhile accumulate into the next.
const MAX_INFLIGHT: usize = 2;
/// How long a leader that answered `Unimplemented` to a batch gets single calls.
const SINGLE_CALLS_FOR: Duration = Duration::from_secs(30);

/// The leader's answer to one write, or why the call carrying it failed.
pub(crate) type Forwarded = Result<ForwardResult, Status>;

struct Pending {
    command: Bytes,
    timeout: Duration,
    reply: oneshot::Sender<Forwarded>,
}

/// Handle to the forwarding task for one leader address. Cheap to clone; the task ends when the
/// last handle is dropped.
#[derive(Clone)]
pub(crate) struct Forwarder {
    tx: mpsc::Sender<Pending>,
}

impl Forwarder {
    /// Starts forwarding through `client` (a channel to the leader's rpc address).
    pub(crate) fn start(
        client: CatalogClient<Channel>,
        counters: Arc<CatalogCounters>,
    ) -> Forwarder {
        let (tx, rx) = mpsc::channel(QUEUE);
        let limits = Limits {
            inflight: MAX_INFLIGHT,
            items: MAX_BATCH_WRITES,
            bytes: MAX_BATCH_BYTES,
            // As the proposer's: a forwarded call has a fixed cost on both nodes too.
            linger: crate::proposer::LINGER,
            linger_from: crate::proposer::LINGER_FROM,
        };
        let refused_at = Arc::new(Mutex::new(None));
        tokio::spawn(coalesce::run(
            rx,
            limits,
            |p: &Pending| p.command.len(),
            move |batch| {
                let calls = Calls {
                    counters: counters.clone(),
                    refused_at: refused_at.clone(),
                };
                send(client.clone(), batch, calls)
            },
        ));
        Forwarder { tx }
    }

    /// Forwards `command` (JSON of a [`crate::Command`]) and returns the leader's reply; a call
    /// that could not be made or was not answered within `timeout` is an `Err`.
    pub(crate) async fn forward(&self, command: Bytes, timeout: Duration) -> Forwarded {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            command,
            timeout,
            reply,
        };
        if self.tx.send(pending).await.is_err() {
            return Err(Status::unavailable("the forwarder has stopped"));
        }
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("the forwarder has stopped")))
    }
}

/// What a batch's sending shares with the others of its forwarder.
struct Calls {
    counters: Arc<CatalogCounters>,
    /// When the leader last refused a batch.
    refused_at: Arc<Mutex<Option<Instant>>>,
}

async fn send(mut client: CatalogClient<Channel>, batch: Vec<Pending>, calls: Calls) {
    let singles = calls
        .refused_at
        .lock()
        .ok()
        .and_then(|at| *at)
        .is_some_and(|at| at.elapsed() < SINGLE_CALLS_FOR);
    // A lone write goes as a single call: it is the same work for the leader either way.
    if singles || batch.len() == 1 {
        send_each(client, batch, &calls.counters).await;
        return;
    }
    let timeout = batch.iter().map(|p| p.timeout).max().unwrap_or_default();
    let commands = batch.iter().map(|p| p.command.clone()).collect();
    let mut request = tonic::Request::new(ForwardBatchRequest { commands });
    request.set_timeout(timeout);
    CatalogCounters::inc(&calls.counters.forward_calls);
    match client.forward_batch(request).await {
        Ok(reply) => {
            let answers = reply.into_inner().replies;
            if answers.len() != batch.len() {
                let status = Status::internal(format!(
                    "the leader answered {} of {} forwarded writes",
                    answers.len(),
                    batch.len()
                ));
                for p in batch {
                    let _ = p.reply.send(Err(status.clone()));
                }
                return;
            }
            for (p, answer) in batch.into_iter().zip(answers) {
                let _ = p.reply.send(outcome(answer));
            }
        }
        // The leader refused the call itself, so nothing was applied: each write goes again
        // on its own, and so do the next ones for a while.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            debug!("the leader does not take forwarded batches; forwarding one write per call");
            if let Ok(mut at) = calls.refused_at.lock() {
                *at = Some(Instant::now());
            }
            send_each(client, batch, &calls.counters).await;
        }
        Err(status) => {
            for p in batch {
                let _ = p.reply.send(Err(status.clone()));
            }
        }
    }
}

/// Sends each write of `batch` as its own `Forward` call, all at once.
async fn send_each(
    client: CatalogClient<Channel>,
    batch: Vec<Pending>,
    counters: &CatalogCounters,
) {
    counters
        .forward_calls
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    futures::future::join_all(batch.into_iter().map(|p| {
        let mut client = client.clone();
        async move {
            let mut request = tonic::Request::new(ForwardRequest {
                command: p.command.to_vec(),
            });
            request.set_timeout(p.timeout);
            let answer = client.forward(request).await.map(|r| r.into_inner());
            let _ = p.reply.send(answer.and_then(outcome));
        }
    }))
    .await;
}

fn outcome(answer: ForwardReply) -> Forwarded {
    answer
        .result
        .ok_or_else(|| Status::internal("the leader sent an empty reply"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriteOutcome;
    use meridian_protos::catalog::catalog_server::{Catalog, CatalogServer};
    use meridian_protos::catalog::{
        ForwardBatchReply, MembershipReply, MembershipRequest, ReadIndexReply, ReadIndexRequest,
    };
    use std::sync::atomic::AtomicU64;
    use tonic::{Request, Response};

    /// A leader of a version before `ForwardBatch`: it applies single forwards only.
    struct OldLeader {
        applied: Arc<AtomicU64>,
    }

    #[tonic::async_trait]
    impl Catalog for OldLeader {
        async fn forward(
            &self,
            _request: Request<ForwardRequest>,
        ) -> Result<Response<ForwardReply>, Status> {
            let index = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
            let outcome = WriteOutcome {
                index,
                changed: true,
                found: true,
                ..WriteOutcome::default()
            };
            let bytes =
                serde_json::to_vec(&outcome).map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(ForwardReply {
                result: Some(ForwardResult::Outcome(bytes)),
            }))
        }

        async fn forward_batch(
            &self,
            _request: Request<ForwardBatchRequest>,
        ) -> Result<Response<ForwardBatchReply>, Status> {
            Err(Status::unimplemented("unknown method ForwardBatch"))
        }

        async fn read_index(
            &self,
            _request: Request<ReadIndexRequest>,
        ) -> Result<Response<ReadIndexReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn change_membership(
            &self,
            _request: Request<MembershipRequest>,
        ) -> Result<Response<MembershipReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    #[tokio::test]
    async fn a_leader_without_batches_gets_each_write_on_its_own() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let applied = Arc::new(AtomicU64::new(0));
        let leader = OldLeader {
            applied: applied.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CatalogServer::new(leader))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel =
            crate::network::channel(&addr, Duration::from_secs(2), None).expect("channel");
        let counters = Arc::new(CatalogCounters::default());
        let forwarder = Forwarder::start(CatalogClient::new(channel), counters.clone());
        let round = |n: usize| {
            let forwarder = forwarder.clone();
            async move {
                // Queued together, before the forwarder's task runs: one batch.
                let writes = (0..n).map(|i| {
                    forwarder.forward(
                        Bytes::from(format!("{{\"w\":{i}}}")),
                        Duration::from_secs(5),
                    )
                });
                futures::future::join_all(writes).await
            }
        };
        for answer in round(5).await {
            assert!(
                matches!(answer, Ok(ForwardResult::Outcome(_))),
                "every write is applied one by one: {answer:?}"
            );
        }
        assert_eq!(applied.load(Ordering::SeqCst), 5);
        // The refused batch and five single calls; the next writes go singly at once.
        assert_eq!(CatalogCounters::get(&counters.forward_calls), 6);
        for answer in round(3).await {
            assert!(matches!(answer, Ok(ForwardResult::Outcome(_))));
        }
        assert_eq!(applied.load(Ordering::SeqCst), 8);
        assert_eq!(CatalogCounters::get(&counters.forward_calls), 9);
    }
}
