//! The Consul-compatible HTTP API: shapes, blocking queries, and bad input that changes nothing.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::harness::{Agent, header, service};

async fn dev_agent(dir: &std::path::Path) -> Result<Agent> {
    let mut agent = crate::harness::dev("dev", &dir.join("data"), dir, &[])?;
    agent.wait_ready().await?;
    Ok(agent)
}

fn index_of(r: &reqwest::Response) -> Result<u64> {
    r.headers()
        .get("X-Consul-Index")
        .context("X-Consul-Index header")?
        .to_str()?
        .parse()
        .context("numeric X-Consul-Index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_shapes_and_blocking_queries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dev_agent(dir.path()).await?;
    let mut body = service("web", "web-1", 8080);
    body["Tags"] = json!(["blue", "v2"]);
    body["Meta"] = json!({ "version": "2" });
    body["Weights"] = json!({ "Passing": 3, "Warning": 1 });
    let r = agent.put_json("/v1/agent/service/register", &body).await?;
    ensure!(r.status().is_success(), "register: {}", r.text().await?);

    let services = agent.get_json("/v1/catalog/services").await?;
    ensure!(services["web"] == json!(["blue", "v2"]), "{services}");
    let entries = agent.get_json("/v1/catalog/service/web").await?;
    let e = &entries[0];
    ensure!(
        e["ServiceID"] == "web-1" && e["ServiceName"] == "web",
        "{e}"
    );
    ensure!(
        e["ServicePort"] == 8080 && e["ServiceAddress"] == "127.0.0.1",
        "{e}"
    );
    ensure!(
        e["Datacenter"] == "dc1" && e["ServiceMeta"]["version"] == "2",
        "{e}"
    );
    ensure!(e["ServiceWeights"]["Passing"] == 3, "{e}");
    let tagged = agent.get_json("/v1/catalog/service/web?tag=blue").await?;
    ensure!(tagged.as_array().map(Vec::len) == Some(1));
    let untagged = agent.get_json("/v1/catalog/service/web?tag=green").await?;
    ensure!(untagged.as_array().map(Vec::len) == Some(0));
    let health = agent.get_json("/v1/health/service/web?passing").await?;
    ensure!(health[0]["Service"]["ID"] == "web-1", "{health}");
    ensure!(health[0]["Node"]["Node"].is_string(), "{health}");
    let dcs = agent.get_json("/v1/catalog/datacenters").await?;
    ensure!(dcs == json!(["dc1"]), "{dcs}");
    let nodes = agent.get_json("/v1/catalog/nodes").await?;
    ensure!(nodes.as_array().is_some_and(|n| n.len() == 1), "{nodes}");
    let peers = agent.get_json("/v1/status/peers").await?;
    ensure!(
        peers == json!([format!("127.0.0.1:{}", agent.ports.rpc)]),
        "{peers}"
    );

    // A blocking query returns when the catalog changes, not when its wait runs out.
    let r = agent
        .http
        .get(agent.url("/v1/catalog/services"))
        .send()
        .await?;
    let index = index_of(&r)?;
    let url = agent.url(&format!("/v1/catalog/services?index={index}&wait=60s"));
    let http = agent.http.clone();
    let started = Instant::now();
    let blocked = tokio::spawn(async move { http.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !blocked.is_finished(),
        "a blocking query returned before any change"
    );
    let r = agent
        .put_json("/v1/agent/service/register", &service("api", "api-1", 9090))
        .await?;
    ensure!(r.status().is_success());
    let r = blocked.await??;
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "woke only at timeout"
    );
    ensure!(index_of(&r)? > index);
    let v: Value = r.json().await?;
    ensure!(v.get("api").is_some(), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dev_agent(dir.path()).await?;
    let r = agent
        .put_json("/v1/agent/service/register", &service("web", "web-1", 80))
        .await?;
    ensure!(r.status().is_success());
    let before = agent
        .http
        .get(agent.url("/v1/catalog/services"))
        .send()
        .await?;
    let index = index_of(&before)?;
    let services_before: Value = before.json().await?;

    let raw = |body: &'static str| (body.to_owned(), "malformed");
    let cases: Vec<(String, &str)> = vec![
        raw("{\"Name\": \"web\", "),
        raw("[1,2,3]"),
        raw("not json at all"),
        (
            json!({"Name": "web", "Port": 80, "Bogus": 1}).to_string(),
            "unknown field",
        ),
        (
            json!({"Name": "web_app", "Port": 80}).to_string(),
            "not a DNS label",
        ),
        (
            json!({"Name": "a.b", "Port": 80}).to_string(),
            "not a DNS label",
        ),
        (json!({"Name": "", "Port": 80}).to_string(), "empty name"),
        (
            json!({"Name": "web", "Port": 70000}).to_string(),
            "port out of range",
        ),
        (
            json!({"Name": "web", "Port": "x"}).to_string(),
            "port not a number",
        ),
        (json!({"Name": "web", "ID": "a/b"}).to_string(), "bad id"),
        (
            json!({"Name": "web", "Meta": {"bad key": "x"}}).to_string(),
            "bad meta",
        ),
        (
            json!({"Name": "web", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}).to_string(),
            "script check",
        ),
        (
            json!({"Name": "web", "Check": {"GRPC": "127.0.0.1:1", "Interval": "10s"}}).to_string(),
            "grpc check",
        ),
        (
            json!({"Name": "web", "Check": {"TCP": "127.0.0.1:1"}}).to_string(),
            "tcp check without interval",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "ten seconds"}}).to_string(),
            "bad duration",
        ),
        (
            json!({"Name": "web", "Check": {"TCP": "127.0.0.1:1", "TTL": "10s", "Interval": "1s"}})
                .to_string(),
            "two check types",
        ),
    ];
    for (body, why) in cases {
        let r = agent
            .http
            .put(agent.url("/v1/agent/service/register"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let status = r.status();
        let msg = r.text().await?;
        ensure!(status == 400, "{why}: {body} gave {status}: {msg}");
        ensure!(!msg.trim().is_empty(), "{why}: empty error message");
    }
    // Oversized body.
    let big = json!({"Name": "web", "Port": 80, "Meta": {"k": "x".repeat(4 * 1024 * 1024)}});
    let r = agent.put_json("/v1/agent/service/register", &big).await?;
    ensure!(r.status() == 413, "oversized body gave {}", r.status());
    // Oversized headers.
    let r = agent
        .http
        .get(agent.url("/v1/catalog/services"))
        .header("x-padding", "x".repeat(20 * 1024))
        .send()
        .await?;
    ensure!(r.status() == 431, "oversized headers gave {}", r.status());
    // Unknown things.
    let r = agent
        .http
        .put(agent.url("/v1/agent/service/deregister/nope"))
        .send()
        .await?;
    ensure!(r.status() == 404, "unknown deregister gave {}", r.status());
    let r = agent
        .http
        .put(agent.url("/v1/agent/check/pass/nope"))
        .send()
        .await?;
    ensure!(r.status() == 404, "unknown check gave {}", r.status());
    let r = agent
        .http
        .get(agent.url("/v1/agent/service/register"))
        .send()
        .await?;
    ensure!(
        r.status() == 405,
        "GET on a PUT endpoint gave {}",
        r.status()
    );
    let r = agent
        .http
        .get(agent.url("/v1/catalog/service/web?index=abc"))
        .send()
        .await?;
    ensure!(r.status() == 400, "bad index gave {}", r.status());

    let after = agent
        .http
        .get(agent.url("/v1/catalog/services"))
        .send()
        .await?;
    ensure!(index_of(&after)? == index, "the catalog index moved");
    let services_after: Value = after.json().await?;
    ensure!(
        services_after == services_before,
        "{services_after} != {services_before}"
    );
    ensure!(agent.instance_ids("web").await? == ["web-1"]);
    let metrics = agent.metrics().await?;
    ensure!(
        metrics.contains("meridian_http_bad_requests_total"),
        "{metrics}"
    );
    Ok(())
}

/// The SRV answers for `web.service.consul` at `dns`.
async fn web_srv(dns: std::net::SocketAddr) -> Result<Vec<String>> {
    use hickory_net::proto::rr::RecordType;
    let m = crate::dns::query(dns, "web.service.consul.", RecordType::SRV, false).await?;
    Ok(crate::dns::srv_lines(&m))
}

/// `web`'s SRV answer once it satisfies `want` (within 5 s), else the last one. The DNS server
/// follows the view a moment after the API that acknowledged the write (its own copy, swapped
/// by a task), so an answer right after the write may still be the one before it.
async fn web_srv_once(
    dns: std::net::SocketAddr,
    want: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let answers = web_srv(dns).await?;
        if want(&answers) || std::time::Instant::now() >= deadline {
            return Ok(answers);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The ports of `web`'s health entries that `filter` keeps.
async fn filtered_ports(agent: &Agent, filter: &str) -> Result<Vec<u64>> {
    let path = format!("/v1/health/service/web?filter={}", urlencode(filter));
    let v = agent.get_json(&path).await?;
    Ok(v.as_array()
        .context("array")?
        .iter()
        .filter_map(|e| e["Service"]["Port"].as_u64())
        .collect())
}

/// `s` as a query-string value.
fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Status and body of a request with method `method` (`GET` or `PUT`) on `path`.
async fn call(agent: &Agent, put: bool, path: &str) -> Result<(u16, String)> {
    let req = if put {
        agent.http.put(agent.url(path))
    } else {
        agent.http.get(agent.url(path))
    };
    let r = req.send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// Consul's node, health and member endpoints, check registration, and maintenance mode: a
/// service put in maintenance leaves DNS answers (as a failing check does) and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_health_members_checks_and_maintenance() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dev_agent(dir.path()).await?;
    for (id, port) in [("web-1", 8080), ("web-2", 8081)] {
        let mut body = service("web", id, port);
        body["Check"] = json!({ "TTL": "30s", "Status": "passing" });
        let r = agent.put_json("/v1/agent/service/register", &body).await?;
        ensure!(r.status().is_success(), "register: {}", r.text().await?);
    }
    let me = agent.get_json("/v1/agent/self").await?["Config"]["NodeName"]
        .as_str()
        .context("node name")?
        .to_owned();

    // The node with its instances, by ID and as a list; an unknown node.
    let node = agent.get_json(&format!("/v1/catalog/node/{me}")).await?;
    ensure!(node["Node"]["Node"] == me.as_str(), "{node}");
    ensure!(node["Services"]["web-2"]["Port"] == 8081, "{node}");
    ensure!(node["Services"]["web-1"]["Service"] == "web", "{node}");
    ensure!(agent.get_json("/v1/catalog/node/nobody").await? == Value::Null);
    let list = agent
        .get_json(&format!("/v1/catalog/node-services/{me}"))
        .await?;
    let ids: Vec<&str> = list["Services"]
        .as_array()
        .context("Services")?
        .iter()
        .filter_map(|s| s["ID"].as_str())
        .collect();
    ensure!(ids.contains(&"web-1") && ids.contains(&"web-2"), "{list}");
    let none = agent.get_json("/v1/catalog/node-services/nobody").await?;
    ensure!(none == json!({ "Node": null, "Services": [] }), "{none}");

    // Checks by node, by service, by state.
    let checks = agent.get_json(&format!("/v1/health/node/{me}")).await?;
    ensure!(checks.as_array().map(Vec::len) == Some(2), "{checks}");
    let web = agent.get_json("/v1/health/checks/web").await?;
    ensure!(web.as_array().map(Vec::len) == Some(2), "{web}");
    ensure!(
        web[0]["ServiceName"] == "web" && web[0]["Status"] == "passing" && web[0]["Type"] == "ttl",
        "{web}"
    );
    let any = agent.get_json("/v1/health/state/any").await?;
    ensure!(any.as_array().map(Vec::len) == Some(2), "{any}");
    let critical = agent.get_json("/v1/health/state/critical").await?;
    ensure!(critical == json!([]), "{critical}");
    let (code, text) = call(&agent, false, "/v1/health/state/sick").await?;
    ensure!(code == 400 && text.contains("sick"), "{code} {text}");

    // ?filter in Consul's language, on every listing; a bad one is a 400 naming the position,
    // and an endpoint without filtering refuses one rather than ignoring it.
    let port = |q: &'static str| filtered_ports(&agent, q);
    ensure!(port("Service.Port == 8081").await? == [8081]);
    ensure!(port("Service.ID matches \"-1$\" or Service.Port == 9999").await? == [8080]);
    ensure!(
        port("\"passing\" in Checks.Status and Service.Tags contains t1")
            .await?
            .len()
            == 2
    );
    ensure!(port("not Node.Node == dev").await?.is_empty());
    let by_port = agent
        .get_json(&format!(
            "/v1/catalog/service/web?filter={}",
            urlencode("ServicePort == 8080")
        ))
        .await?;
    ensure!(by_port.as_array().map(Vec::len) == Some(1), "{by_port}");
    let node = agent
        .get_json(&format!(
            "/v1/catalog/node/{me}?filter={}",
            urlencode("Port == 8081")
        ))
        .await?;
    ensure!(
        node["Node"]["Node"] == me.as_str()
            && node["Services"].as_object().map(|m| m.len()) == Some(1)
            && node["Services"]["web-2"]["Port"] == 8081,
        "the node's services, filtered: {node}"
    );
    let mine = agent
        .get_json(&format!(
            "/v1/agent/services?filter={}",
            urlencode("ID == \"web-2\"")
        ))
        .await?;
    ensure!(
        mine.as_object().map(|m| m.len()) == Some(1) && mine["web-2"].is_object(),
        "{mine}"
    );
    let (code, text) = call(
        &agent,
        false,
        &format!(
            "/v1/health/service/web?filter={}",
            urlencode("Service.Port ==")
        ),
    )
    .await?;
    ensure!(code == 400 && text.contains("at 16"), "{code} {text}");
    let (code, text) = call(
        &agent,
        false,
        &format!("/v1/agent/self?filter={}", urlencode("a == b")),
    )
    .await?;
    ensure!(code == 400 && text.contains("filter"), "{code} {text}");

    // This DC's one server, alive; and with ?wan, named <node>.<dc>.
    let members = agent.get_json("/v1/agent/members").await?;
    ensure!(
        members[0]["Name"] == me.as_str() && members[0]["Status"] == 1,
        "{members}"
    );
    ensure!(members[0]["Tags"]["dc"] == "dc1", "{members}");
    let wan = agent.get_json("/v1/agent/members?wan=1").await?;
    ensure!(wan[0]["Name"] == format!("{me}.dc1").as_str(), "{wan}");

    // A node check registered and removed.
    let r = agent
        .put_json(
            "/v1/agent/check/register",
            &json!({ "Name": "disk", "TTL": "60s", "Status": "warning" }),
        )
        .await?;
    ensure!(
        r.status().is_success(),
        "check register: {}",
        r.text().await?
    );
    let checks = agent.get_json(&format!("/v1/health/node/{me}")).await?;
    let disk = checks
        .as_array()
        .and_then(|c| c.iter().find(|c| c["CheckID"] == "disk"))
        .context("the node check")?;
    ensure!(
        disk["Status"] == "warning" && disk["ServiceID"] == "",
        "{disk}"
    );
    // A warning node check shows in its instances' aggregate, and in the HTTP status.
    let (code, body) = call(&agent, false, "/v1/agent/health/service/name/web").await?;
    let warn: Value = serde_json::from_str(&body)?;
    ensure!(
        code == 429 && warn[0]["AggregatedStatus"] == "warning",
        "{code} {warn}"
    );
    let (code, _) = call(&agent, true, "/v1/agent/check/deregister/disk").await?;
    ensure!(code == 200, "deregister check: {code}");
    let (code, _) = call(&agent, true, "/v1/agent/check/deregister/disk").await?;
    ensure!(code == 404, "an unknown check: {code}");
    let r = agent
        .put_json(
            "/v1/agent/check/register",
            &json!({ "Name": "x", "ServiceID": "nope", "TTL": "5s" }),
        )
        .await?;
    ensure!(r.status() == 404, "a check of an unknown instance");

    // web-1 in maintenance: critical, out of DNS answers, then back.
    let dns = crate::dns::dns_addr(&agent);
    let two = |a: &[String]| a.len() == 2;
    ensure!(web_srv_once(dns, two).await?.len() == 2);
    let (code, text) = call(&agent, true, "/v1/agent/service/maintenance/web-1").await?;
    ensure!(code == 400 && text.contains("enable"), "{code} {text}");
    let (code, _) = call(
        &agent,
        true,
        "/v1/agent/service/maintenance/web-1?enable=true&reason=upgrade",
    )
    .await?;
    ensure!(code == 200, "maintenance on: {code}");
    let (code, body) = call(&agent, false, "/v1/agent/health/service/id/web-1").await?;
    ensure!(code == 503, "{code} {body}");
    let entry: Value = serde_json::from_str(&body)?;
    let mcheck = entry["Checks"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["CheckID"] == "_service_maintenance:web-1")
        })
        .context("the maintenance check")?;
    ensure!(
        mcheck["Status"] == "critical" && mcheck["Notes"] == "upgrade",
        "{mcheck}"
    );
    let answers = web_srv_once(dns, |a| a.len() == 1).await?;
    ensure!(
        answers.len() == 1 && answers[0].contains(" 8081 "),
        "{answers:?}"
    );
    let (code, _) = call(
        &agent,
        true,
        "/v1/agent/service/maintenance/web-1?enable=false",
    )
    .await?;
    ensure!(code == 200, "maintenance off: {code}");
    ensure!(web_srv_once(dns, two).await?.len() == 2);

    // The whole node in maintenance: no answer at all, then both back.
    let (code, _) = call(&agent, true, "/v1/agent/maintenance?enable=true").await?;
    ensure!(code == 200, "node maintenance on: {code}");
    let (code, text) = call(
        &agent,
        false,
        "/v1/agent/health/service/name/web?format=text",
    )
    .await?;
    ensure!(code == 503 && text == "critical", "{code} {text}");
    ensure!(web_srv_once(dns, <[String]>::is_empty).await?.is_empty());
    let (code, _) = call(&agent, true, "/v1/agent/maintenance?enable=false").await?;
    ensure!(code == 200, "node maintenance off: {code}");
    ensure!(web_srv_once(dns, two).await?.len() == 2);
    Ok(())
}

/// A dev agent with `web-1` (port 8080) and a prepared query `webq` for it, and the query's ID.
async fn agent_with_web_and_a_query(dir: &std::path::Path) -> Result<(Agent, String)> {
    let agent = dev_agent(dir).await?;
    let r = agent
        .put_json("/v1/agent/service/register", &service("web", "web-1", 8080))
        .await?;
    ensure!(r.status().is_success(), "register: {}", r.text().await?);
    let created: Value = agent
        .http
        .post(agent.url("/v1/query"))
        .json(&json!({ "Name": "webq", "Service": { "Service": "web" } }))
        .send()
        .await?
        .json()
        .await?;
    let qid = created["ID"].as_str().context("query ID")?.to_owned();
    Ok((agent, qid))
}

/// Every read route, walked with the parameters of Consul's that change an answer: each is
/// honoured (the answer changes as asked) or refused with a 400 that names it, never ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_ignores_a_parameter_that_changes_its_answer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (agent, qid) = agent_with_web_and_a_query(dir.path()).await?;
    let routes = [
        "/v1/agent/self".to_owned(),
        "/v1/agent/services".to_owned(),
        "/v1/agent/checks".to_owned(),
        "/v1/agent/service/web-1".to_owned(),
        "/v1/agent/members".to_owned(),
        "/v1/agent/health/service/name/web".to_owned(),
        "/v1/agent/health/service/id/web-1".to_owned(),
        "/v1/catalog/services".to_owned(),
        "/v1/catalog/service/web".to_owned(),
        "/v1/catalog/nodes".to_owned(),
        "/v1/catalog/node/dev".to_owned(),
        "/v1/catalog/node-services/dev".to_owned(),
        "/v1/catalog/datacenters".to_owned(),
        "/v1/health/service/web".to_owned(),
        "/v1/health/node/dev".to_owned(),
        "/v1/health/checks/web".to_owned(),
        "/v1/health/state/any".to_owned(),
        "/v1/status/leader".to_owned(),
        "/v1/status/peers".to_owned(),
        "/v1/operator/raft/configuration".to_owned(),
        "/v1/federation/datacenters".to_owned(),
        "/v1/coordinate/datacenters".to_owned(),
        "/v1/coordinate/nodes".to_owned(),
        "/v1/coordinate/node/dev".to_owned(),
        "/v1/federation/status".to_owned(),
        "/v1/query".to_owned(),
        format!("/v1/query/{qid}"),
        format!("/v1/query/{qid}/execute"),
    ];
    // Parameters Meridian cannot honour: refused on every route, with the parameter named.
    for route in &routes {
        for param in [
            "near=_agent",
            "ns=team",
            "partition=eu",
            "peer=other",
            "merge-central-config",
        ] {
            let (code, text) = call(&agent, false, &format!("{route}?{param}")).await?;
            let key = param.split('=').next().unwrap_or(param);
            ensure!(
                code == 400 && text.contains(key),
                "{route}?{param}: {code} {text}"
            );
        }
        // Allowed staleness is what every read gives already; a consistent read (here the
        // leader confirms itself: one voter) gives the same answer, and not both at once.
        let (code, stale) = call(&agent, false, &format!("{route}?stale")).await?;
        ensure!(code == 200, "{route}?stale: {code} {stale}");
        let (code, text) = call(&agent, false, &format!("{route}?consistent")).await?;
        ensure!(code == 200, "{route}?consistent: {code} {text}");
        let (code, text) = call(&agent, false, &format!("{route}?consistent&stale")).await?;
        ensure!(
            code == 400 && text.contains("conflicting"),
            "{route}?consistent&stale: {code} {text}"
        );
    }
    let (code, text) = call(&agent, false, "/v1/catalog/nodes?consistent&dc=dc2").await?;
    ensure!(
        code == 400 && text.contains("another datacenter"),
        "{code} {text}"
    );
    // ?node-meta and ?filter: honoured by the listings, refused elsewhere.
    let listings = [
        "/v1/agent/services",
        "/v1/agent/checks",
        "/v1/catalog/services",
        "/v1/catalog/service/web",
        "/v1/catalog/nodes",
        "/v1/catalog/node-services/dev",
        "/v1/health/service/web",
        "/v1/health/node/dev",
        "/v1/health/checks/web",
        "/v1/health/state/any",
    ];
    for route in &routes {
        let (code, text) = call(&agent, false, &format!("{route}?node-meta=zone:nowhere")).await?;
        if listings.contains(&route.as_str()) {
            ensure!(code == 200, "{route}?node-meta: {code} {text}");
            let v: Value = serde_json::from_str(&text)?;
            let empty = match &v {
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o
                    .get("Services")
                    .map_or(o.is_empty(), |s| s.as_array().is_some_and(Vec::is_empty)),
                _ => false,
            };
            ensure!(empty, "{route}?node-meta=zone:nowhere kept something: {v}");
        } else {
            ensure!(
                code == 400 && text.contains("node-meta"),
                "{route}?node-meta: {code} {text}"
            );
        }
    }
    // The node's own metadata matches: nothing is left out.
    let me = agent.get_json("/v1/catalog/node/dev").await?;
    let rpc = me["Node"]["Meta"]["meridian-rpc"]
        .as_str()
        .context("the server's meta")?
        .to_owned();
    let kept = agent
        .get_json(&format!(
            "/v1/health/service/web?node-meta={}",
            urlencode(&format!("meridian-rpc:{rpc}"))
        ))
        .await?;
    ensure!(kept.as_array().map(Vec::len) == Some(1), "{kept}");
    // Consul's coordinate shapes, this DC's server at the origin.
    let dcs = agent.get_json("/v1/coordinate/datacenters").await?;
    ensure!(
        dcs[0]["Datacenter"] == "dc1" && dcs[0]["Coordinates"][0]["Node"] == "dev.dc1",
        "{dcs}"
    );
    ensure!(
        dcs[0]["Coordinates"][0]["Coord"]["Vec"] == json!(vec![0.0; 8]),
        "{dcs}"
    );
    let nodes = agent.get_json("/v1/coordinate/nodes").await?;
    ensure!(
        nodes[0]["Node"] == "dev" && nodes[0]["Coord"]["Height"].is_f64(),
        "{nodes}"
    );
    let node = agent.get_json("/v1/coordinate/node/DEV").await?;
    ensure!(node == nodes, "one node's entry, as a list: {node}");
    let r = agent
        .http
        .get(agent.url("/v1/coordinate/node/nobody"))
        .send()
        .await?;
    ensure!(
        r.status() == 404 && r.headers().contains_key("x-consul-index"),
        "an unknown node: an empty 404 with its index, as Consul: {r:?}"
    );
    // ?failover: what the plain DNS name resolves to, here the local DC; only on the health of
    // a service, and not with an explicit DC.
    let r = agent
        .http
        .get(agent.url("/v1/health/service/web?failover"))
        .send()
        .await?;
    ensure!(
        header(&r, "x-meridian-datacenter").as_deref() == Some("dc1"),
        "{:?}",
        r.headers()
    );
    let v: Value = r.json().await?;
    ensure!(v[0]["Service"]["ID"] == "web-1", "{v}");
    for path in [
        "/v1/health/service/web?failover&dc=dc1",
        "/v1/catalog/service/web?failover",
        "/v1/agent/services?failover",
    ] {
        let (code, text) = call(&agent, false, path).await?;
        ensure!(
            code == 400 && text.contains("failover"),
            "{path}: {code} {text}"
        );
    }
    // Another DC's Raft status is not replicated here.
    let (code, text) = call(&agent, false, "/v1/status/leader?dc=dc9").await?;
    ensure!(code == 400 && text.contains("dc9"), "{code} {text}");
    // ?cached: answered from the local view, and said so.
    let r = agent
        .http
        .get(agent.url("/v1/health/service/web?cached"))
        .send()
        .await?;
    ensure!(
        header(&r, "x-cache").as_deref() == Some("HIT"),
        "{:?}",
        r.headers()
    );
    Ok(())
}

/// A prepared query's execution and `?failover` block (`?index=&wait=`) until their answer
/// changes: the index they answer with is the answer's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_by_failover_policy_block_until_they_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (agent, qid) = agent_with_web_and_a_query(dir.path()).await?;
    for (path, count) in [
        (format!("/v1/query/{qid}/execute"), "Nodes"),
        ("/v1/health/service/web?failover".to_owned(), ""),
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = agent.http.get(agent.url(&path)).send().await?;
        let index = index_of(&r)?;
        // Unchanged, the same index; a blocking call with it waits out a short wait.
        let again = agent.http.get(agent.url(&path)).send().await?;
        ensure!(
            index_of(&again)? == index,
            "{path}: the index of the same answer"
        );
        let started = Instant::now();
        let r = agent
            .http
            .get(agent.url(&format!("{path}{sep}index={index}&wait=300ms")))
            .send()
            .await?;
        ensure!(
            started.elapsed() >= Duration::from_millis(250) && index_of(&r)? == index,
            "{path}: returned before its wait with nothing changed"
        );
        // A new instance wakes it at once, with a new index and the new answer.
        let url = agent.url(&format!("{path}{sep}index={index}&wait=30s"));
        let http = agent.http.clone();
        let blocked = tokio::spawn(async move { http.get(url).send().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        ensure!(!blocked.is_finished(), "{path}: did not block");
        let id = format!("web-{}", path.len());
        let r = agent
            .put_json("/v1/agent/service/register", &service("web", &id, 9000))
            .await?;
        ensure!(r.status().is_success(), "register: {}", r.text().await?);
        let r = tokio::time::timeout(Duration::from_secs(10), blocked).await???;
        ensure!(index_of(&r)? != index, "{path}: a new index");
        let v: Value = r.json().await?;
        let list = if count.is_empty() { &v } else { &v[count] };
        ensure!(
            list.as_array()
                .is_some_and(|l| l.iter().any(|e| e["Service"]["ID"] == id.as_str())),
            "{path}: the new instance in {v}"
        );
    }
    Ok(())
}
