//! The web UI in a real headless Chromium (Debian's, driven by puppeteer-core through
//! `ui/tests/driver.mjs`) against a federation of three real one-node datacenters: the map, a DC
//! lost and seen lost in every DC's UI, a drain from the UI moving another DC's answers, a drill
//! started from the UI, the buttons a missing token disables, and the first load with 10,000
//! services (measured and printed; the figure is written down in bench/README.md). Every step
//! saves a screenshot into `$CARGO_TARGET_DIR/ui-screenshots/`. The UI's pure logic has its own
//! tests (`ui/tests/unit.test.mjs`), run here with Node's test runner.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::drill::three_dcs;
use crate::federation::make_certs;
use crate::harness::{Agent, eventually};
use meridian_testkit::config::AclToken;

/// The operator token every DC of the test knows.
const OPERATOR: &str = "ui-operator-token-0123456789";
/// Services registered for the load measurement, over the three DCs.
const MANY: usize = 10_000;
/// Longest wait for one browser command.
const COMMAND_LIMIT: Duration = Duration::from_secs(130);

/// The repository's root (the UI's files and its test scripts live there).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Where the screenshots go.
fn shots() -> Result<PathBuf> {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let dir = base.join("ui-screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `ui/tests/driver.mjs`, running one headless Chromium: one JSON command in, one answer out.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    async fn start() -> Result<Browser> {
        let tools = std::env::var("MERIDIAN_UI_TOOLS").context(
            "MERIDIAN_UI_TOOLS is not set: run the tests with scripts/test.sh, or `source \
             scripts/env.sh` first (it installs chromium and the pinned puppeteer-core)",
        )?;
        let mut child = tokio::process::Command::new("node")
            .arg(repo().join("ui/tests/driver.mjs"))
            .env("MERIDIAN_UI_TOOLS", tools)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node ui/tests/driver.mjs")?;
        let stdin = child.stdin.take().context("driver stdin")?;
        let out = BufReader::new(child.stdout.take().context("driver stdout")?).lines();
        Ok(Browser { child, stdin, out })
    }

    /// Sends `cmd`; its value, or the driver's error.
    async fn call(&mut self, cmd: Value) -> Result<Value> {
        let mut line = serde_json::to_string(&cmd)?;
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        let answer = tokio::time::timeout(COMMAND_LIMIT, self.out.next_line())
            .await
            .with_context(|| format!("the browser did not answer {cmd} in time"))??
            .with_context(|| format!("the browser exited before answering {cmd}"))?;
        let v: Value = serde_json::from_str(&answer).with_context(|| answer.clone())?;
        if v["ok"] != true {
            bail!("{cmd}: {}", v["error"]);
        }
        Ok(v["value"].clone())
    }

    async fn open(&mut self, page: &str, agent: &Agent, hash: &str) -> Result<()> {
        let url = agent.url(&format!("/ui/{hash}"));
        self.call(json!({"cmd": "open", "page": page, "url": url}))
            .await
            .map(drop)
    }

    async fn goto(&mut self, page: &str, hash: &str) -> Result<()> {
        self.call(json!({"cmd": "goto", "page": page, "hash": hash}))
            .await
            .map(drop)
    }

    /// Waits until `js` holds in `page`; how long it took, in ms.
    async fn wait(&mut self, page: &str, js: &str, timeout: Duration) -> Result<f64> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let v = self
            .call(json!({"cmd": "wait", "page": page, "js": js, "timeoutMs": ms}))
            .await;
        match v {
            Ok(v) => v.as_f64().context("wait answered no time"),
            Err(e) => {
                let text = self.text(page).await.unwrap_or_default();
                Err(e.context(format!(
                    "waiting in {page} for {js}; the page says:\n{text}"
                )))
            }
        }
    }

    async fn eval(&mut self, page: &str, js: &str) -> Result<Value> {
        self.call(json!({"cmd": "eval", "page": page, "js": js}))
            .await
    }

    async fn text(&mut self, page: &str) -> Result<String> {
        Ok(self
            .eval(page, "document.querySelector('main').innerText")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    async fn click(&mut self, page: &str, selector: &str) -> Result<()> {
        self.call(json!({"cmd": "click", "page": page, "selector": selector}))
            .await
            .map(drop)
    }

    async fn type_text(&mut self, page: &str, selector: &str, text: &str) -> Result<()> {
        self.call(json!({"cmd": "type", "page": page, "selector": selector, "text": text}))
            .await
            .map(drop)
    }

    async fn screenshot(&mut self, page: &str, name: &str) -> Result<()> {
        let path = shots()?.join(format!("{name}.png"));
        self.call(json!({"cmd": "screenshot", "page": page, "path": path}))
            .await?;
        ensure!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "no screenshot at {}",
            path.display()
        );
        Ok(())
    }

    /// Script errors the pages logged: a broken page fails the test.
    async fn no_errors(&mut self) -> Result<()> {
        let errors = self.call(json!({"cmd": "errors"})).await?;
        // A failed fetch while a DC is being killed is the UI reporting it, not a script error.
        let real: Vec<&Value> = errors
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                !e.as_str()
                    .is_some_and(|s| s.contains("Failed to load resource"))
            })
            .collect();
        ensure!(real.is_empty(), "the pages logged errors: {real:?}");
        Ok(())
    }

    async fn close(mut self) -> Result<()> {
        let _ = self.stdin.write_all(b"{\"cmd\":\"close\"}\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        Ok(())
    }
}

/// `document.querySelector(...)` of the DC card of `dc` has status `status`.
fn dc_status_is(dc: &str, status: &str) -> String {
    format!("document.querySelector('.card[data-dc=\"{dc}\"]')?.dataset.status === '{status}'")
}

/// Registers `n` services named `svc-NNNNN` (from `first`) in `agent`, 32 requests at a time.
async fn register_many(agent: &Agent, first: usize, n: usize) -> Result<()> {
    use futures::StreamExt as _;
    let results: Vec<Result<()>> = futures::stream::iter(first..first + n)
        .map(|i| async move {
            let body = json!({"ID": format!("svc-{i:05}"), "Name": format!("svc-{i:05}"),
                              "Port": 10_000 + (i % 50_000), "Address": "127.0.0.1",
                              "Tags": ["load"], "Meta": {"team": "ui-test"}});
            let r = agent.put_json("/v1/agent/service/register", &body).await?;
            ensure!(
                r.status().is_success(),
                "register svc-{i:05}: {}",
                r.status()
            );
            Ok(())
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_unit_tests_pass_in_node() -> Result<()> {
    let out = tokio::process::Command::new("node")
        .arg("--test")
        .arg(repo().join("ui/tests/unit.test.mjs"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .context("node --test ran for 60 s")??;
    ensure!(
        out.status.success(),
        "node --test ui/tests/unit.test.mjs failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_shows_the_federation_drains_runs_drills_and_sees_a_dc_die() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1"), ("dc3", "n1")])?;
    let ui_config = |c: &mut meridian_testkit::config::AgentConfig| {
        c.set("acl", "anonymous_read", true);
        if let Some(acl) = c.acl.as_mut() {
            acl.tokens.push(AclToken {
                description: "ui operator".to_owned(),
                secret: OPERATOR.to_owned(),
                scope: "operator".to_owned(),
                services: Vec::new(),
            });
        }
    };
    // dc3 has no web of its own: it goes to dc1 first, then dc2.
    let (dc1, mut dc2, dc3) = three_dcs(dir.path(), &certs, ui_config).await?;
    for (agent, port) in [(&dc1, 18_081), (&dc2, 18_082)] {
        let r = agent
            .put_json(
                "/v1/agent/service/register",
                &json!({"ID": "web-1", "Name": "web", "Port": port, "Address": "127.0.0.1",
                        "Check": {"TTL": "600s", "Status": "passing"}}),
            )
            .await?;
        ensure!(r.status().is_success(), "register web: {}", r.text().await?);
    }
    let third = MANY / 3;
    register_many(&dc1, 0, MANY - 2 * third).await?;
    register_many(&dc2, MANY - 2 * third, third).await?;
    register_many(&dc3, MANY - third, third).await?;
    // dc3 holds every DC's services, and sees every DC up.
    eventually(60, "dc3 listing every service", || async {
        dc3.get_json("/v1/internal/ui/services")
            .await
            .is_ok_and(|v| {
                v["Services"]
                    .as_array()
                    .is_some_and(|a| a.iter().filter(|s| s["Internal"] != true).count() > MANY)
            })
    })
    .await?;
    for agent in [&dc1, &dc2, &dc3] {
        eventually(30, "every DC up", || async {
            agent
                .get_json("/v1/internal/ui/datacenters")
                .await
                .is_ok_and(|v| {
                    v["Datacenters"]
                        .as_array()
                        .is_some_and(|a| a.len() == 3 && a.iter().all(|d| d["Status"] == "up"))
                })
        })
        .await
        .with_context(|| format!("statuses of {}", agent.name))?;
    }

    let mut b = Browser::start().await?;
    let steps = async {
        // The first load of the services page, 10,000 services over three DCs.
        b.open("dc3", &dc3, "#/services").await?;
        b.wait(
            "dc3",
            "window.__meridian?.timings?.servicesRendered > 0",
            Duration::from_secs(30),
        )
        .await?;
        let loaded = b
            .eval(
                "dc3",
                "({ms: window.__meridian.timings.servicesRendered, n: window.__meridian.timings.services, rows: document.querySelectorAll('.vlist a.row').length})",
            )
            .await?;
        ensure!(
            loaded["n"].as_u64().is_some_and(|n| n > MANY as u64)
                && loaded["rows"].as_u64() > Some(5),
            "the services page: {loaded}"
        );
        // Responsiveness: a filter keystroke over every service, then a scroll to the end.
        let t0 = Instant::now();
        b.type_text("dc3", "input[type=search]", "svc-0999").await?;
        b.wait(
            "dc3",
            "document.querySelectorAll('.vlist a.row').length === 10",
            Duration::from_secs(10),
        )
        .await?;
        let filter_ms = t0.elapsed().as_secs_f64() * 1000.0;
        b.type_text("dc3", "input[type=search]", "").await?;
        let scroll_ms = b
            .eval(
                "dc3",
                "(() => { const box = document.querySelector('.vlist'); const t = performance.now(); box.scrollTop = box.scrollHeight; box.dispatchEvent(new Event('scroll')); return performance.now() - t; })()",
            )
            .await?;
        b.wait(
            "dc3",
            "[...document.querySelectorAll('.vlist a.row')].some(r => r.dataset.service === 'web')",
            Duration::from_secs(10),
        )
        .await?;
        println!(
            "ui: first load of {} services in dc3's UI: {:.0} ms from navigation to the list \
             drawn; filter keystroke to redraw {filter_ms:.0} ms (with the driver's round \
             trips); scroll to the end redrawn in {:.1} ms",
            loaded["n"],
            loaded["ms"].as_f64().unwrap_or(f64::NAN),
            scroll_ms.as_f64().unwrap_or(f64::NAN)
        );
        b.screenshot("dc3", "services").await?;

        // The map: three DCs up, from each DC's UI.
        for (page, agent) in [("dc1", &dc1), ("dc2", &dc2)] {
            b.open(page, agent, "#/datacenters").await?;
        }
        b.goto("dc3", "#/datacenters").await?;
        for page in ["dc1", "dc2", "dc3"] {
            let all_up = ["dc1", "dc2", "dc3"]
                .iter()
                .map(|dc| dc_status_is(dc, "up"))
                .collect::<Vec<_>>()
                .join(" && ");
            b.wait(page, &all_up, Duration::from_secs(20)).await?;
        }
        b.screenshot("dc3", "datacenters").await?;

        // A service's detail: instances with their checks, from every DC that has it.
        b.goto("dc3", "#/services/web").await?;
        b.wait(
            "dc3",
            "document.querySelector('main').innerText.includes('dc1: 1 instance') && document.querySelector('main').innerText.includes('dc2: 1 instance')",
            Duration::from_secs(10),
        )
        .await?;
        b.screenshot("dc3", "service").await?;

        // Without a token the drain button is disabled, and says why.
        b.goto("dc1", "#/failover").await?;
        b.wait(
            "dc1",
            "document.querySelector('#drain')?.disabled === true && document.querySelector('#drain-why').innerText.includes('operator token')",
            Duration::from_secs(10),
        )
        .await?;
        b.screenshot("dc1", "failover-no-token").await?;
        // Every control says what it is (a label, an aria-label or its text), for a screen
        // reader as for the eye.
        for page in ["dc1", "dc3"] {
            let unlabelled = b
                .eval(
                    page,
                    "[...document.querySelectorAll('input, select, button')].filter(el => !(el.labels?.length || el.getAttribute('aria-label') || el.innerText.trim())).map(el => el.outerHTML)",
                )
                .await?;
            ensure!(
                unlabelled.as_array().is_some_and(Vec::is_empty),
                "controls without a label in {page}: {unlabelled}"
            );
        }

        // With one, dc1 drains from its UI, and dc3's services page sends web to dc2.
        b.goto("dc3", "#/services").await?;
        b.type_text("dc3", "input[type=search]", "web").await?;
        b.wait(
            "dc3",
            "document.querySelector('a.row[data-service=\"web\"]')?.dataset.answer === 'dc1'",
            Duration::from_secs(10),
        )
        .await?;
        b.type_text("dc1", "#token", OPERATOR).await?;
        b.click("dc1", "#token-form button[type=submit]").await?;
        b.wait(
            "dc1",
            "document.querySelector('#drain')?.disabled === false",
            Duration::from_secs(10),
        )
        .await?;
        b.click("dc1", "#drain").await?;
        let moved_ms = b
            .wait(
                "dc3",
                "document.querySelector('a.row[data-service=\"web\"]')?.dataset.answer === 'dc2'",
                Duration::from_secs(15),
            )
            .await?;
        println!(
            "ui: dc1 drained from its UI; dc3's services page answered web from dc2 {moved_ms:.0} ms after the click's round trip"
        );
        b.screenshot("dc3", "services-dc1-drained").await?;
        b.wait(
            "dc1",
            "document.querySelector('#undrain')?.disabled === false",
            Duration::from_secs(10),
        )
        .await?;
        b.click("dc1", "#undrain").await?;
        b.wait("dc1", &dc_status_is("dc1", "up"), Duration::from_secs(15))
            .await
            .or_else(|_| Ok::<f64, anyhow::Error>(0.0))?;
        b.wait(
            "dc1",
            "document.querySelector('#drain')?.disabled === false",
            Duration::from_secs(30),
        )
        .await?;

        // A drill from dc1's UI: dc-down of dc1 for 3 s, probed from dc2 and dc3; its report
        // fills in while it runs, and it is listed once done.
        b.eval(
            "dc1",
            "document.querySelector('#drill-dc').value = 'dc1'; document.querySelector('#drill-service').value = 'web'; document.querySelector('#drill-for').value = '3s'",
        )
        .await?;
        b.click("dc1", "#drill-start").await?;
        b.wait(
            "dc1",
            "document.querySelector('#drill')?.dataset.phase === 'failing' && document.querySelectorAll('#drill-report tbody tr').length === 2",
            Duration::from_secs(30),
        )
        .await?;
        b.screenshot("dc1", "drill-running").await?;
        b.wait(
            "dc1",
            "document.querySelector('#drill')?.dataset.phase === 'done'",
            Duration::from_secs(90),
        )
        .await?;
        let report = b
            .eval(
                "dc1",
                "[...document.querySelectorAll('#drill-report tbody tr')].map(r => r.innerText)",
            )
            .await?;
        let rows: Vec<&str> = report
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            rows.len() == 2
                && rows
                    .iter()
                    .any(|r| r.starts_with("dc3") && r.contains("dc2")),
            "dc3 probed and answered from dc2 during the drill: {rows:?}"
        );
        b.wait(
            "dc1",
            "document.querySelectorAll('#drills tbody tr').length === 1",
            Duration::from_secs(10),
        )
        .await?;
        b.screenshot("dc1", "drill-report").await?;
        // The drill restored dc1.
        let dcs = dc1.get_json("/v1/internal/ui/datacenters").await?;
        ensure!(dcs["Datacenters"][0]["Status"] != "drained", "{dcs}");

        // dc2 dies: every other DC's open UI turns it down.
        b.goto("dc3", "#/datacenters").await?;
        b.wait("dc3", &dc_status_is("dc2", "up"), Duration::from_secs(10))
            .await?;
        b.no_errors().await?;
        dc2.kill9()?;
        let t0 = Instant::now();
        // When dc3's API says so, polled beside the browser: the UI's own delay is the rest.
        let api_down = async {
            loop {
                let v = dc3.get_json("/v1/internal/ui/datacenters").await;
                let down = v.is_ok_and(|v| {
                    v["Datacenters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|d| d["Datacenter"] == "dc2" && d["Status"] == "down")
                });
                if down || t0.elapsed() > Duration::from_secs(20) {
                    return t0.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let (api_down, ui_down) = tokio::join!(api_down, async {
            b.wait("dc3", &dc_status_is("dc2", "down"), Duration::from_secs(20))
                .await
                .map(|_| t0.elapsed())
        });
        let ui_down = ui_down?;
        println!(
            "ui: dc2 killed; dc3's API says down after {:.0} ms, its open UI shows it after {:.0} ms",
            api_down.as_secs_f64() * 1000.0,
            ui_down.as_secs_f64() * 1000.0
        );
        b.goto("dc1", "#/datacenters").await?;
        b.wait("dc1", &dc_status_is("dc2", "down"), Duration::from_secs(20))
            .await?;
        b.screenshot("dc3", "datacenters-dc2-down").await?;
        anyhow::Ok(())
    };
    let result = steps.await;
    b.close().await?;
    result.with_context(|| {
        format!(
            "dc1: {}\ndc3: {}",
            tail(&dc1.log_text()),
            tail(&dc3.log_text())
        )
    })?;
    Ok(())
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
