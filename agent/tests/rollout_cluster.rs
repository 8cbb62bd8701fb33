//! Rolling updates across a cluster (issue 9), judged by what Consul says:
//! three real agents on one machine (each its own node name, state dir,
//! runc root and HTTP port) against real Consul, four replicas of one
//! registered service with a health check and `parallelism: 1`.
//!
//! - a good update: at every moment at least 3 replicas are passing in
//!   Consul, and all 4 end passing on the new config hash;
//! - an update whose health check fails, with `failure_action: rollback`:
//!   the service returns to the old hash, at least 3 replicas passing
//!   throughout, and no replica that was never advanced is restarted.
//!
//! "At every moment" is sampled by a thread following
//! `/v1/health/service/<name>?passing` with blocking queries for the whole
//! update: Consul answers each change of the service's health index, so
//! the only states not seen are ones that lasted less than one request's
//! round trip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cntnr_e2e::shared_consul;
use common::{deploy, status_record, text, Agent, Kind, TestStore};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);
const REPLICAS: usize = 4;

/// GET on Consul's HTTP API: (X-Consul-Index, body), `None` on any error.
fn consul_get(path: &str, timeout: Duration) -> Option<(u64, String)> {
    let mut s = TcpStream::connect(shared_consul().http_addr()).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1)? != "200" {
        return None;
    }
    let index = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-consul-index")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    Some((index, body.to_string()))
}

/// The passing instances of a `/v1/health/service/<name>?passing` answer:
/// instance id → the `config_hash` in its meta (the key registration
/// writes, `registration::meta::CONFIG_HASH`).
fn passing_of(body: &str) -> BTreeMap<String, String> {
    let v: Value = serde_json::from_str(body).expect("health JSON");
    v.as_array()
        .expect("health answer is an array")
        .iter()
        .map(|e| {
            let svc = &e["Service"];
            (
                svc["ID"].as_str().unwrap().to_string(),
                svc["Meta"]["config_hash"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// What Consul says now: the passing instances of `name`.
fn passing(name: &str) -> BTreeMap<String, String> {
    consul_get(
        &format!("/v1/health/service/{name}?passing"),
        Duration::from_secs(10),
    )
    .map(|(_, b)| passing_of(&b))
    .unwrap_or_default()
}

/// Follows `/v1/health/service/<name>?passing` with blocking queries on a
/// thread, from its start until [`Sampler::finish`], keeping every answer.
struct Sampler {
    seen: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(name: &str) -> Sampler {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2, name) = (seen.clone(), stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            let mut index = 0;
            while !stop2.load(Ordering::SeqCst) {
                let path = format!("/v1/health/service/{name}?passing&index={index}&wait=1s");
                match consul_get(&path, Duration::from_secs(10)) {
                    Some((i, body)) => {
                        // Consul's documented rule: an index that goes
                        // backwards (or 0) restarts from 0.
                        index = if i < index { 0 } else { i };
                        seen2.lock().unwrap().push(passing_of(&body));
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        // The first answer (index 0) comes at once: the state at the start.
        let s = Sampler {
            seen,
            stop,
            thread: Some(thread),
        };
        common::wait_for(WAIT, "the sampler's first answer", || {
            (!s.seen.lock().unwrap().is_empty()).then_some(())
        });
        s
    }

    /// Stops following; every answer seen, in order.
    fn finish(mut self) -> Vec<BTreeMap<String, String>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The fewest passing instances among `samples`, and the answer showing it.
fn fewest(samples: &[BTreeMap<String, String>]) -> (usize, BTreeMap<String, String>) {
    samples
        .iter()
        .min_by_key(|s| s.len())
        .map(|s| (s.len(), s.clone()))
        .expect("at least one sample")
}

/// Four replicas of `web`, registered as `name` (host network, so the
/// registry has an address for them), a compose health check on a file
/// the command creates (`healthy: false` never creates it), `version` in
/// the environment (so the config hash), rolled one at a time.
fn web(name: &str, version: u32, healthy: bool) -> String {
    let image = common::test_image_ref();
    let cmd = if healthy {
        "touch /tmp/ok; exec sleep 3600"
    } else {
        "exec sleep 3600"
    };
    format!(
        "services:\n  web:\n    image: {image}\n    network_mode: host\n    stop_grace_period: 1s\n    command: [sh, -c, '{cmd}']\n    environment: {{V: '{version}'}}\n    annotations: {{cntnr.service.name: {name}}}\n    healthcheck: {{test: [CMD-SHELL, 'test -f /tmp/ok'], interval: 1s, timeout: 2s, retries: 1}}\n    deploy: {{replicas: {REPLICAS}, update_config: {{parallelism: 1, monitor: 2s, failure_action: rollback}}}}\n"
    )
}

fn schedule(s: &TestStore, project: &str) -> Value {
    s.raw_get(&s.key(&format!("schedule/{project}")))
        .map(|t| serde_json::from_str(&t).expect("schedule record is JSON"))
        .unwrap_or(Value::Null)
}

/// The config hash of every replica the nodes' status records list.
fn status_hashes(s: &TestStore, agents: &[Agent], project: &str) -> BTreeMap<u64, String> {
    agents
        .iter()
        .filter_map(|a| status_record(s, project, &a.node))
        .flat_map(|st| {
            st["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        })
        .map(|c| {
            (
                c["replica"].as_u64().unwrap(),
                c["config_hash"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until the leader recorded the project fully healthy (the
/// schedule has a `healthy_spec` and no rollout in progress, or only a
/// finished one with `phase`), all four replicas pass in Consul on one
/// hash, and the status records agree; returns that hash.
fn settled(
    s: &TestStore,
    agents: &[Agent],
    project: &str,
    name: &str,
    phase: Option<&str>,
) -> String {
    common::wait_for(WAIT, "four replicas passing on one hash, recorded", || {
        let sched = schedule(s, project);
        let rollout_done = match phase {
            None => sched.get("rollouts").is_none(),
            Some(p) => sched["rollouts"]["web"]["phase"] == p,
        };
        if !sched["healthy_spec"].is_string() || !rollout_done {
            return None;
        }
        let now = passing(name);
        let hashes: BTreeSet<&String> = now.values().collect();
        if now.len() != REPLICAS || hashes.len() != 1 {
            return None;
        }
        let h = hashes.into_iter().next().unwrap().clone();
        let st = status_hashes(s, agents, project);
        (st.len() == REPLICAS && st.values().all(|x| *x == h)).then_some(h)
    })
}

/// Running replicas everywhere: container id → (node, init pid).
fn pids(agents: &[Agent]) -> BTreeMap<String, (String, u64)> {
    common::wait_for(WAIT, "four containers listed", || {
        let m: BTreeMap<String, (String, u64)> = agents
            .iter()
            .flat_map(|a| {
                common::running(a)
                    .into_iter()
                    .map(|(id, pid)| (id, (a.node.clone(), pid)))
            })
            .collect();
        (m.len() == REPLICAS).then_some(m)
    })
}

/// Asserts the sampled answers never showed fewer than 3 passing, and
/// only the two hashes of the update.
fn assert_three_passing_throughout(
    what: &str,
    samples: &[BTreeMap<String, String>],
    hashes: [&str; 2],
) {
    let (min, at) = fewest(samples);
    assert!(
        min >= REPLICAS - 1,
        "{what}: at least {} replicas passing in Consul at every moment; saw {min} in answer \
         {at:?} (of {} answers)",
        REPLICAS - 1,
        samples.len()
    );
    // The instrument works: each update takes a replica out of passing
    // (stop-first), and the sampler saw it.
    assert!(
        samples.iter().any(|s| s.len() < REPLICAS),
        "{what}: the sampler never saw a replica out of passing ({} answers)",
        samples.len()
    );
    eprintln!(
        "{what}: {} answers from Consul, fewest passing {min}",
        samples.len()
    );
    let seen: BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.values().map(String::as_str))
        .collect();
    for h in &seen {
        assert!(hashes.contains(h), "{what}: unexpected hash {h} passing");
    }
}

#[test]
fn rolling_update_keeps_three_of_four_passing_in_consul_and_rolls_back_a_failing_version() {
    let s = TestStore::new(Kind::Consul, "rc");
    // Consul service ids are `<node>/<container>` per Consul agent, and
    // every test shares one: node and service names unique to this test.
    let base = s.prefix.replace('-', "");
    let name = format!("web{base}");
    let agents: Vec<Agent> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            s.agent_with(
                &format!("{base}{n}"),
                &[
                    "--allow-host-network",
                    "--address",
                    "127.0.0.1",
                    "--session-ttl",
                    "10s",
                ],
                &[],
            )
        })
        .collect();
    common::wait_for(WAIT, "three nodes and a leader", || {
        let v = s.cntnr_json(&["nodes"]);
        (v["nodes"].as_array().map(Vec::len) == Some(3) && v["leader"].is_string()).then_some(())
    });
    let p = "roll";
    deploy(&s, p, &web(&name, 1, true));
    let h1 = settled(&s, &agents, p, &name, None);
    // Spread over the three nodes (so the update really crosses them).
    let nodes: BTreeSet<String> = pids(&agents).into_values().map(|(n, _)| n).collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");

    // 1. A good update, one replica at a time.
    let sampler = Sampler::start(&name);
    deploy(&s, p, &web(&name, 2, true));
    let mut seen_rollout = false;
    let h2 = common::wait_for(WAIT, "all four passing on the new hash", || {
        seen_rollout |= schedule(&s, p)["rollouts"]["web"].is_object();
        let now = passing(&name);
        (now.len() == REPLICAS && now.values().all(|h| *h != h1))
            .then(|| now.values().next().unwrap().clone())
    });
    let done = settled(&s, &agents, p, &name, None);
    let samples = sampler.finish();
    assert_eq!(done, h2);
    assert_ne!(h2, h1);
    assert!(seen_rollout, "the schedule carried the rollout");
    assert_three_passing_throughout("good update", &samples, [&h1, &h2]);
    let last = samples.last().unwrap();
    assert_eq!(last.len(), REPLICAS, "{last:?}");
    assert!(last.values().all(|h| *h == h2), "{last:?}");

    // 2. A version whose health check fails, failure_action rollback: back
    //    to h2, never fewer than 3 passing; replicas never advanced keep
    //    their container (same init pid).
    let before = pids(&agents);
    let sampler = Sampler::start(&name);
    deploy(&s, p, &web(&name, 3, false));
    let mut h3 = None;
    common::wait_for(WAIT, "the rollout rolled back", || {
        let sched = schedule(&s, p);
        if h3.is_none() {
            h3 = sched["rollouts"]["web"]["to"].as_str().map(str::to_string);
        }
        (sched["rollouts"]["web"]["phase"] == "rolled-back").then_some(())
    });
    let back = settled(&s, &agents, p, &name, Some("rolled-back"));
    let samples = sampler.finish();
    assert_eq!(back, h2, "the service returned to the old version");
    let h3 = h3.expect("the schedule named the new hash while rolling");
    assert_ne!(h3, h2);
    // The failing version never passed, so only h2 was ever passing.
    assert_three_passing_throughout("failing update", &samples, [&h2, &h2]);
    let last = samples.last().unwrap();
    assert_eq!(last.len(), REPLICAS, "{last:?}");
    assert!(last.values().all(|h| *h == h2), "{last:?}");
    let after = pids(&agents);
    let restarted: Vec<&String> = before
        .iter()
        .filter(|(id, v)| after.get(*id) != Some(v))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        restarted.len(),
        1,
        "only the replica that was advanced is replaced: {before:?} → {after:?}"
    );

    let out = s.cntnr(s.tmp.path(), &["rm", p]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    common::wait_for(WAIT, "containers removed and entries gone", || {
        let none_left = agents.iter().all(|a| a.runc_list().is_empty());
        let entries = consul_get(
            &format!("/v1/health/service/{name}"),
            Duration::from_secs(10),
        )
        .map(|(_, b)| passing_of(&b).len());
        (none_left && entries == Some(0)).then_some(())
    });
}
