//! Waits that end: every one has a limit and fails with what it waited for.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `f` until it returns true; fails after `limit` with "timed out after … waiting for
/// `what`".
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `f` until it returns `Some`; fails after `limit` like [`eventually`].
pub async fn until_some<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The Raft leader (`host:port` of its rpc port) that the agent at `base` (`http://host:port`)
/// knows, if any.
pub async fn leader_of(http: &reqwest::Client, base: &str) -> Option<String> {
    let r = http
        .get(format!("{base}/v1/status/leader"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let leader: String = r.json().await.ok()?;
    (!leader.is_empty()).then_some(leader)
}

/// Waits until every agent at `bases` knows a Raft leader, `limit` in all.
pub async fn leader_known(http: &reqwest::Client, bases: &[String], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    for base in bases {
        let left = deadline.saturating_duration_since(Instant::now());
        until_some(left, &format!("a leader known at {base}"), || {
            leader_of(http, base)
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_with_its_message() {
        let e = eventually(Duration::from_millis(250), "nothing", || async { false })
            .await
            .expect_err("never true");
        assert!(e.to_string().contains("waiting for nothing"), "{e}");
        let mut n = 0;
        let v = until_some(Duration::from_secs(5), "three", || {
            n += 1;
            let n = n;
            async move { (n >= 3).then_some(n) }
        })
        .await
        .expect("reached");
        assert_eq!(v, 3);
    }
}
