//! Consul sessions and their liveness services, against the real Consul
//! 1.8.7 of the harness: a holder that stops renewing (as a SIGKILLed one
//! does) loses its session one TTL after its last renewal, through its own
//! liveness service's TTL check — not up to twice the TTL, as Consul's
//! session TTL alone allows — while another tool's service on the same
//! Consul agent and another holder's session are untouched; a closed
//! session takes its liveness service with it, and so does a holder that
//! learns its session is gone; liveness services are not registry entries.

mod consul_common;

use consul_common::{base_url, get_json, http, store};

use std::time::Duration;

use cntnr_e2e::shared_consul;
use cntnr_kv::consul::{LIVENESS_META, LIVENESS_SERVICE};
use cntnr_kv::{Session, Store};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Consul's minimum session TTL.
const TTL: Duration = Duration::from_secs(10);

/// Deregisters a service from the harness's Consul agent on drop, even
/// when the test fails (idempotent: an absent id is fine).
struct ServiceGuard(String);

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        let out = shared_consul().consul(&["services", "deregister", "-id", &self.0]);
        if !out.status.success() {
            eprintln!(
                "deregistering {}: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The id of the liveness service `sess` is tied to, read from the
/// session itself (`/v1/session/info`): exactly one service check, besides
/// `serfHealth`.
async fn liveness_id(base: &str, sess: &Session) -> String {
    let v = get_json(&format!("{base}/v1/session/info/{}", sess.id())).await;
    let info = &v[0];
    assert_eq!(info["NodeChecks"], json!(["serfHealth"]), "{v}");
    let checks = info["ServiceChecks"].as_array().expect("ServiceChecks");
    assert_eq!(checks.len(), 1, "{v}");
    let check = checks[0]["ID"].as_str().unwrap();
    check
        .strip_prefix("service:")
        .unwrap_or_else(|| panic!("check {check} is not a service check"))
        .to_string()
}

async fn session_exists(base: &str, id: &str) -> bool {
    let v = get_json(&format!("{base}/v1/session/info/{id}")).await;
    !v.as_array().unwrap().is_empty()
}

/// The local agent's definition of service instance `id`, if it has one.
async fn agent_service(base: &str, id: &str) -> Option<Value> {
    let v = get_json(&format!("{base}/v1/agent/services")).await;
    v.get(id).cloned()
}

/// Ids of the passing instances of `name` (`/v1/health/service?passing`).
async fn passing_ids(base: &str, name: &str) -> Vec<String> {
    let v = get_json(&format!("{base}/v1/health/service/{name}?passing")).await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap().to_string())
        .collect()
}

/// Another tool's service on the same Consul agent, with a long TTL check,
/// passing.
async fn register_other_tool(base: &str) -> ServiceGuard {
    let id = format!("other-tool-{}-{:x}", std::process::id(), fastrand::u64(..));
    let body = json!({
        "ID": id,
        "Name": "other-tool",
        "Port": 9000,
        "Check": {"CheckID": format!("service:{id}"), "TTL": "10m", "Status": "passing"},
    });
    let r = http()
        .put(format!("{base}/v1/agent/service/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    ServiceGuard(id)
}

/// A holder that stops renewing (its keepalive dropped without revoking,
/// as a SIGKILL leaves it) loses its session once its liveness check's TTL
/// runs out — by TTL + 3 s after its last renewal, well below the 2 × TTL
/// Consul's session TTL alone allows — and its bound key goes with it.
/// Meanwhile another tool's service on the same agent stays passing, and
/// another holder's session (sharing the agent, with a liveness service of
/// its own) stays valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_session_is_invalidated_one_ttl_after_its_last_renewal() {
    let base = base_url().await;
    let store = store(Some(Duration::from_secs(1))).await;
    let other_tool = register_other_tool(&base).await;
    assert_eq!(
        passing_ids(&base, "other-tool").await,
        vec![other_tool.0.clone()],
        "other tool passing at start"
    );

    let dead = store.create_session(TTL).await.unwrap();
    let alive = store.create_session(TTL).await.unwrap();
    let dead_svc = ServiceGuard(liveness_id(&base, &dead).await);
    let alive_svc = ServiceGuard(liveness_id(&base, &alive).await);
    assert_ne!(dead_svc.0, alive_svc.0, "one liveness service per session");
    for g in [&dead_svc, &alive_svc] {
        let def = agent_service(&base, &g.0)
            .await
            .unwrap_or_else(|| panic!("liveness service {} on the agent", g.0));
        assert_eq!(def["Service"], LIVENESS_SERVICE, "{def}");
        assert_eq!(def["Meta"][LIVENESS_META], "session-liveness", "{def}");
    }
    let key = format!("t{}-liveness/bound", std::process::id());
    store.put_bound(&dead, &key, b"x").await.unwrap();

    // Renewals (session and check together) keep it alive past its TTL.
    tokio::time::sleep(TTL + Duration::from_secs(2)).await;
    assert!(session_exists(&base, dead.id()).await, "renewed session");
    assert!(!dead.is_lost());

    // SIGKILL: no more renewals, no revoke.
    let dead_id = dead.id().to_string();
    let last_renewal = dead.renewed_at();
    drop(dead);
    let deadline = last_renewal + TTL + Duration::from_secs(3);
    loop {
        assert_eq!(
            passing_ids(&base, "other-tool").await,
            vec![other_tool.0.clone()],
            "another tool's service must stay passing"
        );
        if !session_exists(&base, &dead_id).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session still valid {:?} after its last renewal (TTL {TTL:?})",
            last_renewal.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = last_renewal.elapsed();
    eprintln!("session invalidated {after:?} after its last renewal (TTL {TTL:?})");
    assert!(
        after >= TTL,
        "invalidated {after:?} after the last renewal, before its TTL"
    );
    assert!(
        store.get(&key).await.unwrap().is_none(),
        "bound key deleted"
    );
    // Its liveness check is critical (the agent reaps the service later);
    // the other tool's service and the other session are unaffected.
    let v = get_json(&format!("{base}/v1/health/checks/{LIVENESS_SERVICE}")).await;
    let check = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ServiceID"] == dead_svc.0.as_str())
        .unwrap_or_else(|| panic!("no check of {} in {v}", dead_svc.0));
    assert_eq!(check["Status"], "critical", "{check}");
    assert_eq!(
        passing_ids(&base, "other-tool").await,
        vec![other_tool.0.clone()]
    );
    assert!(session_exists(&base, alive.id()).await, "other session");
    assert!(!alive.is_lost());
    alive.close().await.unwrap();
}

/// Closing a session destroys it and deregisters its liveness service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_removes_its_liveness_service() {
    let base = base_url().await;
    let store = store(Some(Duration::from_secs(1))).await;
    let sess = store.create_session(TTL).await.unwrap();
    let svc = ServiceGuard(liveness_id(&base, &sess).await);
    assert!(agent_service(&base, &svc.0).await.is_some());
    assert!(passing_ids(&base, LIVENESS_SERVICE).await.contains(&svc.0));
    sess.close().await.unwrap();
    assert!(!session_exists(&base, sess.id()).await, "session destroyed");
    assert!(
        agent_service(&base, &svc.0).await.is_none(),
        "liveness service {} still registered",
        svc.0
    );
}

/// A session invalidated behind the holder's back (destroyed from outside,
/// as an operator or Consul itself may): the holder learns it at its next
/// renewal and removes the liveness service then, rather than leaving it
/// critical until the agent reaps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_behind_the_holders_back_removes_its_liveness_service() {
    let base = base_url().await;
    let store = store(Some(Duration::from_secs(1))).await;
    let sess = store.create_session(TTL).await.unwrap();
    let svc = ServiceGuard(liveness_id(&base, &sess).await);
    let r = http()
        .put(format!("{base}/v1/session/destroy/{}", sess.id()))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    tokio::time::timeout(TTL, sess.lost())
        .await
        .expect("holder told of the loss");
    assert!(
        agent_service(&base, &svc.0).await.is_none(),
        "liveness service {} of a lost session still registered",
        svc.0
    );
}

/// `service_names` (the start of the agent's orphan clean-up) leaves
/// sessions' liveness services out; another service under the same name
/// without the liveness meta is still listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_services_are_not_registry_entries() {
    let base = base_url().await;
    let store = store(Some(Duration::from_secs(1))).await;
    let sess = store.create_session(TTL).await.unwrap();
    let _svc = ServiceGuard(liveness_id(&base, &sess).await);
    let names = store.service_names().await.unwrap();
    assert!(!names.contains(LIVENESS_SERVICE), "{names:?}");
    // Nor instances, should an app be registered under the same name.
    let live = liveness_id(&base, &sess).await;
    let listed = store.instances(LIVENESS_SERVICE, false).await.unwrap();
    assert!(listed.iter().all(|i| i.id != live), "{listed:?}");

    let name = format!("t{}-not-liveness", std::process::id());
    let id = format!("{name}-1");
    let guard = ServiceGuard(id.clone());
    let body = json!({"ID": id, "Name": name, "Meta": {LIVENESS_META: "something-else"}});
    let r = http()
        .put(format!("{base}/v1/agent/service/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let names = store.service_names().await.unwrap();
    assert!(names.contains(&name), "{names:?}");
    drop(guard);
    sess.close().await.unwrap();
}
