//! Consul-only registry behaviour, against the real Consul 1.8.7 of the
//! harness: deregistering an instance that another node holds in the
//! catalog (a dead host's entry, which its own Consul agent will never
//! reap), and that an instance of the local agent still goes through the
//! agent API.

mod consul_common;

use consul_common::{base_url, get_json, http, store};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cntnr_e2e::shared_consul;
use cntnr_kv::consul::Deregistered;
use cntnr_kv::{DynStore, Health, Registration};
use serde_json::{json, Value};

fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        fastrand::u32(..),
        name
    )
}

/// `(node, service id)` of every catalog entry of `name`.
async fn catalog(base: &str, name: &str) -> Vec<(String, String)> {
    let v = get_json(&format!("{base}/v1/catalog/service/{name}")).await;
    let mut out: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["Node"].as_str().unwrap().to_string(),
                e["ServiceID"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Instance ids the local agent holds (`/v1/agent/services`).
async fn agent_service_ids(base: &str) -> Vec<String> {
    let v = get_json(&format!("{base}/v1/agent/services")).await;
    v.as_object().unwrap().keys().cloned().collect()
}

/// A fake catalog node, as a host whose Consul agent died leaves behind.
/// Removed (with everything on it) on drop, even when the test fails.
struct GhostNode {
    base: String,
    node: String,
}

impl GhostNode {
    fn new(base: &str) -> GhostNode {
        GhostNode {
            base: base.to_string(),
            node: format!("ghost-{}", unique("node")),
        }
    }

    /// Registers a cntnr-style instance (id `<node>/<container>`, meta
    /// naming the node) with a critical check, directly in the catalog.
    async fn register(&self, name: &str, id: &str) {
        let body = json!({
            "Node": self.node,
            "Address": "127.0.0.2",
            "Service": {
                "ID": id,
                "Service": name,
                "Address": "127.0.0.2",
                "Port": 8080,
                "Meta": {"node": self.node, "project": "shop", "service": "web"},
            },
            "Check": {
                "Node": self.node,
                "CheckID": format!("service:{id}"),
                "Name": format!("cntnr TTL check of {id}"),
                "Status": "critical",
                "ServiceID": id,
            },
        });
        let r = http()
            .put(format!("{}/v1/catalog/register", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "catalog register: {}",
            r.text().await.unwrap_or_default()
        );
    }
}

impl Drop for GhostNode {
    fn drop(&mut self) {
        let (base, node) = (self.base.clone(), self.node.clone());
        // Drop cannot await: a thread with its own runtime does the request.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = http()
                    .put(format!("{base}/v1/catalog/deregister"))
                    .json(&json!({ "Node": node }))
                    .send()
                    .await;
            });
        })
        .join();
    }
}

fn local_registration(name: &str, id: &str) -> Registration {
    Registration {
        name: name.into(),
        id: id.into(),
        address: "127.0.0.1".into(),
        port: 8081,
        tags: vec![],
        meta: BTreeMap::from([("node".to_string(), "node1".to_string())]),
        check_ttl: Duration::from_secs(30),
        deregister_after: Duration::from_secs(120),
    }
}

/// The local node name is the agent's `Config.NodeName`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_node_is_the_agents_node_name() {
    let s = store(None).await;
    let want = tokio::task::spawn_blocking(|| shared_consul().node_name().to_string())
        .await
        .unwrap();
    assert_eq!(s.local_node().await.unwrap(), want);
    assert_eq!(s.local_node().await.unwrap(), want, "cached");
}

/// An instance on another node of the catalog (registered with
/// `/v1/catalog/register`, as a host whose Consul agent is dead leaves it)
/// is removed by `Store::deregister` through the catalog; an instance of
/// the local agent under the same name is left alone, and is itself removed
/// through the agent API (gone from the agent's own services).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_removes_another_nodes_catalog_entry_and_local_ones_via_the_agent() {
    let base = base_url().await;
    let s = store(None).await;
    let dyn_store: DynStore = Arc::new(s.clone());
    let ghost = GhostNode::new(&base);
    let name = unique("web");
    let ghost_id = format!("{}/0123456789ab", ghost.node);
    let local_id = "node1/fedcba987654".to_string();
    let local_node = s.local_node().await.unwrap().to_string();

    ghost.register(&name, &ghost_id).await;
    let sess = dyn_store
        .create_session(Duration::from_secs(10))
        .await
        .unwrap();
    dyn_store
        .register(&sess, &local_registration(&name, &local_id))
        .await
        .unwrap();
    let mut both = vec![
        (ghost.node.clone(), ghost_id.clone()),
        (local_node.clone(), local_id.clone()),
    ];
    both.sort();
    assert_eq!(catalog(&base, &name).await, both);
    // The audit finds it through `instances` (the whole catalog).
    let listed = dyn_store.instances(&name, false).await.unwrap();
    let ghost_entry = listed.iter().find(|i| i.id == ghost_id).expect("listed");
    assert_eq!(
        (ghost_entry.address.as_str(), ghost_entry.health),
        ("127.0.0.2", Health::Critical)
    );
    assert_eq!(
        ghost_entry.meta.get("node").map(String::as_str),
        Some(ghost.node.as_str())
    );

    // The ghost's entry goes, through the catalog, as the audit asks it.
    dyn_store.deregister(&name, &ghost_id).await.unwrap();
    assert_eq!(
        catalog(&base, &name).await,
        vec![(local_node.clone(), local_id.clone())]
    );
    let ids: Vec<String> = dyn_store
        .instances(&name, false)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec![local_id.clone()]);
    assert!(agent_service_ids(&base).await.contains(&local_id));
    // Again: nothing left to remove, and it says so.
    assert_eq!(
        s.deregister_instance(&name, &ghost_id).await.unwrap(),
        Deregistered::default()
    );
    dyn_store.deregister(&name, &ghost_id).await.unwrap(); // idempotent

    // The local instance goes through the agent: gone from the agent's own
    // services (a catalog-only removal would leave it there, and the agent
    // would sync it back).
    assert_eq!(
        s.deregister_instance(&name, &local_id).await.unwrap(),
        Deregistered {
            local: true,
            catalog_nodes: vec![],
        }
    );
    assert!(!agent_service_ids(&base).await.contains(&local_id));
    assert!(catalog(&base, &name).await.is_empty());
    // A 404 from the agent is not a removal.
    let again = s.deregister_instance(&name, &local_id).await.unwrap();
    assert!(!again.removed(), "{again:?}");
    dyn_store.deregister(&name, &local_id).await.unwrap(); // idempotent
    sess.close().await.unwrap();
}

/// `deregister_instance` reports the catalog removal of a ghost's entry by
/// node, and the ghost node itself stays (only the instance is removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_instance_reports_the_catalog_node_it_removed_from() {
    let base = base_url().await;
    let s = store(None).await;
    let ghost = GhostNode::new(&base);
    let name = unique("api");
    let id = format!("{}/abcdef012345", ghost.node);
    ghost.register(&name, &id).await;
    assert_eq!(
        s.deregister_instance(&name, &id).await.unwrap(),
        Deregistered {
            local: false,
            catalog_nodes: vec![ghost.node.clone()],
        }
    );
    assert!(catalog(&base, &name).await.is_empty());
    let node = get_json(&format!("{base}/v1/catalog/node/{}", ghost.node)).await;
    assert_eq!(node["Node"]["Node"], ghost.node.as_str());
    assert!(
        node["Services"].as_object().is_none_or(|m| m.is_empty()),
        "{node}"
    );

    // The explicit clean-up (the guard does it again on drop, harmlessly).
    let r = http()
        .put(format!("{base}/v1/catalog/deregister"))
        .json(&json!({ "Node": ghost.node }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = http()
        .get(format!("{base}/v1/catalog/node/{}", ghost.node))
        .send()
        .await
        .unwrap();
    let gone: Value = r.json().await.unwrap();
    assert!(gone.is_null(), "{gone}");
}
