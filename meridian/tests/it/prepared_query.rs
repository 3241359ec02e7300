//! Prepared queries against real agents: the `/v1/query` CRUD in Consul's shapes, execution over
//! HTTP and DNS (`<name>.query.consul`), bad input, survival across a restart, and failover to
//! another datacenter when the local instances are all critical.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use hickory_net::proto::op::{Message, ResponseCode};
use hickory_net::proto::rr::{RData, RecordType};
use serde_json::{Value, json};

use crate::dns::{dns_addr, query, srv_lines};
use crate::federation::dev_dc;
use crate::harness::{Agent, eventually};

async fn register(agent: &Agent, body: Value) -> Result<()> {
    let r = agent.put_json("/v1/agent/service/register", &body).await?;
    ensure!(
        r.status().is_success(),
        "register {body}: {}",
        r.text().await?
    );
    Ok(())
}

/// Sends `method path` with `body` (raw text, so that malformed JSON can be sent) and returns the
/// status and the body text.
async fn send(
    agent: &Agent,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut req = agent.http.request(method, agent.url(path));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let r = req.send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// Creates a query and returns its ID.
async fn create(agent: &Agent, def: &Value) -> Result<String> {
    let (status, text) = send(
        agent,
        reqwest::Method::POST,
        "/v1/query",
        Some(&def.to_string()),
    )
    .await?;
    ensure!(status == 200, "create {def}: {status} {text}");
    let v: Value = serde_json::from_str(&text)?;
    let id = v["ID"].as_str().context("an ID")?.to_owned();
    Ok(id)
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn a_lines(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(format!("{} {} {}", r.name, r.ttl, a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

async fn ask(addr: SocketAddr, name: &str, qtype: RecordType) -> Result<Message> {
    query(addr, name, qtype, false).await
}

/// The IDs of the instances in an execute answer.
fn node_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["Nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_queries_crud_execute_dns_restart_and_bad_input() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agent = crate::harness::dev("dev", &dir.path().join("data"), dir.path(), &[])?;
    agent.wait_ready().await?;
    register(
        &agent,
        json!({"ID": "web-1", "Name": "web", "Port": 8080, "Address": "127.0.0.1", "Tags": ["v1"]}),
    )
    .await?;
    register(
        &agent,
        json!({"ID": "web-2", "Name": "web", "Port": 8081, "Address": "127.0.0.2", "Tags": ["v2"]}),
    )
    .await?;
    // Only critical instances: a query for it executes to an empty list.
    register(
        &agent,
        json!({"ID": "db-1", "Name": "db", "Port": 5432, "Address": "127.0.0.3",
               "Check": {"TTL": "300s", "Status": "critical"}}),
    )
    .await?;

    // Create, in the shape Consul's Go client sends (every field, mostly zero).
    let id = create(
        &agent,
        &json!({
            "Name": "web-v1", "Session": "", "Token": "",
            "Service": {"Service": "web", "Tags": ["v1"], "OnlyPassing": false,
                        "Failover": {"NearestN": 0, "Datacenters": null}, "Near": ""},
            "DNS": {"TTL": "15s"}
        }),
    )
    .await?;
    ensure!(is_uuid(&id), "a UUID-shaped ID: {id}");

    let list = agent.get_json("/v1/query").await?;
    let all = list.as_array().context("a list")?;
    ensure!(all.len() == 1, "{list}");
    let q = &all[0];
    ensure!(q["ID"] == id.as_str() && q["Name"] == "web-v1", "{q}");
    ensure!(
        q["Service"]["Service"] == "web" && q["Service"]["Tags"] == json!(["v1"]),
        "{q}"
    );
    ensure!(q["Service"]["OnlyPassing"] == false, "{q}");
    ensure!(
        q["Service"]["Failover"] == json!({"NearestN": 0, "Datacenters": []}),
        "{q}"
    );
    ensure!(q["DNS"]["TTL"] == "15s", "{q}");
    let created = q["CreateIndex"].as_u64().context("CreateIndex")?;
    ensure!(created > 0 && q["ModifyIndex"] == created, "{q}");
    let one = agent.get_json(&format!("/v1/query/{id}")).await?;
    ensure!(one == json!([q]), "GET by ID is a one-element list: {one}");

    // Execute by name and by ID.
    for key in ["web-v1", id.as_str()] {
        let r = agent.get_json(&format!("/v1/query/{key}/execute")).await?;
        ensure!(r["Service"] == "web" && r["Datacenter"] == "dc1", "{r}");
        ensure!(r["Failovers"] == 0 && r["DNS"]["TTL"] == "15s", "{r}");
        ensure!(node_ids(&r) == ["web-1"], "{r}");
        let e = &r["Nodes"][0];
        ensure!(
            e["Node"]["Node"].is_string() && e["Node"]["Datacenter"] == "dc1",
            "{e}"
        );
        ensure!(
            e["Service"]["Port"] == 8080 && e["Checks"].is_array(),
            "{e}"
        );
    }

    // DNS answers the query like its service, with the query's TTL.
    let dns = dns_addr(&agent);
    let m = ask(dns, "web-v1.query.consul.", RecordType::A).await?;
    ensure!(
        a_lines(&m) == ["web-v1.query.consul. 15 127.0.0.1"],
        "{:?}",
        a_lines(&m)
    );
    let m = ask(dns, "_web-v1._tcp.query.consul.", RecordType::SRV).await?;
    ensure!(
        srv_lines(&m) == ["1 1 8080 7f000001.addr.dc1.consul."],
        "{:?}",
        srv_lines(&m)
    );
    ensure!(m.answers.iter().all(|r| r.ttl == 15));

    // Update: the definition is replaced, the create index kept.
    let (status, text) = send(
        &agent,
        reqwest::Method::PUT,
        &format!("/v1/query/{id}"),
        Some(
            &json!({"Name": "web-v1", "Service": {"Service": "web", "Tags": ["!v1"]}}).to_string(),
        ),
    )
    .await?;
    ensure!(status == 200, "update: {status} {text}");
    let q = &agent.get_json(&format!("/v1/query/{id}")).await?[0];
    ensure!(
        q["Service"]["Tags"] == json!(["!v1"]) && q["DNS"]["TTL"] == "",
        "{q}"
    );
    ensure!(
        q["CreateIndex"] == created && q["ModifyIndex"].as_u64() > Some(created),
        "{q}"
    );
    let r = agent.get_json("/v1/query/web-v1/execute").await?;
    ensure!(node_ids(&r) == ["web-2"], "{r}");
    let m = ask(dns, "web-v1.query.consul.", RecordType::A).await?;
    ensure!(
        m.answers.len() == 1 && a_lines(&m)[0].ends_with(" 127.0.0.2"),
        "{:?}",
        a_lines(&m)
    );

    // A query with nothing healthy: an empty list over HTTP, NXDOMAIN in DNS.
    let db_id = create(
        &agent,
        &json!({"Name": "db-q", "Service": {"Service": "db", "OnlyPassing": true}}),
    )
    .await?;
    let r = agent.get_json("/v1/query/db-q/execute").await?;
    ensure!(r["Nodes"] == json!([]) && r["Datacenter"] == "dc1", "{r}");
    let m = ask(dns, "db-q.query.consul.", RecordType::A).await?;
    ensure!(m.metadata.response_code == ResponseCode::NXDomain, "{m:?}");

    // Bad input: a clear 400 or 404, and nothing changes.
    let unknown = "00000000-0000-0000-0000-000000000000";
    let cases: Vec<(reqwest::Method, String, Option<String>, u16, &str)> = vec![
        (
            reqwest::Method::POST,
            "/v1/query".into(),
            Some("{\"Name\": ".into()),
            400,
            "Request decode failed",
        ),
        (
            reqwest::Method::POST,
            "/v1/query".into(),
            Some(json!({"Name": "x"}).to_string()),
            400,
            "Must provide a Service name to query",
        ),
        (
            reqwest::Method::POST,
            "/v1/query".into(),
            Some(json!({"Name": "WEB-V1", "Service": {"Service": "api"}}).to_string()),
            400,
            "aliases an existing query name",
        ),
        (
            reqwest::Method::POST,
            "/v1/query".into(),
            Some(json!({"Name": "x", "Service": {"Servce": "api"}}).to_string()),
            400,
            "Servce",
        ),
        (
            reqwest::Method::POST,
            "/v1/query".into(),
            Some(json!({"Service": {"Service": "api"}, "DNS": {"TTL": "soon"}}).to_string()),
            400,
            "Bad DNS TTL",
        ),
        (
            reqwest::Method::POST,
            "/v1/query".into(),
            Some(json!({"Service": {"Service": "api", "Failover": {"NearestN": -1}}}).to_string()),
            400,
            "Bad NearestN",
        ),
        (
            reqwest::Method::PUT,
            format!("/v1/query/{db_id}"),
            Some(json!({"Name": "web-v1", "Service": {"Service": "db"}}).to_string()),
            400,
            "aliases an existing query name",
        ),
        (
            reqwest::Method::PUT,
            format!("/v1/query/{unknown}"),
            Some(json!({"Service": {"Service": "db"}}).to_string()),
            404,
            "Query not found",
        ),
        (
            reqwest::Method::GET,
            format!("/v1/query/{unknown}"),
            None,
            404,
            "Query not found",
        ),
        (
            reqwest::Method::DELETE,
            format!("/v1/query/{unknown}"),
            None,
            404,
            "Query not found",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/query/not-an-id".into(),
            None,
            404,
            "Query not found",
        ),
        (
            reqwest::Method::GET,
            "/v1/query/nope/execute".into(),
            None,
            404,
            "Query not found",
        ),
    ];
    for (method, path, body, want, message) in cases {
        let (status, text) = send(&agent, method.clone(), &path, body.as_deref()).await?;
        ensure!(
            status == want && text.contains(message),
            "{method} {path} {body:?}: got {status} {text:?}, want {want} with {message:?}"
        );
    }
    let list = agent.get_json("/v1/query").await?;
    ensure!(
        list.as_array().map(Vec::len) == Some(2),
        "bad input changed nothing: {list}"
    );
    let m = ask(dns, "nope.query.consul.", RecordType::A).await?;
    ensure!(m.metadata.response_code == ResponseCode::NXDomain, "{m:?}");

    // A restart on the same data folder keeps the queries.
    let before = agent.get_json(&format!("/v1/query/{id}")).await?;
    agent.restart()?;
    agent.wait_ready().await?;
    let after = agent.get_json(&format!("/v1/query/{id}")).await?;
    ensure!(after == before, "after restart: {after}\nbefore: {before}");
    eventually(
        30,
        "the query answered in DNS after the restart",
        || async {
            ask(dns, "web-v1.query.consul.", RecordType::A)
                .await
                .is_ok_and(|m| a_lines(&m).iter().any(|l| l.ends_with(" 127.0.0.2")))
        },
    )
    .await?;

    // Delete.
    let (status, text) = send(
        &agent,
        reqwest::Method::DELETE,
        &format!("/v1/query/{id}"),
        None,
    )
    .await?;
    ensure!(status == 200, "delete: {status} {text}");
    let (status, _) = send(
        &agent,
        reqwest::Method::GET,
        &format!("/v1/query/{id}"),
        None,
    )
    .await?;
    ensure!(status == 404, "deleted: {status}");
    let m = ask(dns, "web-v1.query.consul.", RecordType::A).await?;
    ensure!(m.metadata.response_code == ResponseCode::NXDomain, "{m:?}");
    let list = agent.get_json("/v1/query").await?;
    ensure!(
        list.as_array()
            .is_some_and(|l| l.len() == 1 && l[0]["ID"] == db_id.as_str()),
        "{list}"
    );

    // Two creates with one name at the same moment: the catalog lets exactly one win.
    let def = json!({"Name": "race", "Service": {"Service": "web"}}).to_string();
    let (a, b) = tokio::join!(
        send(&agent, reqwest::Method::POST, "/v1/query", Some(&def)),
        send(&agent, reqwest::Method::POST, "/v1/query", Some(&def)),
    );
    let mut statuses = [a?, b?];
    statuses.sort();
    ensure!(
        statuses[0].0 == 200
            && statuses[1].0 == 400
            && statuses[1].1.contains("aliases an existing query name"),
        "{statuses:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_fails_over_to_the_next_datacenter_when_local_instances_are_critical() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut dc1 = dev_dc(dir.path(), "dc1", None)?;
    dc1.wait_ready().await?;
    let mut dc2 = dev_dc(dir.path(), "dc2", Some(dc1.ports.wan))?;
    dc2.wait_ready().await?;

    // dc1's only instance is critical; dc2's is healthy.
    register(
        &dc1,
        json!({"ID": "web1", "Name": "web", "Port": 8080, "Address": "127.0.0.1",
               "Check": {"TTL": "300s", "Status": "critical"}}),
    )
    .await?;
    register(
        &dc2,
        json!({"ID": "web2", "Name": "web", "Port": 9090, "Address": "127.0.0.2"}),
    )
    .await?;
    eventually(30, "dc2's web replicated to dc1", || async {
        dc1.get_json("/v1/health/service/web?dc=dc2&passing")
            .await
            .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 1))
    })
    .await?;

    let id = create(
        &dc1,
        &json!({"Name": "web-geo", "Service": {"Service": "web", "OnlyPassing": true,
                "Failover": {"Datacenters": ["dc2"]}}, "DNS": {"TTL": "5s"}}),
    )
    .await?;
    let r = dc1.get_json("/v1/query/web-geo/execute").await?;
    ensure!(r["Datacenter"] == "dc2" && r["Failovers"] == 1, "{r}");
    ensure!(node_ids(&r) == ["web2"], "{r}");
    ensure!(r["Nodes"][0]["Node"]["Datacenter"] == "dc2", "{r}");
    let m = ask(dns_addr(&dc1), "web-geo.query.consul.", RecordType::SRV).await?;
    ensure!(
        srv_lines(&m) == ["1 1 9090 7f000002.addr.dc2.consul."],
        "{:?}",
        srv_lines(&m)
    );
    ensure!(m.answers.iter().all(|r| r.ttl == 5));

    // Queries stay in their datacenter: dc2 does not know dc1's.
    let (status, _) = send(&dc2, reqwest::Method::GET, &format!("/v1/query/{id}"), None).await?;
    ensure!(status == 404, "dc2 has no copy of dc1's query: {status}");

    // Once dc1's instance passes, the query answers locally again.
    let r = dc1
        .put_json("/v1/agent/check/pass/service:web1", &json!({}))
        .await?;
    ensure!(r.status().is_success());
    eventually(30, "the query back in dc1", || async {
        dc1.get_json("/v1/query/web-geo/execute")
            .await
            .is_ok_and(|r| r["Datacenter"] == "dc1" && r["Failovers"] == 0)
    })
    .await?;
    let r = dc1.get_json("/v1/query/web-geo/execute").await?;
    ensure!(node_ids(&r) == ["web1"], "{r}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_prefix_template_answers_every_name_it_starts_over_http_and_dns() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agent = crate::harness::dev("dev", &dir.path().join("data"), dir.path(), &[])?;
    agent.wait_ready().await?;
    for (id, name, port, addr, tags) in [
        ("web-1", "web", 8080, "127.0.0.1", ["v1"]),
        ("web-2", "web", 8081, "127.0.0.2", ["v2"]),
        ("db-1", "db", 5432, "127.0.0.3", ["v1"]),
    ] {
        register(
            &agent,
            json!({"ID": id, "Name": name, "Port": port, "Address": addr, "Tags": tags}),
        )
        .await?;
    }
    // As py-consul sends it: lowercase keys, which Consul's decoder matches ignoring case.
    let geo = create(
        &agent,
        &json!({"name": "geo-", "template": {"type": "name_prefix_match"},
                "service": {"service": "${name.suffix}", "onlypassing": true,
                            "failover": {"nearestn": 1}}}),
    )
    .await?;
    let (_, text) = send(&agent, reqwest::Method::GET, "/v1/query", None).await?;
    ensure!(
        text.matches("\"Template\"").count() == 1,
        "one Template key per query: {text}"
    );
    let list: Value = serde_json::from_str(&text)?;
    let q = &list[0];
    ensure!(
        q["Template"]
            == json!({"Type": "name_prefix_match", "Regexp": "", "RemoveEmptyTags": false})
            && q["Service"]["Service"] == "${name.suffix}"
            && q["Service"]["OnlyPassing"] == true
            && q["Service"]["Failover"]["NearestN"] == 1,
        "{q}"
    );
    // A longer prefix wins, and an exact name wins over every template.
    create(
        &agent,
        &json!({"Name": "geo-web-", "Template": {"Type": "name_prefix_match", "RemoveEmptyTags": true},
                "Service": {"Service": "web", "Tags": ["${name.suffix}"]}}),
    )
    .await?;
    create(
        &agent,
        &json!({"Name": "geo-api", "Service": {"Service": "web", "Tags": ["v2"]}}),
    )
    .await?;

    for (name, service, ids) in [
        ("geo-web", "web", vec!["web-1", "web-2"]),
        ("GEO-db", "db", vec!["db-1"]),
        ("geo-web-v1", "web", vec!["web-1"]),
        ("geo-web-", "web", vec!["web-1", "web-2"]),
        ("geo-api", "web", vec!["web-2"]),
        ("geo-nothing", "nothing", vec![]),
    ] {
        let r = agent.get_json(&format!("/v1/query/{name}/execute")).await?;
        ensure!(
            r["Service"] == service && node_ids(&r) == ids,
            "{name}: {r}"
        );
    }
    let dns = dns_addr(&agent);
    let m = ask(dns, "geo-web.query.consul.", RecordType::A).await?;
    let lines = a_lines(&m);
    ensure!(
        lines.len() == 2
            && lines
                .iter()
                .all(|l| l.starts_with("geo-web.query.consul. ")),
        "{lines:?}"
    );
    let m = ask(dns, "_geo-db._tcp.query.consul.", RecordType::SRV).await?;
    ensure!(
        srv_lines(&m) == ["1 1 5432 7f000003.addr.dc1.consul."],
        "{:?}",
        srv_lines(&m)
    );
    let m = ask(dns, "geo-web-v2.query.consul.", RecordType::A).await?;
    ensure!(
        a_lines(&m) == ["geo-web-v2.query.consul. 0 127.0.0.2"],
        "{:?}",
        a_lines(&m)
    );
    for name in ["geo-nothing.query.consul.", "ge.query.consul."] {
        let m = ask(dns, name, RecordType::A).await?;
        ensure!(
            m.metadata.response_code == ResponseCode::NXDomain,
            "{name}: {m:?}"
        );
    }

    // A template is executed by name only; bad templates are refused with the reason.
    let (status, text) = send(
        &agent,
        reqwest::Method::GET,
        &format!("/v1/query/{geo}/execute"),
        None,
    )
    .await?;
    ensure!(
        status == 400 && text.contains("by name, not by ID"),
        "{status} {text}"
    );
    let tmpl = |extra: Value| {
        let mut v = json!({"Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.suffix}"}});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v.to_string()
    };
    for (body, message) in [
        (
            tmpl(json!({"Name": "GEO-"})),
            "aliases an existing query name",
        ),
        (
            tmpl(json!({"Template": {"Type": "name_prefix_match", "Regexp": "^geo-(.*)$"}})),
            "Regexp",
        ),
        (
            tmpl(json!({"Template": {"Type": "regexp"}})),
            "Bad Template.Type",
        ),
        (
            tmpl(json!({"Name": "x-", "Service": {"Service": "${match(1)}"}})),
            "match(N)",
        ),
        (
            tmpl(json!({"Name": "y-", "Service": {"Service": "${node.name}"}})),
            "unknown variable",
        ),
    ] {
        let (status, text) = send(&agent, reqwest::Method::POST, "/v1/query", Some(&body)).await?;
        ensure!(
            status == 400 && text.contains(message),
            "{body}: {status} {text}"
        );
    }
    // One catch-all template (empty name) at most; it answers what no other query does.
    create(
        &agent,
        &json!({"Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.full}"}}),
    )
    .await?;
    let (status, text) = send(
        &agent,
        reqwest::Method::POST,
        "/v1/query",
        Some(&tmpl(json!({}))),
    )
    .await?;
    ensure!(
        status == 400 && text.contains("catch-all"),
        "{status} {text}"
    );
    let r = agent.get_json("/v1/query/db/execute").await?;
    ensure!(node_ids(&r) == ["db-1"], "{r}");
    let list = agent.get_json("/v1/query").await?;
    ensure!(list.as_array().map(Vec::len) == Some(4), "{list}");
    Ok(())
}
